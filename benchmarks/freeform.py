"""Free-form answers: generation, confidence methods and their calibration, on TriviaQA and wikidata.

The aligned model (SmolLM2-135M-Instruct) answers greedily (3-shot ``qa`` prompt, at most 12
new tokens, stop at a newline); answers are judged by the ``contains`` matcher (accuracy under
every matcher is reported too). Confidence methods: P(True) judged by the aligned model itself
and by the reference (Gemma-3-270M base), sequence likelihood (mean / total), verbalised
confidence, and sample consistency (N samples at T = 1, exact match with the greedy answer;
on a stated subset). Each is evaluated on five seeded 30/70 calibration / test splits (seeds
1-5), before and after temperature scaling, Platt scaling and isotonic regression (labels),
and for P(True) DACA / naive / disagree-only alignment to the reference's P(True) (no labels).
Generation throughput is measured against plain ``model.generate`` on the same prompts.

Generations and scores are cached in benchmarks/cache/ (resumable checkpoints), so a rerun
only computes what is missing. Run with OMP_NUM_THREADS=1 on a shared machine.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from common import CACHE, DATA_DIR, md_table, write_results
from llmcal.answers import Answers
from llmcal.calibrate import DACA, IsotonicCalibration, PlattScaling, TemperatureScaling
from llmcal.confidence import consistency, ptrue, seqlik, verbal
from llmcal.errors import LLMCalError
from llmcal.judge import judge_answers, match_all
from llmcal.metrics import aurc, auroc, ece
from llmcal.models.checkpoint import CheckpointedScorer
from llmcal.models.generate import GenerationConfig, HFGenerator, generate_answers
from llmcal.scores import Scores
from llmcal.tasks import load_open_task

ALIGNED = "smollm2-135m-instruct"
REFERENCE = "gemma3-270m"
LABEL_MATCHER = "contains"
SAMPLE_MATCHER = "exact"
SHOTS = 3
MAX_NEW = 12
SEEDS = (1, 2, 3, 4, 5)

_models: dict[str, HFGenerator] = {}


def model(name: str, batch_size: int = 16) -> HFGenerator:
    """One loaded model per name for the whole run."""
    if name not in _models:
        _models[name] = HFGenerator.load(name, batch_size=batch_size, progress=True)
    return _models[name]


def task_and_shots(task: str, n: int) -> tuple[Any, Any]:
    """3 seeded few-shot examples and a seeded n-question subset of the rest."""
    full = load_open_task(task, data_dir=DATA_DIR)
    shots, rest = full.shots_split(SHOTS, seed=0)
    return shots, rest.subset(n, seed=0)


def cached_answers(task: str, n: int, samples: int = 0) -> Answers:
    """The aligned model's answers (with ``samples`` sampled ones), judged; cached."""
    tag = f"freeform-{task}-{n}-{ALIGNED}" + (f"-samples{samples}" if samples else "")
    path = CACHE / f"{tag}.answers.parquet"
    if path.is_file():
        return Answers.load(path)
    shots, t = task_and_shots(task, n)
    config = GenerationConfig(max_new_tokens=MAX_NEW, samples=samples, seed=0)
    start = time.perf_counter()
    answers, counts = generate_answers(
        model(ALIGNED), t, config, shots=shots, out=path, chunk_size=32, progress=True
    )
    seconds = time.perf_counter() - start
    answers = judge_answers(answers, LABEL_MATCHER)
    answers = answers.replace(
        meta={"seconds": seconds if not counts["resumed"] else None, "counts": counts}
    )
    answers.save(path)
    path.with_name(path.name + ".ckpt.jsonl").unlink(missing_ok=True)
    return answers


def cached_ptrue(task: str, n: int, judge: str, answers: Answers) -> Scores:
    """P(True) of the aligned model's answers as judged by ``judge``; cached."""
    path = CACHE / f"freeform-{task}-{n}-{ALIGNED}.ptrue-{judge}.parquet"
    if path.is_file():
        return Scores.load(path)
    runner = CheckpointedScorer(model(judge).scorer, path, chunk_size=64, progress=True)
    start = time.perf_counter()
    scores = ptrue(runner, answers)
    seconds = time.perf_counter() - start
    scores = scores.replace(meta={"seconds": seconds if not runner.resumed_rows else None})
    scores.save(path)
    runner.discard()
    return scores


def cached_verbal(task: str, n: int, answers: Answers) -> Scores:
    """Verbalised confidence of the aligned model on its own answers; cached."""
    path = CACHE / f"freeform-{task}-{n}-{ALIGNED}.verbal-{len(answers)}.parquet"
    if path.is_file():
        return Scores.load(path)
    start = time.perf_counter()
    scores = verbal(model(ALIGNED), answers)
    scores = scores.replace(meta={"seconds": time.perf_counter() - start})
    scores.save(path)
    return scores


def throughput(task: str, n_prompts: int) -> dict[str, Any]:
    """llmcal generation vs plain batched ``model.generate`` on the same prompts (greedy)."""
    import torch

    gen = model(ALIGNED)
    scorer = gen.scorer
    tok = scorer.tokenizer
    shots, t = task_and_shots(task, n_prompts)
    prompts = [gen.render(q, "qa", shots) for q in t]
    config = GenerationConfig(max_new_tokens=MAX_NEW)
    out: dict[str, Any] = {"task": task, "n": len(prompts), "max_new_tokens": MAX_NEW}
    encoded = [scorer.encode(p, False) for p in prompts]
    start = time.perf_counter()
    mine = gen.generate_ids(encoded, config, [None] * len(encoded), 0.0)
    sec = time.perf_counter() - start
    n_tok = sum(len(g.token_ids) for g in mine)
    out["llmcal"] = {"seconds": sec, "answers_per_s": len(mine) / sec, "tokens_per_s": n_tok / sec,
                     "tokens": n_tok, "batch_size": scorer.batch_size}  # fmt: skip
    # plain model.generate: left-padded batches of the same size, same stops (EOS, "\n")
    eos = gen.eos_ids()
    start = time.perf_counter()
    n_tok = 0
    bs = scorer.batch_size
    for i in range(0, len(prompts), bs):
        batch = tok(prompts[i : i + bs], return_tensors="pt", padding=True)
        with torch.inference_mode():
            ids = scorer.model.generate(
                **batch,
                do_sample=False,
                max_new_tokens=MAX_NEW,
                stop_strings=["\n"],
                tokenizer=tok,
                pad_token_id=tok.pad_token_id,
            )
        for row in ids[:, batch["input_ids"].shape[1] :].tolist():
            k = 0
            for k, tid in enumerate(row, 1):
                if tid in eos or "\n" in tok.decode(row[:k]).lstrip():
                    break
            n_tok += k
    sec = time.perf_counter() - start
    out["model_generate"] = {"seconds": sec, "answers_per_s": len(prompts) / sec,
                             "tokens_per_s": n_tok / sec, "tokens": n_tok}  # fmt: skip
    return out


# -- evaluation -------------------------------------------------------------------------------
def split(ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Seeded 30 / 70 calibration / test split."""
    order = np.random.default_rng(seed).permutation(len(ids))
    n_cal = round(0.3 * len(ids))
    return [ids[i] for i in sorted(order[:n_cal])], [ids[i] for i in sorted(order[n_cal:])]


def metrics(s: Scores) -> dict[str, float]:
    """Answer-view metrics of p(True) against correctness."""
    conf = s.probs()[:, 1]
    y = (s.labels == 1).astype(np.float64)
    return {
        "acc": float(y.mean()),
        "conf": float(conf.mean()),
        "ece10": 100 * ece(conf, y, n_bins=10),
        "ece15": 100 * ece(conf, y, n_bins=15),
        "brier": float(np.mean((conf - y) ** 2)),
        "auroc": auroc(conf, y),
        "aurc": aurc(conf, y),
    }


def evaluate_method(s: Scores, reference: Scores | None) -> dict[str, Any]:
    """Mean ± std over the seeded splits of vanilla and every calibrator."""
    ids = [str(i) for i in s.ids.tolist()]
    rows: dict[str, list[dict[str, float]]] = {}
    taus: dict[str, list[float]] = {}
    notes: list[str] = []
    for seed in SEEDS:
        cal_ids, test_ids = split(ids, seed)
        cal, test = s.by_ids(cal_ids), s.by_ids(test_ids)
        runs: dict[str, Scores] = {"vanilla": test}
        fits: dict[str, Any] = {
            "TS": TemperatureScaling(),
            "Platt": PlattScaling(),
            "isotonic": IsotonicCalibration(),
        }
        for name, cal_obj in fits.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    runs[name] = cal_obj.fit(cal).transform(test)
                if name == "TS":
                    taus.setdefault(name, []).append(cal_obj.temperature)
            except LLMCalError as exc:
                notes.append(f"seed {seed} {name}: {exc}")
        if reference is not None:
            unlabelled = cal.replace(labels=np.full(len(cal), -1))
            ref_cal = reference.by_ids(cal_ids)
            for name, mask in (("DACA", "agree"), ("naive", "none"), ("disagree", "disagree")):
                try:
                    d = DACA(mask=mask).fit(target=unlabelled, reference=ref_cal)
                    runs[name] = d.transform(test)
                    taus.setdefault(name, []).append(d.temperature)
                except LLMCalError as exc:
                    notes.append(f"seed {seed} {name}: {exc}")
            runs["reference"] = reference.by_ids(test_ids)
        for name, r in runs.items():
            rows.setdefault(name, []).append(metrics(r))
    summary = {
        name: {k: [float(np.mean([m[k] for m in ms])), float(np.std([m[k] for m in ms]))]
               for k in ms[0]} | {"n_splits": len(ms)}
        for name, ms in rows.items()
    }  # fmt: skip
    out: dict[str, Any] = {"n": len(s), "results": summary, "notes": notes[:10]}
    out["tau"] = {k: [float(np.mean(v)), float(np.std(v))] for k, v in taus.items()}
    if reference is not None:
        agree = np.argmax(s.logits, 1) == np.argmax(reference.by_ids(ids).logits, 1)
        out["agreement"] = float(agree.mean())
    return out


def _pm(v: list[float], digits: int = 2) -> str:
    return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"


def render(payload: dict[str, Any]) -> str:
    """The Markdown report."""
    lines = [
        "# Free-form answers: confidence methods and their calibration",
        "",
        payload["setup"],
        "",
        "## Accuracy of the aligned model's greedy answers, by matcher",
        "",
        md_table(
            ["task", "n", *next(iter(payload["tasks"].values()))["accuracy"].keys()],
            [
                [t, v["n"], *(f"{100 * a:.1f} %" for a in v["accuracy"].values())]
                for t, v in payload["tasks"].items()
            ],
        ),
    ]
    for tname, tv in payload["tasks"].items():
        for mname, mv in tv["methods"].items():
            head = f"## {tname} · {mname} (n = {mv['n']}"
            if "agreement" in mv:
                head += f", aligned and reference agree on {100 * mv['agreement']:.0f} %"
            lines += ["", head + ")", ""]
            rows = [
                [
                    name,
                    _pm([100 * r["acc"][0], 100 * r["acc"][1]], 1),
                    _pm([100 * r["conf"][0], 100 * r["conf"][1]], 1),
                    _pm(r["ece10"]),
                    _pm(r["ece15"]),
                    _pm(r["brier"], 3),
                    _pm(r["auroc"], 3),
                    _pm(r["aurc"], 3),
                ]
                for name, r in mv["results"].items()
            ]
            lines.append(md_table(
                ["method", "acc %", "conf %", "ECE10 %", "ECE15 %", "Brier", "AUROC", "AURC"],
                rows))  # fmt: skip
            if mv.get("tau"):
                lines += [
                    "",
                    "Fitted τ: " + ", ".join(f"{k} {_pm(v, 3)}" for k, v in mv["tau"].items()),
                ]
            if mv.get("extra"):
                lines += ["", mv["extra"]]
            if mv.get("notes"):
                lines += ["", "Notes: " + "; ".join(mv["notes"][:3])]
    if payload.get("throughput"):
        tp = payload["throughput"]
        lines += [
            "",
            f"## Generation throughput ({tp['task']}, {tp['n']} prompts, greedy, batch "
            f"{tp['llmcal']['batch_size']}, ≤ {tp['max_new_tokens']} new tokens, same stops)",
            "",
            md_table(
                ["generator", "seconds", "answers/s", "generated tokens/s"],
                [
                    [
                        k,
                        f"{v['seconds']:.1f}",
                        f"{v['answers_per_s']:.2f}",
                        f"{v['tokens_per_s']:.1f}",
                    ]
                    for k, v in (
                        ("llmcal HFGenerator", tp["llmcal"]),
                        ("plain model.generate", tp["model_generate"]),
                    )
                ],
            ),
        ]
    if payload.get("timing"):
        lines += ["", "## Time per answer of each step", "",
                  md_table(["step", "task", "answers", "ms / answer"],
                           [[k, t, n, f"{1000 * s:.0f}"] for (k, t, n, s) in payload["timing"]])]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    """Run (or resume) the benchmark and write benchmarks/results/freeform.{json,md}."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", nargs="+", default=["triviaqa", "wikidata"])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--verbal-n", type=int, default=1000)
    ap.add_argument("--consistency-n", type=int, default=200)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--throughput-n", type=int, default=64)
    ap.add_argument("--stages", nargs="+",
                    default=["generate", "ptrue", "verbal", "consistency", "throughput"])  # fmt: skip
    ap.add_argument("--name", default="freeform")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"tasks": {}, "timing": []}
    payload["setup"] = (
        f"Aligned model {ALIGNED} answers greedily ({SHOTS}-shot `qa` prompt, ≤ {MAX_NEW} new "
        f"tokens, stop at a newline after text); correctness = `{LABEL_MATCHER}` matcher "
        f"(SQuAD-normalised reference as whole words in the answer). Seeded subsets of "
        f"{args.n} questions per task. Confidence: P(True) judged by the aligned model and by "
        f"the reference {REFERENCE} (the same fixed 2-option prompt), seqlik = exp(mean token "
        f"log-prob), seqlik-total = exp(total), verbal (first {args.verbal_n} questions), "
        f"consistency = share of {args.samples} samples at T = 1 equal (`{SAMPLE_MATCHER}`) to "
        f"the greedy answer (first {args.consistency_n} questions only: sampling is slow on "
        "this 2-core machine). Five seeded 30 % / 70 % calibration / test splits (seeds 1-5), "
        "mean ± std; ECE in % (equal-width bins) of p(True) against correctness, Brier = "
        "binary (p − y)², AUROC / AURC of p(True) as a score for correctness. TS / Platt / "
        "isotonic use the calibration labels; DACA / naive / disagree (P(True) only) fit τ "
        "of the aligned model's P(True) logits to the reference's P(True) without labels. "
        "`reference` = the reference's own P(True) on the same test answers."
    )
    # stage-major order, so that an interrupted run has the most important parts of every task
    answers_of = {t: cached_answers(t, args.n) for t in args.tasks}
    if "ptrue" in args.stages:
        for t in args.tasks:
            for who in (ALIGNED, REFERENCE):
                cached_ptrue(t, args.n, who, answers_of[t])
    if "verbal" in args.stages:
        for t in args.tasks:
            sub = answers_of[t].select(range(min(args.verbal_n, args.n)))
            cached_verbal(t, args.n, sub)
    if "consistency" in args.stages:
        for t in args.tasks:
            cached_answers(t, args.consistency_n, samples=args.samples)
    for tname in args.tasks:
        answers = answers_of[tname]
        if answers.meta.get("seconds"):
            payload["timing"].append(("generate (greedy)", tname, len(answers),
                                      answers.meta["seconds"] / len(answers)))  # fmt: skip
        tv: dict[str, Any] = {"n": len(answers), "accuracy": match_all(answers), "methods": {}}
        payload["tasks"][tname] = tv
        methods: dict[str, tuple[Scores, Scores | None]] = {}
        start = time.perf_counter()
        methods["seqlik"] = (seqlik(answers, "mean"), None)
        methods["seqlik-total"] = (seqlik(answers, "total"), None)
        payload["timing"].append(("seqlik (both)", tname, len(answers),
                                  (time.perf_counter() - start) / len(answers)))  # fmt: skip
        if "ptrue" in args.stages:
            own = cached_ptrue(tname, args.n, ALIGNED, answers)
            ref = cached_ptrue(tname, args.n, REFERENCE, answers)
            for who, s in ((ALIGNED, own), (REFERENCE, ref)):
                if s.meta.get("seconds"):
                    payload["timing"].append((f"P(True) by {who}", tname, len(s),
                                              s.meta["seconds"] / len(s)))  # fmt: skip
            methods["P(True)"] = (own, ref)
            methods[f"P(True) by {REFERENCE}"] = (ref, None)
        if "verbal" in args.stages:
            sub = answers.select(range(min(args.verbal_n, len(answers))))
            vs = cached_verbal(tname, args.n, sub)
            payload["timing"].append(("verbal", tname, len(vs), vs.meta["seconds"] / len(vs)))
            methods["verbal"] = (vs, None)
        if "consistency" in args.stages:
            sampled = cached_answers(tname, args.consistency_n, samples=args.samples)
            if sampled.meta.get("seconds"):
                payload["timing"].append((f"generate + {args.samples} samples", tname,
                                          len(sampled), sampled.meta["seconds"] / len(sampled)))  # fmt: skip
            greedy = answers.by_ids([i for i in sampled.ids if i in set(answers.ids)])
            same = [a == b for a, b in zip(sampled.by_ids(list(greedy.ids)).texts, greedy.texts,
                                           strict=True)]  # fmt: skip
            cs = consistency(sampled, SAMPLE_MATCHER)
            methods[f"consistency ({args.samples} samples)"] = (cs, None)
            tv["consistency_greedy_identical"] = float(np.mean(same)) if same else None
        for mname, (s, ref) in methods.items():
            mv = evaluate_method(s, ref)
            info = s.meta.get("confidence") or {}
            if "unparseable" in info:
                mv["extra"] = (
                    f"Unparseable verbal replies: {info['unparseable']} of {len(s)} "
                    f"(given confidence 0.5); e.g. {info.get('replies_sample', [])[:3]}"
                )
            tv["methods"][mname] = mv
        print(render(payload), flush=True)
    if "throughput" in args.stages:
        payload["throughput"] = throughput(args.tasks[0], args.throughput_n)
    payload["timing"] = [list(t) for t in payload["timing"]]
    write_results(args.name, payload, render(payload))


if __name__ == "__main__":
    Path(CACHE).mkdir(parents=True, exist_ok=True)
    main()
