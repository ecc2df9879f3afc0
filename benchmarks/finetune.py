"""Calibration-aware LoRA fine-tuning on the bundled models, at a scale that can show effects.

Studies (see ../shared/methods/cogcalib.md and cft_rcft.md), in cloze format (options scored as
continuations of ``Question: … Answer:``; in the papers' letter format vanilla SFT never left
chance here, the ``feasibility`` stage):

0. Feasibility (letter format): can vanilla SFT leave chance at all, per model / data / lr.
1. CogCalib on SmolLM2-135M-Instruct: vanilla SFT, TS on vanilla SFT, uniform LS / MbLS / ECP,
   CoLS / CoMbLS / CoECP; in-domain (pooled ARC-Easy + ARC-Challenge + OpenBookQA) and
   out-of-domain (MMLU subjects).
2. CFT / RCFT on SmolLM2-135M-Instruct (aligned): as-is, TS, CFT, RCFT (paper: SFT2 +
   λ·batch-mean L_ECE), LS (CFT + ε = 0.1 over the vocabulary), and the ablations RCFT with the
   authors' objective and ECE-only.
3. The CogCalib finding: vanilla SFT on equal-size all-unknown / half-known / all-known sets.
4. DACA within family: Gemma-3-270M (base) against its own cloze SFT.
5. Step time of each method vs plain LoRA SFT on the same batch.

Every (study, method, seed) run is cached as JSON, written only when the run finished, so an
interrupted study resumes where it stopped: rerun the same command. The full study's runs are
committed (benchmarks/results/finetune-runs/: the study spans several sessions of this machine,
and they are the evidence behind the report); the quick profile's stay in benchmarks/cache/. Run it in parts with ``python benchmarks/finetune.py STAGE``.
The report has bootstrap 95 % CIs (questions resampled, the same draw for every seed) and
paired bootstrap tests of each method against vanilla SFT (CFT in study 2).

    python benchmarks/finetune.py            # the full study → benchmarks/results/finetune.*
    python benchmarks/finetune.py --quick    # a smoke-sized run → benchmarks/cache/finetune-quick/
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import CACHE, DATA_DIR, RESULTS, md_table, write_results
from llmcal._io import atomic_write_text
from llmcal.finetune import FinetuneConfig
from llmcal.finetune.data import balance_letters
from llmcal.finetune.run import evaluation_metrics
from llmcal.tasks import load_task
from llmcal.tasks.types import Task

GEMMA = "gemma3-270m"
SMOL = "smollm2-135m-instruct"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: Sizes per profile. "full" is the issue's scale (test ≥ 400, 3 seeds, a few epochs);
#: "quick" only proves the pipeline end to end.
PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "train": 400,  # pooled in-domain training questions, letters balanced
        "cal": 100,  # held-out split: CogCalib threshold, TS
        "test": 400,  # in-domain test
        "ood": 400,  # MMLU out-of-domain test
        "max_chars": 320,  # question + choices
        "batch": 8,
        "epochs": 1,  # 50 steps (the letter-format feasibility runs: 2 epochs)
        "lr": 3e-4,
        "lora_r": 8,
        "targets": ALL_LINEAR,
        "style_steps": 10,
        "seeds": (0, 1, 2),
        "ablation_seeds": (0, 1, 2),  # the issue: ≥ 3 seeds for every method
        "knowledge_prompts": 3,
        "knowledge_shots": 2,
        "mix_n": 120,
        "mix_epochs": 2,
        "pool": 600,
        "time_steps": 4,
        "time_rounds": 3,
        "resamples": 2000,
    },
    "quick": {
        "train": 16,
        "cal": 8,
        "test": 16,
        "ood": 12,
        "max_chars": 200,
        "batch": 4,
        "epochs": 1,
        "lr": 5e-4,
        "lora_r": 4,
        "targets": ALL_LINEAR,
        "style_steps": 1,
        "seeds": (0, 1),
        "ablation_seeds": (0,),
        "knowledge_prompts": 2,
        "knowledge_shots": 1,
        "mix_n": 4,
        "mix_epochs": 1,
        "pool": 16,
        "time_steps": 2,
        "time_rounds": 1,
        "resamples": 200,
    },
}
#: The studies' answer format. Letter format was tried first and left every model at chance
#: (study 0, feasibility); in cloze format both bundled models start above chance, so the
#: studies train and score each option's mean token log-likelihood (a K-way softmax).
FORMAT: dict[str, Any] = {"mode": "cloze", "normalization": "mean"}
LETTER: dict[str, Any] = {"mode": "letter", "normalization": "mean"}
SIZES: dict[str, Any] = dict(PROFILES["full"])
RUNS = RESULTS / "finetune-runs"
ADAPTERS = CACHE / "adapters"
OOD_SUBJECTS = (
    "management",
    "marketing",
    "world_religions",
    "high_school_psychology",
    "prehistory",
)
METRICS = ("accuracy", "ece15", "ece10", "brier", "nll")
IN_DOMAIN = ("arc_easy", "arc_challenge", "openbook_qa")


def use_profile(name: str) -> None:
    """Switch the sizes and the cache folder to profile ``name``."""
    global RUNS
    SIZES.clear()
    SIZES.update(PROFILES[name])
    SIZES["profile"] = name
    RUNS = RESULTS / "finetune-runs" if name == "full" else CACHE / f"finetune-{name}"


# -- data ---------------------------------------------------------------------------------------
def _short(task: Task) -> Task:
    keep = [q for q in task if len(q.choices) == 4]
    keep = [q for q in keep if len(q.question) + sum(map(len, q.choices)) <= SIZES["max_chars"]]
    return Task(task.name, keep)


def splits() -> dict[str, Task]:
    """Seeded disjoint splits of the pooled MC data (split seed 0 for every run), every split
    letter-balanced (the answer moved, the other options in order; seeded)."""
    pooled = [q for name in IN_DOMAIN for q in _short(load_task(name, data_dir=DATA_DIR))]
    pool = Task("+".join(IN_DOMAIN), pooled).shuffle(0)
    s = SIZES
    cut = [s["train"], s["cal"], s["test"], s["pool"]]
    if sum(cut) > len(pool):
        raise SystemExit(f"the pooled data has {len(pool)} questions, the profile needs {sum(cut)}")
    edges = [sum(cut[:i]) for i in range(len(cut) + 1)]
    names = ["train", "cal", "test", "pool"]
    out = {n: Task(n, list(pool[edges[i] : edges[i + 1]])) for i, n in enumerate(names)}
    mmlu = _short(load_task("mmlu", data_dir=DATA_DIR).filter(list(OOD_SUBJECTS)))
    out["ood"] = Task("ood", list(mmlu.subset(s["ood"], seed=0)))
    return {k: balance_letters(v, seed=0) for k, v in out.items()}


# -- scoring ------------------------------------------------------------------------------------
def _scorer(model: str, adapter: Path | None = None) -> Any:
    from llmcal.models import HFScorer

    return HFScorer(model, adapter=adapter, batch_size=8, progress=False)


def _score_sets(
    scorer: Any, sets: dict[str, Task], template: str, fmt: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, float]]:
    scores, secs = {}, {}
    for name, task in sets.items():
        start = time.perf_counter()
        scores[name] = scorer.score(task, template=template, **fmt)
        secs[name] = time.perf_counter() - start
    return scores, secs


def _per_question(scores: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """Confidence and correctness per question: what the CIs and paired tests resample."""
    return {
        k: {
            "ids": [str(i) for i in v.ids],
            "conf": v.confidences().tolist(),
            "correct": v.correct().astype(int).tolist(),
        }
        for k, v in scores.items()
    }


def _with_ts(scores: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics (and per-question values) of every set after a temperature fitted on cal."""
    from llmcal.calibrate import TemperatureScaling

    ts = TemperatureScaling().fit(scores["cal"])
    scaled = {k: ts.transform(v) for k, v in scores.items() if k != "cal"}
    out: dict[str, Any] = {k: evaluation_metrics(v) for k, v in scaled.items()}
    out["_temperature"] = {"value": ts.temperature}
    return out, _per_question(scaled)


CACHED_ONLY = False  # report: use finished runs only, skip the rest
ONLY: set[str] | None = None  # --methods: run only these methods / run names (not the report)


def _only(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` in order, restricted to ``--methods`` when running (the report reads all)."""
    if ONLY is None or CACHED_ONLY:
        return names
    return tuple(n for n in names if n in ONLY)


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


def baseline(
    model: str,
    sets: dict[str, Task],
    name: str,
    template: str = "daca1",
    fmt: dict[str, Any] | None = None,
) -> Any:
    """The untrained model, and TS fitted on its cal split (``fmt``: letter by default)."""
    fmt = fmt or LETTER

    def run() -> dict[str, Any]:
        scores, secs = _score_sets(_scorer(model), sets, template, fmt)
        record: dict[str, Any] = {
            "model": model,
            "template": template,
            **fmt,
            "metrics": {k: evaluation_metrics(v) for k, v in scores.items()},
            "per_question": _per_question(scores),
            "score_seconds": secs,
        }
        if "cal" in scores:
            record["ts"], record["ts_per_question"] = _with_ts(scores)
        return record

    return _cached(name, run)


def knowledge(model: str, train: Task) -> Any:
    """SliCK-style labels of the training set under the base model (cogcalib.md §1)."""

    def run() -> dict[str, Any]:
        from llmcal.finetune.knowledge import knowledge_labels

        labels = knowledge_labels(
            _scorer(model),
            train,
            n_prompts=SIZES["knowledge_prompts"],
            shots=SIZES["knowledge_shots"],
        )
        return labels.to_dict()

    return _cached(f"knowledge-{model}", run)


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
    fmt: dict[str, Any] | None = None,
    extra: Any = None,
    **overrides: Any,
) -> dict[str, Any] | None:
    """Fine-tune, score the adapter on ``sets`` (plus cal for TS) in the format it was trained
    in (``fmt``: letter by default), cache the record; ``extra(scores)`` adds to the record."""
    fmt = fmt or LETTER

    def run() -> dict[str, Any]:
        from llmcal.finetune import finetune

        settings: dict[str, Any] = {
            "method": method,
            "seed": seed,
            "batch_size": SIZES["batch"],
            "epochs": float(SIZES["epochs"]),
            "learning_rate": SIZES["lr"],
            "lora_r": SIZES["lora_r"],
            "lora_alpha": 2 * SIZES["lora_r"],
            "lora_targets": list(SIZES["targets"]),
            "logging_steps": 5,
            "style_steps": SIZES["style_steps"],
            **(fmt if fmt["mode"] == "cloze" else {}),
            **overrides,
        }
        cfg = FinetuneConfig(**settings)
        out = ADAPTERS / f"bench-{SIZES['profile']}-{name}"
        res = finetune(model, train, cfg, out, cal=cal, progress=False, ref_known=ref_known)
        eval_sets = dict(sets)
        if ts and cal is not None:
            eval_sets["cal"] = cal
        scores, secs = _score_sets(_scorer(model, out), eval_sets, res.template, fmt)
        record: dict[str, Any] = {
            "model": model,
            **fmt,
            "method": method,
            "seed": seed,
            "n_train": len(train),
            "config": cfg.to_dict(),
            "template": res.template,
            "metrics": {k: evaluation_metrics(v) for k, v in scores.items() if k != "cal"},
            "per_question": _per_question({k: v for k, v in scores.items() if k != "cal"}),
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
            record["ts"], record["ts_per_question"] = _with_ts(scores)
        if extra is not None:
            record.update(extra(scores))
        shutil.rmtree(out, ignore_errors=True)
        return record

    return _cached(name, run)


# -- studies ------------------------------------------------------------------------------------
COGCALIB_METHODS = ("sft", "cogcalib-ls", "cogcalib-mbls", "cogcalib-ecp", "ls", "mbls", "ecp")
QUICK_COGCALIB = ("sft", "cogcalib-ls")
#: study 2: name → (method, overrides, main method: all seeds, else ablation seeds)
CFT_RUNS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "cft": ("cft", {}, True),
    "rcft": ("rcft", {}, True),
    "ls-cft": ("cft", {"sft_label_smoothing": 0.1}, True),
    "rcft-code": ("rcft", {"ece_weighting": "code", "base_loss": "completion"}, False),
    "rcft-ece-only": ("rcft", {"ece_only": True}, False),
}
QUICK_CFT = ("cft", "rcft", "rcft-code")


def _base(sp: dict[str, Task]) -> Any:
    """SmolLM2 as it ships, cloze format, on every split (and TS on its cal split)."""
    sets = {"test": sp["test"], "ood": sp["ood"], "cal": sp["cal"], "train": sp["train"]}
    return baseline(SMOL, sets, "cloze-smol-base", fmt=FORMAT)


def _known(base: dict[str, Any], split: str) -> dict[str, bool]:
    """Question id → the untrained model answers it correctly (zero-shot, cloze)."""
    pq = base["per_question"][split]
    return {i: bool(c) for i, c in zip(pq["ids"], pq["correct"], strict=True)}


def study_cogcalib(sp: dict[str, Task]) -> dict[str, Any] | None:
    """Study 1 (CogCalib on SmolLM2, cloze): every method × every seed, methods in order."""
    evals = {"test": sp["test"], "ood": sp["ood"]}
    base = _base(sp)
    if base is None:
        return None
    known = _known(base, "train")
    methods = _only(QUICK_COGCALIB if SIZES["profile"] == "quick" else COGCALIB_METHODS)
    runs: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        for seed in SIZES["seeds"]:
            rec = train_run(
                f"cloze-smol-{method}-s{seed}",
                SMOL,
                method,
                seed,
                sp["train"],
                evals,
                cal=sp["cal"],
                ts=method == "sft",
                ref_known=known,
                fmt=FORMAT,
                balance_letters=True,
            )
            if rec is not None:
                runs.setdefault(method, []).append(rec)
    share = sum(known.values()) / len(known)
    return {"base": base, "runs": runs, "known_share": share, "reference": "sft"}


def study_cft(sp: dict[str, Task]) -> dict[str, Any] | None:
    """Study 2 (CFT / RCFT on the aligned SmolLM2, cloze: options scored as continuations of
    ``Question: … Answer:``, so the CFT ``### Question`` letter format does not apply)."""
    evals = {"test": sp["test"], "ood": sp["ood"]}
    base = _base(sp)
    if base is None:
        return None
    names = _only(QUICK_CFT if SIZES["profile"] == "quick" else tuple(CFT_RUNS))
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        method, extra, main = CFT_RUNS[name]
        for seed in SIZES["seeds"] if main else SIZES["ablation_seeds"]:
            rec = train_run(
                f"cloze-smol-{name}-s{seed}",
                SMOL,
                method,
                seed,
                sp["train"],
                evals,
                lora_targets=["all-linear"],
                fmt=FORMAT,
                balance_letters=True,
                **extra,
            )
            if rec is not None:
                runs.setdefault(name, []).append(rec)
    return {"base": base, "runs": runs, "template": "daca1 (cloze)", "reference": "cft"}


def study_mix(sp: dict[str, Task]) -> dict[str, Any] | None:
    """Equal-size all-unknown / half-known / all-known training sets, vanilla SFT, 3 seeds.

    In cloze format every option is scored on its own, so the order of the options (the
    answer letter) cannot matter to the model: the mixes differ in knowledge only."""
    pool = baseline(SMOL, {"pool": sp["pool"]}, "cloze-smol-base-pool", fmt=FORMAT)
    if pool is None:
        return None
    correct = _known(pool, "pool")
    known = [q for q in sp["pool"] if correct[q.id]]
    unknown = [q for q in sp["pool"] if not correct[q.id]]
    n = min(SIZES["mix_n"], len(known), len(unknown))
    half = n // 2
    mixes = {
        "all-unknown": unknown[:n],
        "half-known": unknown[:half] + known[: n - half],
        "all-known": known[:n],
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    for seed in SIZES["seeds"]:
        for name, qs in mixes.items():
            rec = train_run(
                f"cloze-smol-mix-{name}-s{seed}",
                SMOL,
                "sft",
                seed,
                Task(name, qs),
                {"test": sp["test"]},
                epochs=float(SIZES["mix_epochs"]),
                fmt=FORMAT,
                balance_letters=True,
            )
            if rec is not None:
                runs.setdefault(name, []).append(rec)
    return {"n_each": n, "n_known_in_pool": len(known), "n_pool": len(sp["pool"]), "runs": runs}


def study_daca(sp: dict[str, Task]) -> dict[str, Any] | None:
    """DACA within family: Gemma-3-270M (pre-trained) is the reference, its vanilla cloze SFT
    (seed 0) the PoLM; τ fitted on the unlabelled cal split, against TS on the labelled one."""

    def daca(scores: dict[str, Any]) -> dict[str, Any]:
        from llmcal.calibrate import DACA

        reference = _scorer(GEMMA).score(sp["cal"], template="daca1", **FORMAT)
        fit = DACA().fit(target=scores["cal"], reference=reference)
        assert fit.mask_ is not None
        scaled = {k: fit.transform(v) for k, v in scores.items() if k != "cal"}
        return {
            "daca": {k: evaluation_metrics(v) for k, v in scaled.items()},
            "daca_per_question": _per_question(scaled),
            "daca_tau": fit.temperature,
            "daca_agree": int(fit.mask_.sum()),
            "daca_n": len(fit.mask_),
            "reference_cal_accuracy": float(reference.correct().mean()),
        }

    base = baseline(GEMMA, {"test": sp["test"], "ood": sp["ood"]}, "cloze-gemma-base", fmt=FORMAT)
    rec = train_run(
        "cloze-gemma-sft-daca-s0",
        GEMMA,
        "sft",
        0,
        sp["train"],
        {"test": sp["test"], "ood": sp["ood"]},
        cal=sp["cal"],
        ts=True,
        fmt=FORMAT,
        extra=daca,
        balance_letters=True,
    )
    if base is None or rec is None:
        return None
    return {"base": base, "run": rec}


def _daca_lines(st: dict[str, Any]) -> list[str]:
    r, base = st["run"], st["base"]
    rows = []
    for split in ("test", "ood"):
        entries = [
            ("Gemma-3-270M (reference, untrained)", base, "per_question", "metrics"),
            ("+ vanilla cloze SFT (the PoLM)", r, "per_question", "metrics"),
            ("PoLM + TS (labelled cal)", r, "ts_per_question", "ts"),
            ("PoLM + DACA (unlabelled cal)", r, "daca_per_question", "daca"),
        ]
        for label, rec, pq, key in entries:
            m = rec[key][split]
            e, lo, hi = seed_mean_ci([rec], split, "ece15", pq)
            rows.append([
                label, split, f"{100 * m['accuracy']:.1f}",
                f"{100 * e:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]", f"{100 * m['ece10']:.2f}",
                f"{m['brier']:.4f}", f"{m['nll']:.4f}",
            ])  # fmt: skip
    return [
        "## 5. DACA within family (Gemma-3-270M base → its vanilla cloze SFT)",
        "",
        f"PoLM = Gemma-3-270M after vanilla cloze SFT (seed 0, the study's settings); reference = "
        f"the pre-trained Gemma-3-270M. DACA τ = {r['daca_tau']:.3f} from the "
        f"{r['daca_agree']} of {r['daca_n']} unlabelled cal questions where both models agree; "
        f"TS τ = {r['ts']['_temperature']['value']:.3f} from the labelled cal split.",
        "",
        md_table(["model", "split", "accuracy", "ECE15 [95 % CI]", "ECE10", "Brier", "NLL"], rows),
        "",
    ]


def synthetic_splits(n_train: int, n_test: int) -> dict[str, Task]:
    """Disjoint letter-balanced train / test sets of the generated synthetic families (a
    question counts once: by its text, or by text and options where the text repeats)."""
    from llmcal.tasks import synthetic_task

    seen: set[Any] = set()
    keep = []
    for q in synthetic_task(n=4000, seed=0):
        key = (
            (q.question, frozenset(q.choices))
            if q.subject in ("comparison", "ordering")
            else q.question
        )
        if key not in seen:
            seen.add(key)
            keep.append(q)
    pool = Task("synthetic", keep).shuffle(0)
    train = Task("train", list(pool[:n_train]))
    test = Task("test", list(pool[n_train : n_train + n_test]))
    return {"train": balance_letters(train, seed=0), "test": balance_letters(test, seed=0)}


#: Can vanilla SFT leave chance at this budget? name → (model, data, overrides).
FEASIBILITY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gemma-pooled-lr3e-4": (GEMMA, "pooled", {"epochs": 2.0}),  # = the run gemma-sft-s0
    "gemma-pooled-lr1e-3": (GEMMA, "pooled", {"learning_rate": 1e-3, "epochs": 2.0}),
    "gemma-synthetic-lr1e-3": (GEMMA, "synthetic", {"learning_rate": 1e-3, "epochs": 2.0}),
    "smol-pooled-lr1e-3": (SMOL, "pooled", {"learning_rate": 1e-3, "epochs": 2.0}),
    # the one setting where letter SFT left chance here before (posthoc.md, pair 2: 120 steps)
    "gemma-csqa-lr3e-4-3ep": (GEMMA, "csqa", {"epochs": 3.0}),
}


def csqa_splits(n_train: int, n_test: int) -> dict[str, Task]:
    """Disjoint letter-balanced train / test sets of CommonsenseQA (4 options in this copy)."""
    pool = load_task("commonsense_qa", data_dir=DATA_DIR).shuffle(0)
    train = Task("train", list(pool[:n_train]))
    test = Task("test", list(pool[n_train : n_train + n_test]))
    return {"train": balance_letters(train, seed=0), "test": balance_letters(test, seed=0)}


def study_feasibility(sp: dict[str, Task]) -> dict[str, Any] | None:
    """Vanilla SFT (seed 0) under each FEASIBILITY setting, test accuracy against chance."""
    other = {
        "synthetic": synthetic_splits(SIZES["train"], SIZES["test"]),
        "csqa": csqa_splits(SIZES["train"], SIZES["test"]),
    }
    runs: dict[str, Any] = {}
    for name, (model, data, extra) in FEASIBILITY.items():
        train, test = (
            (sp["train"], sp["test"])
            if data == "pooled"
            else (other[data]["train"], other[data]["test"])
        )
        run_name = "gemma-sft-s0" if name == "gemma-pooled-lr3e-4" else f"feasibility-{name}"
        if run_name == "gemma-sft-s0":
            rec = train_run(run_name, model, "sft", 0, train, {"test": test, "ood": sp["ood"]},
                            cal=sp["cal"], ts=True, balance_letters=True, **extra)  # fmt: skip
        else:
            rec = train_run(run_name, model, "sft", 0, train, {"test": test},
                            balance_letters=True, **extra)  # fmt: skip
        base = baseline(model, {"test": test}, f"feasibility-base-{model}-{data}")
        if rec is not None and base is not None:
            runs[name] = {"run": rec, "base": base, "data": data, "model": model, **extra}
    if not runs:
        return None
    study = {"runs": runs}
    if not CACHED_ONLY:  # the stage's own table, beside the study's report
        write_results("finetune_feasibility", {"sizes": SIZES, **study},
                      "\n".join(_feasibility_lines(study)))  # fmt: skip
    return study


def step_times(sp: dict[str, Task]) -> Any:
    """Seconds per optimizer step of each method on one fixed batch (SmolLM2, cloze).

    The machine is shared, so the methods are interleaved over ``time_rounds`` rounds of
    ``time_steps`` steps each, each round in an order rotated by one (no method always runs
    first), and the fastest step after the first of each run is kept.
    """

    def run() -> dict[str, Any]:
        from llmcal.finetune import METHODS, finetune

        batch = Task("batch", list(sp["train"][: SIZES["batch"]]))
        cal = Task("cal", list(sp["cal"][:8]))
        out: dict[str, Any] = {m: {"step_seconds": []} for m in METHODS}
        order = list(METHODS)
        for r in range(SIZES["time_rounds"]):
            for method in order[r:] + order[:r]:  # each round starts one method later
                cfg = FinetuneConfig(
                    method=method,
                    max_steps=SIZES["time_steps"],
                    batch_size=SIZES["batch"],
                    learning_rate=SIZES["lr"],
                    style_steps=0,
                    refresh_every=100,
                    lora_targets=list(SIZES["targets"]),
                    logging_steps=100,
                    **FORMAT,
                )
                res = finetune(
                    SMOL,
                    batch,
                    cfg,
                    ADAPTERS / "tmp-step",
                    cal=cal,
                    progress=False,
                    save_steps=1000,
                )
                out[method]["step_seconds"] += res.step_seconds[1:]
        shutil.rmtree(ADAPTERS / "tmp-step", ignore_errors=True)
        return out

    return _cached("cloze-step-times", run)


# -- statistics ---------------------------------------------------------------------------------
def _ece_resampled(conf: np.ndarray, correct: np.ndarray, idx: np.ndarray, n_bins: int) -> Any:
    """Top-label ECE (equal-width bins) of each resample (rows of ``idx``), vectorised."""
    c, y = conf[idx], correct[idx]
    b = np.minimum((c * n_bins).astype(np.int64), n_bins - 1)
    flat = (np.arange(idx.shape[0])[:, None] * n_bins + b).ravel()
    size = idx.shape[0] * n_bins
    resid = np.bincount(flat, weights=(y - c).ravel(), minlength=size).reshape(-1, n_bins)
    return np.abs(resid).sum(axis=1) / idx.shape[1]


def _stat(pq: dict[str, list[Any]], idx: np.ndarray, metric: str) -> Any:
    conf = np.asarray(pq["conf"], dtype=np.float64)
    correct = np.asarray(pq["correct"], dtype=np.float64)
    if metric == "accuracy":
        return correct[idx].mean(axis=1)
    return _ece_resampled(conf, correct, idx, int(metric.removeprefix("ece")))


def _draws(n: int) -> np.ndarray:
    rng = np.random.default_rng(12345)
    return rng.integers(0, n, size=(SIZES["resamples"], n))


def seed_mean_ci(
    recs: list[dict[str, Any]], split: str, metric: str, key: str = "per_question"
) -> tuple[float, float, float]:
    """Mean over seeds and its 95 % bootstrap CI (questions resampled, same draw per seed)."""
    pqs = [r[key][split] for r in recs]
    n = len(pqs[0]["conf"])
    full = np.arange(n)[None, :]
    est = float(np.mean([_stat(p, full, metric)[0] for p in pqs]))
    boot = np.mean([_stat(p, _draws(n), metric) for p in pqs], axis=0)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return est, float(lo), float(hi)


def paired_vs(
    recs: list[dict[str, Any]], ref: list[dict[str, Any]], split: str, metric: str
) -> dict[str, float] | None:
    """Method − reference on the seeds both have: mean Δ, 95 % CI and a two-sided bootstrap p."""
    by_seed = {r["seed"]: r for r in ref}
    pairs = [(r, by_seed[r["seed"]]) for r in recs if r["seed"] in by_seed]
    if not pairs:
        return None
    first = pairs[0][0]["per_question"][split]
    if any(p[1]["per_question"][split]["ids"] != first["ids"] for p in pairs):
        return None  # not the same questions: no paired test
    n = len(first["conf"])
    full, draws = np.arange(n)[None, :], _draws(n)
    est = np.mean(
        [
            _stat(a["per_question"][split], full, metric)[0]
            - _stat(b["per_question"][split], full, metric)[0]
            for a, b in pairs
        ]
    )
    boot = np.mean(
        [
            _stat(a["per_question"][split], draws, metric)
            - _stat(b["per_question"][split], draws, metric)
            for a, b in pairs
        ],
        axis=0,
    )
    lo, hi = np.quantile(boot, [0.025, 0.975])
    p = min(1.0, 2.0 * min(float((boot <= 0).mean()), float((boot >= 0).mean())))
    return {"delta": float(est), "low": float(lo), "high": float(hi), "p": p, "seeds": len(pairs)}


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
    "rcft": "RCFT (SFT2 + λ·batch-mean L_ECE, λ = 1)",
    "ls-cft": "LS (CFT + ε = 0.1 over the vocabulary)",
    "rcft-code": "RCFT, authors' objective ((1−α)·SFT1 + α·1e-3·L_ECE, α = .5)",
    "rcft-ece-only": "RCFT ECE-only ablation",
}


def _study_table(study: dict[str, Any], splits_: tuple[str, ...], base_label: str) -> str:
    header = ["method", "seeds"] + [f"{s} {m}" for s in splits_ for m in METRICS]
    base = study["base"]
    rows = [[base_label, "–"] + [c for s in splits_ for c in _cells([base], s)]]
    rows.append(
        [f"{base_label} + TS", "–"] + [c for s in splits_ for c in _cells([base], s, key="ts")]
    )
    for method, recs in study["runs"].items():
        label = LABELS[method]
        rows.append([label, str(len(recs))] + [c for s in splits_ for c in _cells(recs, s)])
        if "ts" in recs[0]:
            rows.append(
                [f"{label} + TS", str(len(recs))]
                + [c for s in splits_ for c in _cells(recs, s, key="ts")]
            )
    return md_table(header, rows)


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}"


def _ci_table(study: dict[str, Any], splits_: tuple[str, ...]) -> str:
    """ECE15 and accuracy with bootstrap CIs, and the paired test against the reference."""
    ref_name = study["reference"]
    ref = study["runs"].get(ref_name, [])
    header = ["method", "split", "ECE15 [95 % CI]", "Δ ECE15 vs ref [95 % CI]", "p"]
    header += ["accuracy [95 % CI]", "Δ accuracy [95 % CI]", "p"]
    rows = []
    entries: list[tuple[str, list[dict[str, Any]], str]] = [
        (f"{LABELS[m]}", recs, "per_question") for m, recs in study["runs"].items()
    ]
    if ref and "ts_per_question" in ref[0]:
        entries.append((f"{LABELS[ref_name]} + TS", ref, "ts_per_question"))
    for label, recs, key in entries:
        for split in splits_:
            cells = [label, split]
            for metric in ("ece15", "accuracy"):
                e, lo, hi = seed_mean_ci(recs, split, metric, key)
                cells.append(f"{100 * e:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]")
                if key == "per_question" and recs is not ref and ref:
                    d = paired_vs(recs, ref, split, metric)
                else:
                    d = None
                if d is None:
                    cells += ["–", "–"]
                else:
                    cells.append(f"{_pct(d['delta'])} [{_pct(d['low'])}, {_pct(d['high'])}]")
                    cells.append(f"{d['p']:.3f}")
            rows.append(cells)
    return md_table(header, rows)


def _relative(study: dict[str, Any], a: str, b: str, split: str) -> float:
    ea = statistics.mean(r["metrics"][split]["ece15"] for r in study["runs"][a])
    eb = statistics.mean(r["metrics"][split]["ece15"] for r in study["runs"][b])
    return (eb - ea) / ea if ea else math.nan


def _speed_note(results: dict[str, Any]) -> str:
    """Why not Gemma for studies 1–3: its measured cloze step against SmolLM2's."""
    try:
        gemma = statistics.median(results["daca"]["run"]["step_seconds"])
        smol = statistics.median(
            t for r in results["cogcalib"]["runs"]["sft"] for t in r["step_seconds"]
        )
    except (KeyError, statistics.StatisticsError):
        return "Gemma-3-270M's 262k-token vocabulary makes its steps slower on this CPU"
    return (
        f"a Gemma-3-270M cloze step, with its 262k-token vocabulary, takes {gemma:.1f} s (median) "
        f"against {smol:.1f} s for SmolLM2 on this CPU"
    )


def render(results: dict[str, Any]) -> str:
    """The Markdown report."""
    s = SIZES
    n = results["n"]
    seeds = ", ".join(map(str, s["seeds"]))
    parts = [
        f"# Calibration-aware fine-tuning ({s['profile']} profile)",
        "",
        "Format: **cloze** for studies 1–3 — each option is scored as the continuation of "
        "`Question: … Answer:`, its mean token log-probability over the full vocabulary is the "
        "option's logit, and training and scoring use the same K-way softmax (`llmcal finetune "
        "--mode cloze`, `llmcal score --mode cloze`). The papers use the answer-letter format; "
        "at 135M–270M parameters vanilla letter SFT never left chance here (study 0), while in "
        "cloze format both bundled models start well above it.",
        "",
        f"Model: SmolLM2-135M-Instruct for studies 1–3 ({_speed_note(results)}). "
        f"LoRA r = {s['lora_r']} (α = "
        f"{2 * s['lora_r']}) on {', '.join(s['targets'])}, AdamW lr {s['lr']}, linear schedule, "
        f"{s['epochs']} epoch(s) × batch {s['batch']}; train / cal / test = {n['train']} / "
        f"{n['cal']} / {n['test']} questions pooled from {', '.join(IN_DOMAIN)} (4 options, ≤ "
        f"{s['max_chars']} characters, split seed 0), OOD = {n['ood']} MMLU questions "
        f"({', '.join(OOD_SUBJECTS)}). Accuracy and ECE in %, ECE with 15 and 10 equal-width "
        f"bins; Brier (sum over options) and NLL raw. Mean ± std over training seeds {seeds} "
        f"(ablations: seed {', '.join(map(str, s['ablation_seeds']))}). TS = one temperature "
        "fitted on the cal split. CIs: 95 % percentile bootstrap over test questions "
        f"({s['resamples']} resamples, the same draw for every seed, the statistic averaged "
        "over seeds); Δ and p: the paired bootstrap of method − reference on the same "
        "questions and seeds (p two-sided).",
        "",
        _budget_line(results),
        "",
        *_claims_lines(results),
    ]
    if "feasibility" in results:
        parts += _feasibility_lines(results["feasibility"])
    if "cogcalib" in results:
        st = results["cogcalib"]
        parts += [
            "## 1. CogCalib on SmolLM2-135M-Instruct (cloze)",
            "",
            f"CogCalib: {s['style_steps']} style-adaptation steps of plain CE, then the threshold "
            "t (Youden's J on the cal split, current-model labels), refreshed at every epoch end "
            "and at most every 500 steps (cogcalib.md §3). α: LS 0.111 (ε = 0.1), MbLS 0.1 "
            "(m = 10), ECP 0.1. Known share of the training set (the untrained model answers "
            f"zero-shot correctly, cloze): {100 * st['known_share']:.1f} %.",
            "",
        ]
        if "sft" in st["runs"]:
            b = seed_mean_ci([st["base"]], "test", "accuracy")
            v = seed_mean_ci(st["runs"]["sft"], "test", "accuracy")
            parts += [
                "Above chance (25 %) on the in-domain test split: untrained "
                "{:.1f} [{:.1f}, {:.1f}] %, vanilla SFT {:.1f} [{:.1f}, {:.1f}] % ".format(
                    *(100 * x for x in (*b, *v))
                )
                + f"(mean of {len(st['runs']['sft'])} seed(s), 95 % bootstrap CI).",
                "",
            ]
        parts += [
            _study_table(st, ("test", "ood"), "base (no fine-tuning)"),
            "",
            "Bootstrap CIs and paired tests against vanilla SFT:",
            "",
            _ci_table(st, ("test", "ood")),
            "",
        ]
        if "sft" in st["runs"] and "cogcalib-ls" in st["runs"]:
            parts.append(
                f"ECE15 change CoLS vs vanilla SFT: in-domain "
                f"{_relative(st, 'sft', 'cogcalib-ls', 'test'):+.0%}, OOD "
                f"{_relative(st, 'sft', 'cogcalib-ls', 'ood'):+.0%} (paper: −57 % on Llama3-8B)."
            )
            parts.append("")
        parts += _gate_lines(st)
    if "cft" in results:
        st = results["cft"]
        parts += [
            "## 2. CFT / RCFT on SmolLM2-135M-Instruct (aligned, cloze)",
            "",
            "CFT = completion-only SFT (the gold option's continuation tokens); RCFT = "
            "full-sequence SFT of the gold row (SFT2) + λ·L_ECE on the K-way option "
            "probabilities, E-step every epoch; LoRA on all linear layers. In cloze format the "
            "CFT `### Question … ### Answer:` letter prompt does not apply: the options are "
            "continuations of `Question: … Answer:`.",
            "",
            _study_table(st, ("test", "ood"), "aligned as-is"),
            "",
            "Bootstrap CIs and paired tests against CFT (vanilla completion SFT), on the seeds "
            "both have (a one-seed ablation against CFT's seed 0):",
            "",
            _ci_table(st, ("test", "ood")),
            "",
            *_code_objective_lines(st),
        ]
    if "mix" in results:
        mix = results["mix"]
        parts += [
            "## 3. Known vs unknown training data (SmolLM2, cloze, vanilla SFT)",
            "",
            f"Known = the untrained model answers correctly zero-shot ({mix['n_known_in_pool']} "
            f"of {mix['n_pool']} pool questions). {mix['n_each']} training questions per "
            f"mixture, {s['mix_epochs']} epoch(s); in-domain test; mean ± std over seeds. In "
            "cloze format each option is scored on its own, so the answer letter cannot matter "
            "to the model: the mixtures differ in knowledge only.",
            "",
            md_table(
                [
                    "training mix",
                    "seeds",
                    "accuracy",
                    "mean conf",
                    "ECE15 [95 % CI]",
                    "Brier",
                    "NLL",
                ],
                [
                    [
                        name,
                        str(len(recs)),
                        _fmt([r["metrics"]["test"]["accuracy"] for r in recs]),
                        _fmt([r["metrics"]["test"]["mean_confidence"] for r in recs]),
                        "{:.2f} [{:.2f}, {:.2f}]".format(
                            *(100 * v for v in seed_mean_ci(recs, "test", "ece15"))
                        ),
                        _fmt([r["metrics"]["test"]["brier"] for r in recs], pct=False),
                        _fmt([r["metrics"]["test"]["nll"] for r in recs], pct=False),
                    ]
                    for name, recs in mix["runs"].items()
                ],
            ),
            "",
        ]
        runs = mix["runs"]
        if "all-known" in runs and "all-unknown" in runs:
            cells = []
            for metric in ("ece15", "accuracy"):
                d = paired_vs(runs["all-known"], runs["all-unknown"], "test", metric)
                if d is not None:
                    cells.append(
                        f"Δ {metric} {_pct(d['delta'])} [{_pct(d['low'])}, {_pct(d['high'])}], "
                        f"p = {d['p']:.3f}"
                    )
            if cells:
                parts += [
                    "All-known − all-unknown, paired bootstrap over test questions and seeds: "
                    + "; ".join(cells)
                    + " (paper: all-unknown training gives the lower ECE).",
                    "",
                ]
    if "daca" in results:
        parts += _daca_lines(results["daca"])
    if "steps" in results:
        st = results["steps"]
        base = min(st["sft"]["step_seconds"])
        rows = [
            [m, f"{min(r['step_seconds']):.2f}", f"{min(r['step_seconds']) / base:.2f}"]
            for m, r in st.items()
            if isinstance(r, dict) and r.get("step_seconds")
        ]
        parts += [
            "## 4. Step time (SmolLM2-135M, one fixed batch)",
            "",
            f"Fastest of {s['time_rounds']} interleaved round(s) × {s['time_steps'] - 1} timed "
            "step(s), each round in another method order; excludes threshold fits and E-steps. "
            "The machine is shared: differences under ~15 % are noise.",
            "",
            md_table(["method", "s / step", "× plain SFT"], rows),
            "",
        ]
    return "\n".join(parts)


def _budget_line(results: dict[str, Any]) -> str:
    """The wall time of every cached run the report draws on (training + scoring)."""

    def walls(x: Any, seen: dict[int, float]) -> dict[int, float]:
        if isinstance(x, dict):
            if isinstance(x.get("wall_seconds"), float):
                seen[id(x)] = x["wall_seconds"]
            for v in x.values():
                walls(v, seen)
        elif isinstance(x, list):
            for v in x:
                walls(v, seen)
        return seen

    every = walls(results, {})
    letter = walls(results.get("feasibility"), {})
    line = (
        f"Compute: the {len(every)} cached runs behind this report took "
        f"{sum(every.values()) / 3600:.1f} h of wall time on a shared 2-core CPU (model loads, "
        "training, scoring and TS fits)"
    )
    if letter:
        line += (
            f": the {len(every) - len(letter)} runs of studies 1–5 "
            f"{(sum(every.values()) - sum(letter.values())) / 3600:.1f} h, the {len(letter)} "
            f"letter-format runs of study 0 {sum(letter.values()) / 3600:.1f} h"
        )
    return line + "."


def _verdict(d: dict[str, float] | None, want_negative: bool = True) -> str:
    """**holds**: the paired Δ has the claimed sign at p < 0.05; **the opposite**: the other sign
    at p < 0.05; **not shown**: p ≥ 0.05."""
    if d is None:
        return "not measured"
    if d["p"] >= 0.05:
        return "**not shown** (p ≥ 0.05)"
    return "**holds**" if (d["delta"] < 0) == want_negative else "**the opposite**"


def _delta(d: dict[str, float] | None) -> str:
    if d is None:
        return "–"
    return f"Δ {_pct(d['delta'])} [{_pct(d['low'])}, {_pct(d['high'])}], p = {d['p']:.3f}"


def _claims_lines(results: dict[str, Any]) -> list[str]:
    """The papers' claims, each with this study's paired evidence and a verdict (p < 0.05)."""
    rows: list[list[str]] = []
    if "cogcalib" in results and {"sft", "cogcalib-ls"} <= results["cogcalib"]["runs"].keys():
        runs = results["cogcalib"]["runs"]
        for split in ("test", "ood"):
            d = paired_vs(runs["cogcalib-ls"], runs["sft"], split, "ece15")
            a = paired_vs(runs["cogcalib-ls"], runs["sft"], split, "accuracy")
            rel = _relative(results["cogcalib"], "sft", "cogcalib-ls", split)
            rows.append([
                f"CogCalib: CoLS −57 % ECE vs vanilla SFT at equal accuracy ({split})",
                f"ECE15 {rel:+.0%}: {_delta(d)}; accuracy {_delta(a)}", _verdict(d),
            ])  # fmt: skip
    if "cft" in results and "cft" in results["cft"]["runs"]:
        st = results["cft"]
        cft = statistics.mean(r["metrics"]["test"]["ece15"] for r in st["runs"]["cft"])
        base = st["base"]["metrics"]["test"]["ece15"]
        rows.append([
            "CFT: ECE 2.4–6.5 % from 14–20 % (test)",
            f"ECE15 {100 * base:.2f} → {100 * cft:.2f} (aligned + TS: "
            f"{100 * st['base']['ts']['test']['ece15']:.2f})",
            "**holds**" if cft <= 0.065 else "**does not hold**",
        ])  # fmt: skip
        if "rcft" in st["runs"]:
            a = paired_vs(st["runs"]["rcft"], st["runs"]["cft"], "test", "accuracy")
            ece = statistics.mean(r["metrics"]["test"]["ece15"] for r in st["runs"]["rcft"])
            rows.append([
                "RCFT: higher accuracy than CFT at ECE ≤ 9 % (test)",
                f"accuracy {_delta(a)}; RCFT ECE15 {100 * ece:.2f}",
                _verdict(a, want_negative=False) if ece <= 0.09
                else "**does not hold** (ECE15 > 9 %)",
            ])  # fmt: skip
    mix = results.get("mix", {}).get("runs", {})
    if {"all-known", "all-unknown"} <= mix.keys():
        d = paired_vs(mix["all-known"], mix["all-unknown"], "test", "ece15")
        rows.append([
            "CogCalib's premise: known training data raise ECE (all-known − all-unknown)",
            f"ECE15 {_delta(d)}", _verdict(d, want_negative=False),
        ])  # fmt: skip
    if "daca" in results:
        r = results["daca"]["run"]
        polm = [{"seed": 0, "per_question": r["per_question"]}]
        for split in ("test", "ood"):
            d = paired_vs([{"seed": 0, "per_question": r["daca_per_question"]}], polm, split,
                          "ece15")  # fmt: skip
            t = paired_vs([{"seed": 0, "per_question": r["ts_per_question"]}], polm, split,
                          "ece15")  # fmt: skip
            rows.append([
                f"DACA: label-free τ lowers the PoLM's ECE within a family ({split})",
                f"ECE15 {_delta(d)} (TS with labels: {_delta(t)})", _verdict(d),
            ])  # fmt: skip
    if not rows:
        return []
    return [
        "## Which claims hold here",
        "",
        "A claim holds when the paired bootstrap difference has the claimed sign at p < 0.05 and "
        "is not shown at p ≥ 0.05 (the CFT range: the mean ECE15 inside it or not). Reasons are in README.md § Calibration-aware "
        "fine-tuning: one epoch on a 135M model is a small push, and post-hoc TS after SFT is "
        "the bar every training-time method has to clear.",
        "",
        md_table(["claim", "this study", "verdict"], rows),
        "",
    ]


def _code_objective_lines(st: dict[str, Any]) -> list[str]:
    """How far the authors' RCFT objective moves from CFT on the same seeds: its SFT term is
    scaled by 1 − α, which Adam undoes, and its ECE term weighs α·1e-3."""
    code = st["runs"].get("rcft-code", [])
    ref = {r["seed"]: r for r in st["runs"].get("cft", [])}
    pairs = [(r["per_question"]["test"], ref[r["seed"]]["per_question"]["test"])
             for r in code if r["seed"] in ref]  # fmt: skip
    if not pairs or any(a["ids"] != b["ids"] for a, b in pairs):
        return []
    same = sum(x == y for a, b in pairs for x, y in zip(a["correct"], b["correct"], strict=True))
    dconf = np.concatenate(
        [np.abs(np.asarray(a["conf"]) - np.asarray(b["conf"])) for a, b in pairs]
    )
    return [
        f"RCFT with the authors' objective vs CFT on the same seed ({len(pairs)} seed(s)): the "
        f"same correctness on {same} of {len(dconf)} (test question, seed) pairs, confidence "
        f"within {100 * dconf.mean():.2f} points on average (max {100 * dconf.max():.2f}). Adam "
        "is invariant to the (1 − α) scale of the SFT term, so what is left of the ECE term at "
        "weight α·1e-3 barely moves the model.",
        "",
    ]


def _feasibility_lines(st: dict[str, Any]) -> list[str]:
    rows = []
    for name, r in st["runs"].items():
        acc, lo, hi = seed_mean_ci([r["run"]], "test", "accuracy")
        b_acc, b_lo, b_hi = seed_mean_ci([r["base"]], "test", "accuracy")
        rows.append([
            name, r["model"], r["data"], f"{r['run']['config']['learning_rate']:g}",
            f"{r['run']['config']['epochs']:g}",
            str(r["run"]["steps"]),
            f"{100 * b_acc:.1f} [{100 * b_lo:.1f}, {100 * b_hi:.1f}]",
            f"{100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
            f"{100 * r['run']['metrics']['test']['ece15']:.2f}",
            "yes" if lo > 0.25 else "no",
        ])  # fmt: skip
    return [
        "## 0. Can vanilla SFT leave chance at this budget?",
        "",
        f"Vanilla LoRA SFT, seed 0, batch {SIZES['batch']} on "
        f"{SIZES['train']} letter-balanced training questions, LoRA r = {SIZES['lora_r']} on all "
        "linear layers, letter format (daca1); test = 400 letter-balanced 4-option questions "
        "(pooled: the study's in-domain test split; synthetic: generated families, disjoint "
        "from training; csqa: CommonsenseQA, 4 options in this copy). Accuracy in % with its 95 % "
        "bootstrap CI; chance is 25 %.",
        "",
        md_table(FEASIBILITY_HEADER, rows),
        "",
    ]


FEASIBILITY_HEADER = ["setting", "model", "data", "lr", "epochs", "steps", "base acc", "SFT acc",
                      "SFT ECE15", "CI above chance"]  # fmt: skip


def _gate_lines(st: dict[str, Any]) -> list[str]:
    lines = []
    for method in ("cogcalib-ls", "cogcalib-mbls", "cogcalib-ecp"):
        if method not in st["runs"]:
            continue
        rec = st["runs"][method][0]
        gh = rec["gate_history"]
        share = [f"{d['share_known']:.2f}" for d in rec["diagnostics"] if "share_known" in d]
        lines.append(
            f"- {LABELS[method]} (seed {rec['seed']}): t refits at steps "
            + ", ".join(str(int(g["step"])) for g in gh)
            + "; gate agreement with correctness on cal: "
            + ", ".join(f"{g['cal_agreement']:.2f}" for g in gh)
            + f"; share gated known per logging window: {', '.join(share)}"
        )
    return [*lines, ""] if lines else []


STAGES = ("feasibility", "cogcalib", "cft", "mix", "daca", "steps", "report")  # or "partial"


def main(argv: list[str] | None = None) -> None:
    """Run the requested stages (default: all), then write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", nargs="*", help=f"of {', '.join(STAGES)}, partial")
    parser.add_argument("--quick", action="store_true", help="smoke-sized run (not the study)")
    parser.add_argument(
        "--methods", default=None, help="comma-separated: run only these (cogcalib / cft stages)"
    )
    args = parser.parse_args(argv)
    global ONLY
    ONLY = set(args.methods.split(",")) if args.methods else None
    use_profile("quick" if args.quick else "full")
    stages = args.stages or list(STAGES)
    for stage in stages:
        if stage not in (*STAGES, "partial"):
            raise SystemExit(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}, partial")
    sp = splits()
    results: dict[str, Any] = {"sizes": SIZES, "n": {k: len(v) for k, v in sp.items()}}
    studies = {
        "feasibility": study_feasibility,
        "cogcalib": study_cogcalib,
        "cft": study_cft,
        "mix": study_mix,
        "daca": study_daca,
        "steps": step_times,
    }
    for stage in stages:
        if stage in studies:
            studies[stage](sp)
    if "report" in stages or "partial" in stages:
        global CACHED_ONLY
        CACHED_ONLY = "partial" in stages
        found = {name: fn(sp) for name, fn in studies.items()}
        results.update({k: v for k, v in found.items() if v is not None})
        markdown = render(results)
        if args.quick:  # never over the published results
            atomic_write_text(RUNS / "report.md", markdown + "\n")
            atomic_write_text(RUNS / "report.json", json.dumps(results, default=float) + "\n")
            print(markdown)
            print(f"wrote {RUNS / 'report.md'}")
        else:
            write_results("finetune", results, markdown)


if __name__ == "__main__":
    main()
