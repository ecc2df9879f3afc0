"""Post-hoc calibration on real tasks: supervised calibrators, CAPE and DACA (label-free).

Two model pairs on seeded subsets of ARC-Easy, ARC-Challenge, OpenBookQA, BoolQ and MMLU, five
seeded 30 % / 70 % calibration / test splits:

* cross-family: PoLM SmolLM2-135M-Instruct, reference (PLM) Gemma-3-270M; letter and cloze,
  and the letter-mode PoLM against the cloze-mode reference;
* within-family: PoLM = Gemma-3-270M with a LoRA letter-format fine-tune (made by
  ``llmcal finetune`` on CommonsenseQA, a task outside the benchmark; see WITHIN_ADAPTER),
  reference = Gemma-3-270M itself; the PoLM in letter mode (the format the fine-tune learnt), the
  reference once in letter mode and once in cloze mode (a base model's natural format: DACA only
  needs the reference's distribution over the same options).

Scores are cached in benchmarks/cache/ (fill it with warm_cache.py), so re-running only the
calibrator part takes seconds. Writes benchmarks/results/posthoc.{json,md} and
posthoc_selective.png. Usage: python benchmarks/posthoc.py [--limit 1000] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import CACHE, RESULTS, cached_scores, md_table, write_results
from llmcal.calibrate import (
    DACA,
    HistogramBinning,
    IsotonicCalibration,
    MatrixScaling,
    TemperatureScaling,
    VectorScaling,
)
from llmcal.errors import LLMCalError
from llmcal.metrics import brier, ece, nll, selective_accuracy, top_label_brier
from llmcal.models import ALIGNED_MODEL, BASE_MODEL
from llmcal.scores import Scores

TASKS = ("arc_easy", "arc_challenge", "openbook_qa", "boolq", "mmlu")
MODES = ("letter", "cloze")
NORMALIZATION = "sum"  # cloze: summed log-likelihood (lm-eval's "acc")
#: The within-family PoLM, made with (about 30 CPU-minutes):
#: llmcal finetune --model gemma3-270m --task commonsense_qa --data-dir ../shared/data --method sft
#:   --balance-letters --lr 3e-4 --batch-size 8 --max-steps 120 --test-fraction 0.1 --seed 0
#:   --out WITHIN_ADAPTER
WITHIN_ADAPTER = CACHE / "adapters" / "gemma3-270m-csqa-letter-sft-balanced"
#: (PoLM mode, reference mode) combinations evaluated for each pair
PAIRS: dict[str, dict[str, Any]] = {
    "cross": {
        "polm": ALIGNED_MODEL,
        "plm": BASE_MODEL,
        "modes": (("letter", "letter"), ("cloze", "cloze"), ("letter", "cloze")),
    },
    "within": {
        "polm": BASE_MODEL,  # + the LoRA adapter --within-adapter (default WITHIN_ADAPTER)
        "plm": BASE_MODEL,
        "modes": (("letter", "letter"), ("letter", "cloze")),
    },
}
THRESHOLDS = tuple(np.round(np.arange(0.30, 0.96, 0.05), 2).tolist())
METHODS = (
    "vanilla", "TS", "VS", "MS", "histogram", "isotonic", "CAPE",
    "DACA", "DACA+VS", "DACA+MS", "naive", "disagree", "reference",
)  # fmt: skip


def metrics(s: Scores) -> dict[str, float]:
    """The table's metrics of one calibrated test split."""
    conf, correct = s.confidences(), s.correct()
    return {
        "accuracy": float(correct.mean()),
        "confidence": float(conf.mean()),
        "ece10": ece(conf, correct, n_bins=10),
        "ece15": ece(conf, correct, n_bins=15),
        "brier": brier(s.probs(), s.labels),
        "tl_brier": top_label_brier(conf, correct),
        "nll": nll(s.logits, s.labels, kind="logits"),
    }


def split(ids: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Seeded 30 % calibration / 70 % test split of ids."""
    order = np.random.default_rng(seed).permutation(len(ids))
    n_cal = round(0.3 * len(ids))
    return [ids[i] for i in sorted(order[:n_cal])], [ids[i] for i in sorted(order[n_cal:])]


def run_split(
    polm: Scores, plm: Scores, cape: Scores | None, seed: int
) -> tuple[dict[str, dict[str, float]], dict[str, Any], dict[str, list[float | None]]]:
    """Every method on one calibration / test split."""
    cal_ids, test_ids = split(polm.ids.tolist(), seed)
    cal, test = polm.by_ids(cal_ids), polm.by_ids(test_ids)
    unlabelled = cal.replace(labels=np.full(len(cal), -1))
    ref_cal = plm.by_ids(cal_ids)
    fitters: dict[str, Callable[[], Any]] = {
        "TS": lambda: TemperatureScaling().fit(cal),
        "VS": lambda: VectorScaling().fit(cal),
        "MS": lambda: MatrixScaling(off_diag_l2=0.01, bias_l2=0.01).fit(cal),
        "histogram": lambda: HistogramBinning(n_bins=10).fit(cal),
        "isotonic": lambda: IsotonicCalibration().fit(cal),
        "DACA": lambda: DACA().fit(unlabelled, ref_cal),
        "DACA+VS": lambda: DACA(scaler="vector").fit(unlabelled, ref_cal),
        "DACA+MS": lambda: DACA(scaler="matrix").fit(unlabelled, ref_cal),
        "naive": lambda: DACA(mask="none").fit(unlabelled, ref_cal),
        "disagree": lambda: DACA(mask="disagree").fit(unlabelled, ref_cal),
    }
    out = {"vanilla": metrics(test), "reference": metrics(plm.by_ids(test_ids))}
    if cape is not None:
        out["CAPE"] = metrics(cape.by_ids(test_ids))
    fitted: dict[str, Any] = {}
    selective: dict[str, list[float | None]] = {}
    for name, fit in fitters.items():
        try:
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                cal_obj = fit()
        except LLMCalError as exc:  # e.g. no agreeing questions in a small split
            fitted[name] = {"error": str(exc)}
            continue
        calibrated = cal_obj.transform(test)
        out[name] = metrics(calibrated)
        info = cal_obj.fit_info_ or {}
        fitted[name] = {
            "tau": getattr(cal_obj, "temperature", None)
            if name in ("TS", "DACA", "naive", "disagree")
            else None,
            "n_used": info.get("n_used"),
            "diverged": info.get("diverged"),
        }
        if name in ("TS", "DACA"):
            selective[name] = sel_curve(calibrated)
    selective["vanilla"] = sel_curve(test)
    return out, fitted, selective


def sel_curve(s: Scores) -> list[float | None]:
    """Accuracy among questions with confidence ≥ each threshold (None where none remain)."""
    conf, correct = s.confidences(), s.correct()
    return [
        selective_accuracy(conf, correct, threshold=t) if (conf >= t).any() else None
        for t in THRESHOLDS
    ]


def mean_curves(per_seed: list[dict[str, list[float | None]]]) -> dict[str, list[float | None]]:
    """Average each method's selective-accuracy curve over the splits that produced it."""
    out: dict[str, list[float | None]] = {}
    for name in sorted({n for s in per_seed for n in s}):
        rows = np.array(
            [[np.nan if v is None else v for v in s[name]] for s in per_seed if name in s]
        )
        counts = (~np.isnan(rows)).sum(axis=0)
        sums = np.nansum(rows, axis=0)
        out[name] = [float(t / c) if c else None for t, c in zip(sums, counts, strict=True)]
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and (population) std over the seeds."""
    return float(np.mean(values)), float(np.std(values))


def mode_label(mode: str, ref_mode: str) -> str:
    """``letter`` when both models are scored alike, else ``letter, ref cloze``."""
    return mode if mode == ref_mode else f"{mode}, ref {ref_mode}"


def evaluate_pair(
    pair: str,
    spec: dict[str, Any],
    adapter: str | None,
    task: str,
    modes: tuple[str, str],
    args: Any,
) -> dict[str, Any] | None:
    """Every method on every split of one (pair, task, PoLM mode, reference mode), aggregated.

    None when ``--cached-only`` and the scores of either model are not in the cache.
    """
    mode, ref_mode = modes
    base = args.within_limit if pair == "within" and args.within_limit else args.limit

    def limit(m: str) -> int:
        return args.cloze_limit if m == "cloze" and args.cloze_limit else base

    kw: dict[str, Any] = {"normalization": NORMALIZATION, "compute": not args.cached_only}
    polm = cached_scores(spec["polm"], task, mode, limit(mode), adapter=adapter, **kw)
    plm = cached_scores(spec["plm"], task, ref_mode, limit(ref_mode), **kw)
    if polm is None or plm is None:
        return None
    # questions both were scored on, in one order (the smaller subset is a prefix of the larger)
    common = set(plm.ids.tolist())
    polm = polm.by_ids([i for i in polm.ids.tolist() if i in common])
    plm = plm.by_ids(polm.ids.tolist())
    cape = None
    if pair == "cross" and mode == ref_mode == "letter" and not args.no_cape:
        cape = cached_scores(spec["polm"], task, mode, limit(mode), permutations="cyclic", **kw)
    per_seed = [run_split(polm, plm, cape, seed) for seed in range(args.seeds)]
    row: dict[str, Any] = {
        "pair": pair,
        "task": task,
        "mode": mode_label(mode, ref_mode),
        "n": len(polm),
    }
    row["methods"] = {}
    for method in METHODS:
        runs = [m[method] for m, _, _ in per_seed if method in m]
        if runs:
            row["methods"][method] = {key: mean_std([r[key] for r in runs]) for key in runs[0]}
            row["methods"][method]["splits"] = len(runs)
    row["fits"] = [f for _, f, _ in per_seed]
    row["tau"] = {
        name: mean_std([f[name]["tau"] for _, f, _ in per_seed if f.get(name, {}).get("tau")])
        for name in ("TS", "DACA", "naive", "disagree")
        if any(f.get(name, {}).get("tau") for _, f, _ in per_seed)
    }
    row["agreement"] = float(np.mean(polm.predictions() == plm.predictions()))
    row["curves"] = mean_curves([s for _, _, s in per_seed])
    return row


def main() -> None:
    """Score (cached), calibrate on every split, aggregate, write results."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--within-limit", type=int, help="subset size of pair 2 (default --limit)")
    ap.add_argument("--no-cape", action="store_true")
    ap.add_argument("--cloze-limit", type=int, help="subset size in cloze mode (default --limit)")
    ap.add_argument(
        "--cached-only", action="store_true", help="skip runs not in the cache instead of scoring"
    )
    ap.add_argument(
        "--within-adapter", type=Path, default=WITHIN_ADAPTER, help="pair 2's LoRA adapter folder"
    )
    args = ap.parse_args()
    adapters: dict[str, Path | None] = {"cross": None, "within": args.within_adapter}
    args.within_missing = (
        "within" in args.pairs and not (args.within_adapter / "adapter_config.json").is_file()
    )
    if args.within_missing:
        print(f"no adapter at {args.within_adapter}: skipping the within-family pair", flush=True)
        args.pairs.remove("within")
    record = adapter_record(args.within_adapter) if "within" in args.pairs else None

    results: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    missing: list[str] = []
    for pair in args.pairs:
        spec = PAIRS[pair]
        adapter = str(adapters[pair]) if adapters[pair] else None
        for task in args.tasks:
            for modes in [m for m in spec["modes"] if set(m) <= set(args.modes)]:
                label = f"{pair} {task}/{mode_label(*modes)}"
                row = evaluate_pair(pair, spec, adapter, task, modes, args)
                if row is None:
                    missing.append(label)
                    print(f"not cached: {label}", flush=True)
                    continue
                results.append(row)
                curves[f"{pair}/{task}/{row['mode']}"] = row.pop("curves")
                print(f"done {label}", flush=True)

    write_results(
        "posthoc",
        {
            "limit": args.limit,
            "within_limit": args.within_limit or args.limit,
            "seeds": args.seeds,
            "pairs": {
                k: {**v, "adapter": a.name if (a := adapters[k]) else None}
                for k, v in PAIRS.items()
                if k in args.pairs
            },
            "cloze_normalization": NORMALIZATION,
            "thresholds": list(THRESHOLDS),
            "cloze_limit": args.cloze_limit or args.limit,
            "not_cached": missing,
            "within_adapter": record,
            "results": results,
            "selective_accuracy": curves,
        },
        render(results, args, missing, record),
    )
    plot_selective(curves)


def adapter_record(adapter: Path) -> dict[str, Any] | None:
    """How the within-family PoLM was trained (its ``llmcal finetune`` record, with the
    training-accuracy log) and how it did on its own held-out questions; None without one."""
    path = adapter / "llmcal_finetune.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    keep = ("model", "train_task", "n_train", "steps", "train_seconds", "diagnostics", "evaluation")
    return {"name": adapter.name, "config": record["config"]} | {k: record.get(k) for k in keep}


def describe_adapter(r: dict[str, Any]) -> str:
    """One sentence on the within-family PoLM, from its fine-tuning record."""
    c, ev = r["config"], r["evaluation"] or {}
    text = (
        f"`{r['name']}`: {c['method'].upper()} on {r['train_task']}, {r['steps']} steps × "
        f"{c['batch_size']}, r = {c['lora_r']}, lr {c['learning_rate']:g}"
        + (", answer letters balanced" if c.get("balance_letters") else "")
    )
    accs = [d["train_acc"] for d in r.get("diagnostics") or [] if "train_acc" in d]
    if accs:
        text += f", training-batch accuracy {min(accs):.1%}–{max(accs):.1%} over the run"
    if "before" in ev and "after" in ev:
        b, a = ev["before"], ev["after"]
        text += (
            f"; on {int(a['n'])} held-out {r['train_task']} questions accuracy "
            f"{b['accuracy']:.1%} → {a['accuracy']:.1%}, ECE15 {b['ece15']:.1%} → {a['ece15']:.1%}"
        )
    return text


def fmt(ms: tuple[float, float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std``."""
    return f"{ms[0] * scale:.{digits}f} ± {ms[1] * scale:.{digits}f}"


def render(
    results: list[dict[str, Any]],
    args: argparse.Namespace,
    missing: list[str],
    record: dict[str, Any] | None,
) -> str:
    """The Markdown deliverable."""
    md = [
        "# Post-hoc calibration with and without labels: scaling, binning, CAPE, DACA",
        "",
        f"Seeded subsets of at most {args.limit} questions per task (OpenBookQA has 500; cloze "
        f"mode: {args.cloze_limit or args.limit}; pair 2: {args.within_limit or args.limit}), "
        "the smaller subsets being prefixes of the larger ones; template "
        f"daca1; cloze = summed log-likelihood. {args.seeds} seeded 30 % / 70 % calibration / test "
        "splits; mean ± std over splits. ECE in % (equal-width bins), Brier = multi-class "
        "Σ(p−y)², NLL in nats. Supervised methods (TS, VS, MS, histogram, isotonic) use the "
        "calibration labels; CAPE (cyclic option permutations, letter mode only) and DACA / naive / "
        "disagree use none. `reference` is the reference model's own calibration on the same test "
        "questions. MS uses ODIR regularisation (λ = 0.01 off-diagonal and bias).",
        "",
        "* **Pair 1, cross-family**: PoLM SmolLM2-135M-Instruct, reference Gemma-3-270M (base); "
        "both in letter mode, both in cloze mode, and the letter-mode PoLM against the cloze-mode "
        "reference (`letter, ref cloze`).",
        "* **Pair 2, within-family**: PoLM = Gemma-3-270M + a LoRA letter-format fine-tune "
        f"({describe_adapter(record) if record else '`' + args.within_adapter.name + '`'}; "
        "the benchmark tasks are not in its training data), reference = "
        "Gemma-3-270M itself. The PoLM is scored in letter mode (the format it was fine-tuned on), "
        "the reference once in letter mode and once in cloze mode (`letter, ref cloze`: a base "
        "model's natural format; DACA needs only the reference's distribution over the same "
        "options); no CAPE.",
        "",
    ]
    header = ["method", "acc %", "conf %", "ECE10 %", "ECE15 %", "Brier", "NLL"]
    titles = {"cross": "Pair 1 (SmolLM2 vs Gemma)", "within": "Pair 2 (Gemma+LoRA vs Gemma)"}
    for row in results:
        md += [
            f"## {titles[row['pair']]} · {row['task']} · {row['mode']} (n = {row['n']}, "
            f"models agree on {row['agreement']:.0%})",
            "",
        ]
        rows = []
        for method, m in row["methods"].items():
            rows.append(
                [method, fmt(m["accuracy"], 100, 1), fmt(m["confidence"], 100, 1), fmt(m["ece10"], 100),
                 fmt(m["ece15"], 100), fmt(m["brier"], 1, 3), fmt(m["nll"], 1, 3)]
            )  # fmt: skip
        md += [md_table(header, rows), ""]
        taus = ", ".join(f"{k} {fmt(v, 1, 3)}" for k, v in row["tau"].items())
        md += [f"Fitted τ: {taus}", ""]
    md += ["## Fitted temperatures (paper's prediction: τ_disagree > τ_naive > τ_DACA)", ""]
    trows = []
    for row in results:
        t = row["tau"]

        def get(k: str, t: dict[str, Any] = t) -> str:
            return fmt(t[k], 1, 3) if k in t else "n/a"

        order = (
            all(k in t for k in ("disagree", "naive", "DACA"))
            and t["disagree"][0] > t["naive"][0] > t["DACA"][0]
        )
        trows.append(
            [row["pair"], row["task"], row["mode"], get("TS"), get("DACA"), get("naive"),
             get("disagree"), "yes" if order else "no"]
        )  # fmt: skip
    md += [
        "A τ of 10000 is the fit's upper bound (`tau_range`): the labels prefer the uniform "
        "prediction (accuracy at chance), and the fit warns so.",
        "",
        md_table(
            [
                "pair",
                "task",
                "mode",
                "τ TS (labels)",
                "τ DACA",
                "τ naive",
                "τ disagree",
                "order holds",
            ],
            trows,
        ),
        "",
    ]
    md += ["## ECE10 % at a glance (mean over splits)", ""]
    glance = ["vanilla", "TS", "CAPE", "DACA", "naive", "disagree", "reference"]
    grows = [
        [r["pair"], r["task"], r["mode"]]
        + [f"{r['methods'][m]['ece10'][0] * 100:.2f}" if m in r["methods"] else "–" for m in glance]
        for r in results
    ]
    md += [md_table(["pair", "task", "mode", *glance], grows), ""]
    if missing:
        md += ["Not in this table (their scores were not computed): " + ", ".join(missing), ""]
    no_cape = [f"{r['task']}" for r in results if r["pair"] == "cross" and r["mode"] == "letter"
               and "CAPE" not in r["methods"]]  # fmt: skip
    if no_cape and not args.no_cape:
        md += ["CAPE scores not computed for: " + ", ".join(no_cape), ""]
    if args.within_missing:
        md += [
            f"Pair 2 (within-family) was not run: no adapter `{args.within_adapter.name}` "
            "(the command that makes it is in posthoc.py).",
            "",
        ]
    return "\n".join(md)


def plot_selective(curves: dict[str, Any]) -> None:
    """Selective accuracy vs confidence threshold, one panel per pair/task/mode."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    keys = list(curves)
    cols = min(5, len(keys))
    rows = -(-len(keys) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.1 * rows), dpi=110)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name, color in (("vanilla", "#0072B2"), ("DACA", "#009E73"), ("TS", "#CC79A7")):
            if name in curves[key]:
                ax.plot(THRESHOLDS, curves[key][name], marker="o", ms=3, label=name, color=color)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("confidence threshold", fontsize=8)
        ax.set_ylabel("selective accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "posthoc_selective.png")


if __name__ == "__main__":
    main()
