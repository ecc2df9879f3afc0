"""Calibration-aware LoRA fine-tuning on the bundled models, CPU-sized.

Studies (see ../shared/methods/cogcalib.md and cft_rcft.md):

1. CogCalib on Gemma-3-270M (base): vanilla SFT, TS on vanilla, uniform LS / MbLS / ECP,
   CoLS / CoMbLS / CoECP; in-domain (ARC-Easy + OpenBookQA) and out-of-domain (MMLU subjects).
2. CFT / RCFT on SmolLM2-135M-Instruct (aligned): as-is, TS, CFT, RCFT, LS (full-vocabulary
   label smoothing on CFT's completion loss, cft_rcft.md §7.15).
3. The CogCalib finding: vanilla SFT of Gemma on equal-size all-unknown / half-known /
   all-known training sets (known = the base model answers correctly before training).
4. Step time of each method vs plain LoRA SFT on the same batch; RCFT's E-step vs one
   scoring pass of the training set.

Every run is cached as JSON under benchmarks/cache/finetune/, so a rerun skips finished runs
(run it in parts: ``python benchmarks/finetune.py [stage ...]``). The vanilla-SFT Gemma
adapter (seed 0) is kept at benchmarks/cache/adapters/gemma3-270m-letter-sft/.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import CACHE, DATA_DIR, md_table, write_results
from llmcal._io import atomic_write_text
from llmcal.finetune import FinetuneConfig
from llmcal.finetune.run import evaluation_metrics
from llmcal.tasks import load_task
from llmcal.tasks.types import Task

GEMMA = "gemma3-270m"
SMOL = "smollm2-135m-instruct"
RUNS = CACHE / "finetune"
ADAPTERS = CACHE / "adapters"
PUBLISHED_ADAPTER = ADAPTERS / "gemma3-270m-letter-sft"

#: Sizes, chosen from a measured step (Gemma-3-270M, batch 8, ~80 tokens: ~30 s on this
#: shared 2-core machine; a letter-scoring forward ~1-3 s per question).
SIZES: dict[str, Any] = {
    "train": 48,  # in-domain training questions (ARC-Easy + OpenBookQA)
    "cal": 24,  # held-out calibration split (CogCalib threshold, TS)
    "test": 40,  # in-domain test
    "ood": 32,  # MMLU out-of-domain test
    "max_chars": 200,  # question + choices, to keep sequences short (~45-75 tokens)
    "batch": 4,
    "steps": 12,  # = 1 epoch of the training split
    "lr": 5e-4,
    "lora_r": 8,
    "style_steps": 3,
    "refresh_every": 6,
    "mix_n": 24,  # size of each unknown:known mixture
    "mix_steps": 6,
    "pool": 72,  # candidates scored by the base model to build the mixtures
    "time_steps": 3,  # steps per method and round in the step-time measurement
    "time_rounds": 2,
}
SEEDS = (0, 1, 2)
if os.environ.get("FT_BENCH_SMOKE"):  # a quick end-to-end check with a tiny model
    GEMMA = SMOL = os.environ["FT_BENCH_SMOKE"]
    RUNS = CACHE / "finetune-smoke"
    PUBLISHED_ADAPTER = RUNS / "published"
    SIZES.update(train=8, cal=8, test=8, ood=8, steps=2, style_steps=1, refresh_every=1)
    SIZES.update(mix_n=4, mix_steps=1, pool=16, time_steps=2, time_rounds=2)
OOD_SUBJECTS = (
    "management",
    "marketing",
    "world_religions",
    "high_school_psychology",
    "prehistory",
)
METRICS = ("accuracy", "ece15", "ece10", "brier", "nll")


# -- data ---------------------------------------------------------------------------------------
def _short(task: Task) -> Task:
    keep = [q for q in task if len(q.choices) == 4]
    keep = [q for q in keep if len(q.question) + sum(map(len, q.choices)) <= SIZES["max_chars"]]
    return Task(task.name, keep)


def splits() -> dict[str, Task]:
    """Seeded disjoint splits (split seed 0 for every run; training seeds vary)."""
    arc = _short(load_task("arc_easy", data_dir=DATA_DIR))
    obqa = _short(load_task("openbook_qa", data_dir=DATA_DIR))
    pool = Task("arc_easy+openbook_qa", [*arc.shuffle(0)[:400], *obqa.shuffle(0)[:300]]).shuffle(0)
    s = SIZES
    cut = [s["train"], s["cal"], s["test"], s["pool"]]
    edges = [sum(cut[:i]) for i in range(len(cut) + 1)]
    names = ["train", "cal", "test", "pool"]
    out = {n: pool[edges[i] : edges[i + 1]] for i, n in enumerate(names)}
    mmlu = _short(load_task("mmlu", data_dir=DATA_DIR).filter(list(OOD_SUBJECTS)))
    out["ood"] = mmlu.subset(s["ood"], seed=0)
    return {k: Task(f"{k}", list(v)) for k, v in out.items()}


# -- scoring ------------------------------------------------------------------------------------
def _scorer(model: str, adapter: Path | None = None) -> Any:
    from llmcal.models import HFScorer

    return HFScorer(model, adapter=adapter, batch_size=8, progress=False)


def _score_sets(scorer: Any, sets: dict[str, Task]) -> tuple[dict[str, Any], dict[str, float]]:
    scores, secs = {}, {}
    for name, task in sets.items():
        start = time.perf_counter()
        scores[name] = scorer.score(task)
        secs[name] = time.perf_counter() - start
    return scores, secs


def _with_ts(scores: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Metrics of every set after a temperature fitted on the cal split."""
    from llmcal.calibrate import TemperatureScaling

    ts = TemperatureScaling().fit(scores["cal"])
    out = {k: evaluation_metrics(ts.transform(v)) for k, v in scores.items() if k != "cal"}
    out["_temperature"] = {"value": ts.temperature}
    return out


CACHED_ONLY = False  # report: use finished runs only, skip the rest


def _cached(name: str, fn: Any) -> Any:
    path = RUNS / f"{name}.json"
    if path.is_file():
        return dict(json.loads(path.read_text()))
    if CACHED_ONLY:
        return None
    RUNS.mkdir(parents=True, exist_ok=True)
    lock = RUNS / f"{name}.lock"
    try:  # another benchmark process is on this run: leave it to that one
        lock.touch(exist_ok=False)
    except FileExistsError:
        print(f"== {name}: running elsewhere ({lock}), skipped", flush=True)
        return None
    try:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        record = fn()
        record["wall_seconds"] = time.perf_counter() - start
        atomic_write_text(path, json.dumps(record, indent=1, default=float) + "\n")
    finally:
        lock.unlink()
    print(f"   done in {record['wall_seconds']:.0f}s", flush=True)
    return record


def baseline(model: str, sets: dict[str, Task], name: str) -> Any:
    """The untrained model, and TS fitted on its cal split."""

    def run() -> dict[str, Any]:
        scores, secs = _score_sets(_scorer(model), sets)
        return {
            "model": model,
            "metrics": {k: evaluation_metrics(v) for k, v in scores.items()},
            "ts": _with_ts(scores) if "cal" in scores else {},
            "score_seconds": secs,
            "correct": {k: v.correct().astype(int).tolist() for k, v in scores.items()},
            "ids": {k: list(map(str, v.ids)) for k, v in scores.items()},
        }

    return _cached(name, run)


def train_run(
    name: str,
    model: str,
    method: str,
    seed: int,
    train: Task,
    sets: dict[str, Task],
    cal: Task | None = None,
    ts: bool = False,
    ref_known: dict[str, bool] | None = None,
    keep_adapter: Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Fine-tune, score the adapter on ``sets`` (plus cal for TS), cache the record."""

    def run() -> dict[str, Any]:
        from llmcal.finetune import finetune

        targets = ["all-linear"] if method in ("cft", "rcft") else ["q_proj", "v_proj"]
        settings: dict[str, Any] = {
            "method": method,
            "seed": seed,
            "batch_size": SIZES["batch"],
            "max_steps": SIZES["steps"],
            "learning_rate": SIZES["lr"],
            "lora_r": SIZES["lora_r"],
            "lora_alpha": 2 * SIZES["lora_r"],
            "lora_targets": targets,
            "logging_steps": 2,
            "style_steps": SIZES["style_steps"],
            "refresh_every": SIZES["refresh_every"],
            **overrides,
        }
        cfg = FinetuneConfig(**settings)
        out = ADAPTERS / f"bench-{name}"
        res = finetune(model, train, cfg, out, cal=cal, progress=False, ref_known=ref_known)
        eval_sets = dict(sets)
        if ts and cal is not None:
            eval_sets["cal"] = cal
        scores, secs = _score_sets(_scorer(model, out), eval_sets)
        record: dict[str, Any] = {
            "model": model,
            "method": method,
            "seed": seed,
            "n_train": len(train),
            "config": cfg.to_dict(),
            "metrics": {k: evaluation_metrics(v) for k, v in scores.items() if k != "cal"},
            "steps": res.steps,
            "train_seconds": res.train_seconds,
            "step_seconds": res.step_seconds,
            "timings": res.timings,
            "diagnostics": res.diagnostics,
            "gate_history": res.gate_history,
            "e_step_history": res.e_step_history,
            "score_seconds": secs,
        }
        if ts and cal is not None:
            record["ts"] = _with_ts(scores)
        if keep_adapter is not None:
            if keep_adapter.exists():
                shutil.rmtree(keep_adapter)
            out.rename(keep_adapter)
            record["adapter"] = str(keep_adapter.relative_to(CACHE.parent.parent))
        else:
            shutil.rmtree(out, ignore_errors=True)
        return record

    return _cached(name, run)


# -- studies ------------------------------------------------------------------------------------
COGCALIB_METHODS = ("sft", "cogcalib-ls", "ls", "mbls", "ecp", "cogcalib-mbls", "cogcalib-ecp")
HEADLINE = {"cogcalib": ("sft", "cogcalib-ls"), "cft": ("cft",)}


def study_cogcalib(sp: dict[str, Task], seeds: tuple[int, ...]) -> dict[str, Any] | None:
    """Study 1 (CogCalib on Gemma): seed 0 of every method, more seeds for the pair."""
    evals = {"test": sp["test"], "ood": sp["ood"]}
    base = baseline(GEMMA, {**evals, "cal": sp["cal"], "train": sp["train"]}, "gemma-base")
    if base is None:
        return None
    known = dict(zip(base["ids"]["train"], map(bool, base["correct"]["train"]), strict=True))
    runs: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        for method in COGCALIB_METHODS:
            if seed and method not in HEADLINE["cogcalib"]:
                continue
            keep = PUBLISHED_ADAPTER if (method == "sft" and seed == 0) else None
            rec = train_run(
                f"gemma-{method}-s{seed}",
                GEMMA,
                method,
                seed,
                sp["train"],
                evals,
                cal=sp["cal"],
                ts=method == "sft",
                ref_known=known,
                keep_adapter=keep,
            )
            if rec is not None:
                runs.setdefault(method, []).append(rec)
    return {"base": base, "runs": runs}


def study_cft(sp: dict[str, Task], seeds: tuple[int, ...]) -> dict[str, Any] | None:
    """Study 2 (CFT / RCFT on the aligned SmolLM2)."""
    evals = {"test": sp["test"], "ood": sp["ood"]}
    base = baseline(SMOL, {**evals, "cal": sp["cal"], "train": sp["train"]}, "smol-aligned")
    if base is None:
        return None
    runs: dict[str, list[dict[str, Any]]] = {}
    plan = [("cft", s, {}) for s in seeds]
    plan += [("rcft", 0, {"e_step_every": SIZES["steps"] // 2})]
    plan += [("ls", 0, {})]
    for method, seed, extra in plan:
        if method == "ls":  # LS baseline of the CFT paper: CFT + full-vocabulary ε = 0.1
            rec = train_run(
                "smol-ls-s0",
                SMOL,
                "cft",
                0,
                sp["train"],
                evals,
                sft_label_smoothing=0.1,
            )
        else:
            rec = train_run(
                f"smol-{method}-s{seed}", SMOL, method, seed, sp["train"], evals, **extra
            )
        if rec is not None:
            runs.setdefault(method, []).append(rec)
    return {"base": base, "runs": runs}


def study_mix(sp: dict[str, Task]) -> dict[str, Any] | None:
    """Equal-size all-unknown / half-known / all-known training sets, vanilla SFT."""
    pool = baseline(GEMMA, {"pool": sp["pool"]}, "gemma-base-pool")
    if pool is None:
        return None
    correct = dict(zip(pool["ids"]["pool"], pool["correct"]["pool"], strict=True))
    known = [q for q in sp["pool"] if correct[q.id]]
    unknown = [q for q in sp["pool"] if not correct[q.id]]
    n = min(SIZES["mix_n"], len(known), len(unknown))
    half = n // 2
    mixes = {
        "all-unknown": unknown[:n],
        "half-known": unknown[:half] + known[: n - half],
        "all-known": known[:n],
    }
    runs = {}
    for name, qs in mixes.items():
        rec = train_run(
            f"gemma-mix-{name}",
            GEMMA,
            "sft",
            0,
            Task(name, qs),
            {"test": sp["test"]},
            max_steps=SIZES["mix_steps"],
        )
        if rec is not None:
            runs[name] = rec
    letters = {
        name: " ".join(f"{L}:{sum(q.answer == i for q in qs)}" for i, L in enumerate("ABCD"))
        for name, qs in mixes.items()
    }
    test_letters = " ".join(
        f"{L}:{sum(q.answer == i for q in sp['test'])}" for i, L in enumerate("ABCD")
    )
    return {
        "n_each": n,
        "n_known_in_pool": len(known),
        "n_pool": len(sp["pool"]),
        "gold_letters": {**letters, "test": test_letters},
        "runs": runs,
    }


def step_times(sp: dict[str, Task]) -> Any:
    """Seconds per optimizer step of each method on one fixed batch (SmolLM2, batch 4).

    The machine is shared, so the methods are interleaved over ``time_rounds`` rounds of
    ``time_steps`` steps each and the fastest step after the first of each run is kept.
    """

    def run() -> dict[str, Any]:
        from llmcal.finetune import METHODS, finetune

        batch = Task("batch", list(sp["train"][: SIZES["batch"]]))
        cal = Task("cal", list(sp["cal"][:8]))
        scorer = _scorer(SMOL)
        passes = []
        out: dict[str, Any] = {m: {"step_seconds": [], "timings": []} for m in METHODS}
        for _ in range(SIZES["time_rounds"]):
            start = time.perf_counter()
            scorer.score(batch)
            passes.append(time.perf_counter() - start)
            for method in METHODS:
                cfg = FinetuneConfig(
                    method=method,
                    max_steps=SIZES["time_steps"],
                    batch_size=SIZES["batch"],
                    learning_rate=SIZES["lr"],
                    style_steps=0,
                    refresh_every=100,
                    lora_targets=["q_proj", "v_proj"],
                    logging_steps=100,
                )
                res = finetune(
                    SMOL, batch, cfg, RUNS / "tmp-step", cal=cal, progress=False, save_steps=1000
                )
                out[method]["step_seconds"] += res.step_seconds[1:]
                out[method]["timings"].append(res.timings)
        shutil.rmtree(RUNS / "tmp-step", ignore_errors=True)
        out["score_pass_batch_seconds"] = min(passes)
        return out

    return _cached("step-times-interleaved", run)


# -- report -------------------------------------------------------------------------------------
def _fmt(values: list[float], pct: bool = True) -> str:
    scale = 100.0 if pct else 1.0
    if len(values) == 1:
        return f"{values[0] * scale:.2f}"
    return f"{statistics.mean(values) * scale:.2f} ± {statistics.stdev(values) * scale:.2f}"


def _cells(recs: list[dict[str, Any]], split: str, key: str = "metrics") -> list[str]:
    out = []
    for m in METRICS:
        vals = [r[key][split][m] for r in recs]
        out.append(_fmt(vals, pct=m in ("accuracy", "ece15", "ece10")))
    return out


LABELS = {
    "sft": "vanilla SFT",
    "ls": "LS (uniform)",
    "mbls": "MbLS (uniform)",
    "ecp": "ECP (uniform)",
    "cogcalib-ls": "CoLS",
    "cogcalib-mbls": "CoMbLS",
    "cogcalib-ecp": "CoECP",
    "cft": "CFT",
    "rcft": "RCFT (λ = 1, batch-mean L_ECE)",
    "ls-cft": "LS (CFT + ε = 0.1 over the vocabulary)",
}


def _study_table(study: dict[str, Any], splits_: tuple[str, ...], base_label: str) -> str:
    header = ["method", "seeds"] + [f"{s} {m}" for s in splits_ for m in METRICS]
    base = study["base"]
    rows = [[base_label, "–"] + [c for s in splits_ for c in _cells([base], s)]]
    rows.append(
        [f"{base_label} + TS", "–"] + [c for s in splits_ for c in _cells([base], s, key="ts")]
    )
    for method, recs in study["runs"].items():
        label = LABELS["ls-cft" if method == "ls" and recs[0]["method"] == "cft" else method]
        rows.append([label, str(len(recs))] + [c for s in splits_ for c in _cells(recs, s)])
        if "ts" in recs[0]:
            rows.append(
                [f"{label} + TS", str(len(recs))]
                + [c for s in splits_ for c in _cells(recs, s, key="ts")]
            )
    return md_table(header, rows)


def _relative(study: dict[str, Any], a: str, b: str, split: str) -> float:
    ea = statistics.mean(r["metrics"][split]["ece15"] for r in study["runs"][a])
    eb = statistics.mean(r["metrics"][split]["ece15"] for r in study["runs"][b])
    return (eb - ea) / ea if ea else math.nan


def render(results: dict[str, Any]) -> str:
    """The Markdown report."""
    s = SIZES
    n = results["n"]
    parts = [
        "# Calibration-aware fine-tuning (CPU-sized)",
        "",
        f"LoRA r = {s['lora_r']} (α = {2 * s['lora_r']}), AdamW lr {s['lr']}, linear schedule, "
        f"{s['steps']} steps × batch {s['batch']} (1 epoch), letter format (daca1 template), "
        f"train / cal / test = {n['train']} / {n['cal']} / {n['test']} questions "
        f"(ARC-Easy + OpenBookQA, 4 options, ≤ {s['max_chars']} characters, split seed 0); "
        f"OOD = {n['ood']} MMLU questions ({', '.join(OOD_SUBJECTS)}). Accuracy and ECE in %, "
        "ECE with 15 and 10 equal-width bins; Brier (sum over options) and NLL raw. "
        "Mean ± std over training seeds 0, 1, 2 where seeds = 3, else seed 0. "
        "TS = one temperature fitted on the cal split.",
        "",
    ]
    if "cogcalib" in results:
        st = results["cogcalib"]
        parts += [
            "## 1. CogCalib on Gemma-3-270M (pre-trained base)",
            "",
            f"CogCalib: {s['style_steps']} style-adaptation steps of plain CE, then the threshold t "
            f"(Youden's J on the cal split, current-model labels), refreshed every "
            f"{s['refresh_every']} steps. α: LS 0.111 (ε = 0.1), MbLS 0.1 (m = 10), ECP 0.1. "
            "LoRA on q_proj, v_proj.",
            "",
            _study_table(st, ("test", "ood"), "base (no fine-tuning)"),
            "",
        ]
        if "sft" in st["runs"] and "cogcalib-ls" in st["runs"]:
            parts.append(
                f"ECE15 change CoLS vs vanilla SFT: in-domain "
                f"{_relative(st, 'sft', 'cogcalib-ls', 'test'):+.0%}, OOD "
                f"{_relative(st, 'sft', 'cogcalib-ls', 'ood'):+.0%} (paper: −57 % on Llama3-8B)."
            )
            parts.append("")
        temps = [r["ts"]["_temperature"]["value"] for r in st["runs"].get("sft", []) if "ts" in r]
        if temps:
            parts += [
                "TS temperatures fitted on the cal split for vanilla SFT (per seed): "
                + ", ".join(f"{t:.2f}" for t in temps)
                + " (10000 = the cap: the fit prefers uniform confidence).",
                "",
            ]
        parts += _gate_lines(st)
    if "cft" in results:
        parts += [
            "## 2. CFT / RCFT on SmolLM2-135M-Instruct (aligned)",
            "",
            "CFT = completion-only SFT of the answer letter; RCFT = full-sequence SFT (SFT2) + "
            f"λ·L_ECE, E-step every {s['steps'] // 2} steps; LoRA on all linear layers.",
            "",
            _study_table(results["cft"], ("test", "ood"), "aligned as-is"),
            "",
        ]
        parts += _cft_lines(results["cft"])
        parts += _e_step_lines(results)
    if "mix" in results:
        mix = results["mix"]
        parts += [
            "## 3. Known vs unknown training data (Gemma-3-270M, vanilla SFT)",
            "",
            f"Known = the base model answers correctly before training ({mix['n_known_in_pool']} of "
            f"{mix['n_pool']} pool questions). {mix['n_each']} training questions per mixture, "
            f"{s['mix_steps']} steps × batch {s['batch']}; in-domain test.",
            "",
            md_table(
                ["training mix", "accuracy", "mean conf", "ECE15", "ECE10", "Brier", "NLL"],
                [
                    [
                        name,
                        f"{r['metrics']['test']['accuracy'] * 100:.2f}",
                        f"{r['metrics']['test']['mean_confidence'] * 100:.2f}",
                        f"{r['metrics']['test']['ece15'] * 100:.2f}",
                        f"{r['metrics']['test']['ece10'] * 100:.2f}",
                        f"{r['metrics']['test']['brier']:.4f}",
                        f"{r['metrics']['test']['nll']:.4f}",
                    ]
                    for name, r in mix["runs"].items()
                ],
            ),
            "",
            "Gold answer letters of each training mix (count per letter): "
            + "; ".join(f"{k} {v}" for k, v in mix["gold_letters"].items())
            + ". At this scale the base model is near chance, so 'known' largely means 'the "
            "gold letter is one the base model favours': the mixes differ in letter balance as "
            "well as in knowledge.",
            "",
        ]
    if "steps" in results:
        st = results["steps"]
        base = min(st["sft"]["step_seconds"])
        rows = []
        for method, rec in st.items():
            if not isinstance(rec, dict) or "step_seconds" not in rec:
                continue
            fastest = min(rec["step_seconds"])
            rows.append([method, f"{fastest:.2f}", f"{fastest / base:.2f}"])
        parts += [
            "## 4. Step time (SmolLM2-135M, one fixed batch of 4, LoRA q_proj/v_proj)",
            "",
            f"Fastest of {SIZES['time_rounds']} interleaved rounds × {SIZES['time_steps'] - 1} "
            "timed steps (the first step of each run is dropped); excludes the threshold fits "
            "and E-steps, which run on a schedule, not per step. One letter-scoring pass over "
            f"the same batch: {st['score_pass_batch_seconds']:.2f} s. The machine is shared "
            "with other jobs, so differences under ~10 % are noise.",
            "",
            md_table(["method", "s / step", "× plain SFT"], rows),
            "",
        ]
    return "\n".join(parts)


def _gate_lines(st: dict[str, Any]) -> list[str]:
    lines = []
    for method in ("cogcalib-ls", "cogcalib-mbls", "cogcalib-ecp"):
        if method not in st["runs"]:
            continue
        rec = st["runs"][method][0]
        gh = rec["gate_history"]
        share = [f"{d['share_known']:.2f}" for d in rec["diagnostics"] if "share_known" in d]
        lines.append(
            f"- {LABELS[method]} (seed 0): t = "
            + ", ".join(f"{g['threshold']:.3f}" for g in gh)
            + "; gate agrees with correctness on cal: "
            + ", ".join(f"{g['cal_agreement']:.2f}" for g in gh)
            + f"; share of training examples gated known per logging window: {', '.join(share)}"
        )
    if "sft" in st["runs"]:
        d = st["runs"]["sft"][0]["diagnostics"]
        kc = [
            f"{x['ref_known_acc']:.2f}/{x['ref_known_conf']:.2f}" for x in d if "ref_known_acc" in x
        ]
        uc = [
            f"{x['ref_unknown_acc']:.2f}/{x['ref_unknown_conf']:.2f}"
            for x in d
            if "ref_unknown_acc" in x
        ]
        lines.append(
            "- vanilla SFT training batches, accuracy/confidence per logging window — "
            f"known to the base: {', '.join(kc)}; unknown: {', '.join(uc)}"
        )
    return [*lines, ""] if lines else []


def _cft_lines(st: dict[str, Any]) -> list[str]:
    base = st["base"]["metrics"]
    lines = []
    for method, recs in st["runs"].items():
        for split in ("test", "ood"):
            e = statistics.mean(r["metrics"][split]["ece15"] for r in recs)
            a = statistics.mean(r["metrics"][split]["accuracy"] for r in recs)
            lines.append(
                f"- {method if method != 'ls' else 'LS'} {split}: ECE15 "
                f"{(e - base[split]['ece15']) / base[split]['ece15']:+.0%} vs the aligned model, "
                f"accuracy {100 * (a - base[split]['accuracy']):+.1f} points"
            )
    t = st["base"]["ts"].get("_temperature", {}).get("value")
    if t is not None:
        lines.append(f"- TS temperature fitted on the cal split: {t:.2f}")
    return [*lines, ""]


def _e_step_lines(results: dict[str, Any]) -> list[str]:
    runs = results["cft"]["runs"]
    if "rcft" not in runs:
        return []
    rec = runs["rcft"][0]
    e = rec["timings"]["e_step"]
    scoring = results["cft"]["base"]["score_seconds"].get("train")
    hist = rec["e_step_history"]
    line = (
        f"RCFT E-steps: {len(e)} over the {rec['n_train']} training questions, "
        f"{statistics.mean(e):.1f} s each"
    )
    if scoring:
        line += f" vs {scoring:.1f} s for one HFScorer pass over them ({statistics.mean(e) / scoring:.2f}×)"
    line += "; bin counts per E-step: " + "; ".join(
        str([int(c) for c in h["counts"]]) for h in hist
    )
    return [line + ".", ""]


STAGES = ("cogcalib1", "cft1", "mix", "steps", "cogcalib", "cft", "report")  # or "partial"
# "cogcalib-seeds": only the extra seeds of the CogCalib pair


def main(argv: list[str]) -> None:
    """Run the requested stages (default: all), then write the results."""
    stages = argv or list(STAGES)
    sp = splits()
    results: dict[str, Any] = {"sizes": SIZES, "n": {k: len(v) for k, v in sp.items()}}
    for stage in stages:
        if stage == "cogcalib1":
            study_cogcalib(sp, (0,))
        elif stage == "cft1":
            study_cft(sp, (0,))
        elif stage == "mix":
            study_mix(sp)
        elif stage == "steps":
            step_times(sp)
        elif stage == "cogcalib":
            study_cogcalib(sp, SEEDS)
        elif stage == "cogcalib-seeds":
            study_cogcalib(sp, SEEDS[1:])
        elif stage == "cft":
            study_cft(sp, SEEDS)
        elif stage not in ("report", "partial"):
            raise SystemExit(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    if "report" in stages or "partial" in stages:
        global CACHED_ONLY
        CACHED_ONLY = "partial" in stages
        found = {
            "cogcalib": study_cogcalib(sp, SEEDS),
            "cft": study_cft(sp, SEEDS),
            "mix": study_mix(sp),
            "steps": step_times(sp),
        }
        results.update({k: v for k, v in found.items() if v is not None})
        if os.environ.get("FT_BENCH_SMOKE"):
            print(render(results))
        else:
            write_results("finetune", results, render(results))


if __name__ == "__main__":
    main(sys.argv[1:])
