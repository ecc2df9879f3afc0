"""Metric speed: llmcal's ECE / MCE and bootstrap CIs vs torchmetrics (and netcal if installed).

Top-label ECE and MCE (15 equal-width bins) of n = 10⁵, 10⁶, 10⁷ seeded continuous confidences,
all libraries on the same arrays in this one process: best-of-``--repeats`` time, peak memory,
and agreement with llmcal. Peak memory = the peak RSS of a fresh child process during one ECE
call (``ru_maxrss`` after the call − RSS before it, inputs loaded from .npy, one warm-up call on
10³ samples first), so numpy and torch allocations are counted alike. A second table times
``bootstrap_ci`` (1,000 resamples of 10⁶ samples) against the plain resample-and-recompute loop.
Writes benchmarks/results/metrics_speed.{json,md}. Usage: python benchmarks/metrics_speed.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from common import md_table, write_results
from llmcal.metrics import bootstrap_ci, ece, mce
from llmcal.metrics.bootstrap import default_workers

N_BINS = 15
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Metric = Callable[[], float]


def make_data(n: int, seed: int = 0) -> tuple[FloatArray, BoolArray]:
    """Continuous top-label confidences in (0.25, 1) (K = 4) and over-confident correctness."""
    rng = np.random.default_rng(seed)
    conf = 0.25 + 0.75 * rng.beta(5.0, 2.0, size=n)
    correct = rng.random(n) < conf**1.4
    return conf, correct


def netcal_available() -> bool:
    """Whether netcal imports (it is optional)."""
    try:
        import netcal.metrics  # noqa: F401
    except Exception:
        return False
    return True


def implementations(conf: FloatArray, correct: BoolArray) -> dict[str, dict[str, Metric]]:
    """name -> {"ece", "mce"}: zero-argument calls on inputs converted outside the timing."""
    from torchmetrics.functional.classification import binary_calibration_error

    t64 = torch.from_numpy(conf)
    t32 = t64.float()
    target = torch.from_numpy(correct.astype(np.int64))

    def tm(preds: torch.Tensor, norm: str) -> Metric:
        return lambda: float(binary_calibration_error(preds, target, n_bins=N_BINS, norm=norm))

    impls: dict[str, dict[str, Metric]] = {
        "llmcal": {
            "ece": lambda: ece(conf, correct, n_bins=N_BINS),
            "mce": lambda: mce(conf, correct, n_bins=N_BINS),
        },
        "torchmetrics float64": {"ece": tm(t64, "l1"), "mce": tm(t64, "max")},
        "torchmetrics float32": {"ece": tm(t32, "l1"), "mce": tm(t32, "max")},
    }
    if netcal_available():
        from netcal.metrics import ECE, MCE

        # netcal's binary convention: 1-D input = P(class 1) and labels; our (conf, correct)
        # pairs are exactly that for a top-label ECE
        labels = correct.astype(np.int64)
        impls["netcal"] = {
            "ece": lambda: float(ECE(bins=N_BINS).measure(conf, labels)),
            "mce": lambda: float(MCE(bins=N_BINS).measure(conf, labels)),
        }
    return impls


def best_time(fn: Metric, repeats: int) -> tuple[float, float]:
    """Best wall time of ``repeats`` calls and the value."""
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def rss_bytes() -> int:
    """Current resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child_peak(name: str, data: str) -> None:
    """(In a child process) print the peak extra RSS of one ECE call of ``name`` as JSON."""
    torch.set_num_threads(1)
    conf, correct = np.load(Path(data) / "conf.npy"), np.load(Path(data) / "correct.npy")
    small = make_data(1_000, seed=1)
    implementations(*small)[name]["ece"]()  # warm-up: lazy imports and one-time allocations
    fn = implementations(conf, correct)[name]["ece"]
    before = rss_bytes()
    high_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_extra": peak - before, "high_water_before": high_before - before}))


def peak_memory(name: str, data: Path) -> float:
    """Peak extra MiB of one ECE call, measured in a fresh process."""
    # -c with the benchmarks folder last on sys.path: nothing there can shadow a stdlib module
    code = (
        f"import sys; sys.path.append({str(Path(__file__).parent)!r}); "
        f"import metrics_speed; metrics_speed.child_peak({name!r}, {str(data)!r})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    # the high-water mark must not already sit above the baseline, or the peak is hidden
    if rec["high_water_before"] > rec["peak_extra"]:
        return float("nan")
    return float(rec["peak_extra"]) / 2**20


# -- where the binning definitions differ ------------------------------------------------------------
def left_closed_ece(conf: FloatArray, correct: BoolArray, n_bins: int, norm: str) -> float:
    """Independent numpy reference of torchmetrics' binning: ``edges[b] <= c < edges[b+1]`` with
    ``edges = linspace(0, 1, B + 1)``, c == 1 in a bin of its own (B + 1 bins in all)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, conf, side="right") - 1
    y = correct.astype(np.float64)
    count = np.bincount(idx, minlength=n_bins + 1)
    gap = np.abs(np.bincount(idx, weights=y - conf, minlength=n_bins + 1))
    full = count > 0
    if norm == "l1":
        return float(gap[full].sum() / len(conf))
    return float((gap[full] / count[full]).max())


def edge_cases(seed: int = 0) -> list[dict[str, Any]]:
    """Data where the conventions differ: confidences on bin edges and saturated at 1.0."""
    from torchmetrics.functional.classification import binary_calibration_error

    rng = np.random.default_rng(seed)
    conf, correct = make_data(100_000, seed)
    rounded = np.round(conf, 2)  # 2-decimal API log-probs: many sit on the 10-bin edges
    saturated = np.where(rng.random(conf.shape[0]) < 0.05, 1.0, conf)
    out = []
    for label, c in (("rounded to 0.01", rounded), ("5 % saturated at 1.0", saturated)):
        for norm in ("l1", "max"):
            tm = float(
                binary_calibration_error(
                    torch.from_numpy(c),
                    torch.from_numpy(correct.astype(np.int64)),
                    n_bins=10,
                    norm=norm,
                )
            )
            out.append(
                {
                    "data": label,
                    "metric": "ECE" if norm == "l1" else "MCE",
                    "llmcal": ece(c, correct, 10, norm=norm),  # type: ignore[arg-type]
                    "torchmetrics": tm,
                    "left_closed_reference": left_closed_ece(c, correct, 10, norm),
                }
            )
    return out


# -- bootstrap ---------------------------------------------------------------------------------------
def bootstrap_rows(n: int, resamples: int, loop_resamples: int) -> list[dict[str, Any]]:
    """Time bootstrap_ci on 1 thread and on every core, and the plain loop (extrapolated)."""
    conf, correct = make_data(n, seed=2)
    cores = default_workers()
    rows = []
    for name, metric in (("ECE", ece), ("MCE", mce)):
        t_one, ci = best_time_ci(
            lambda m=metric: bootstrap_ci(m, conf, correct, n_resamples=resamples, workers=1)
        )
        t_all, ci_all = best_time_ci(
            lambda m=metric: bootstrap_ci(m, conf, correct, n_resamples=resamples, workers=cores)
        )
        assert ci_all == ci, "the thread count must not change the result"
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for _ in range(loop_resamples):
            idx = rng.integers(0, n, size=n)
            metric(conf[idx], correct[idx], n_bins=N_BINS)
        t_loop = (time.perf_counter() - start) / loop_resamples * resamples
        t_draws = whole_draws(conf, resamples, loop_resamples)
        rows.append(
            {
                "metric": name,
                "n": n,
                "resamples": resamples,
                "seconds_one_thread": t_one,
                "seconds_vectorised": t_all,
                "threads": cores,
                "ci": list(ci),
                "seconds_loop_extrapolated": t_loop,
                "loop_resamples_timed": loop_resamples,
                "speedup": t_loop / t_all,
                "seconds_whole_draws_one_thread_extrapolated": t_draws,
                "whole_draws_over_one_thread": t_draws / t_one,
            }
        )
        print(
            f"bootstrap {name}: {t_one:.2f} s on 1 thread, {t_all:.2f} s on {cores}, "
            f"loop ≈ {t_loop:.1f} s",
            flush=True,
        )
    return rows


def whole_draws(conf: FloatArray, resamples: int, timed: int) -> float:
    """Seconds (extrapolated to ``resamples``) numpy alone takes to draw n row indices over all
    rows per resample, gather the confidences and sum them, on one thread: the draw cost of a
    row-resampling bootstrap, before any metric is computed."""
    n = conf.shape[0]
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(timed):
        conf[rng.integers(0, n, size=n)].sum()
    return (time.perf_counter() - start) / timed * resamples


def best_time_ci(fn: Callable[[], tuple[float, float, float]]) -> tuple[float, tuple[float, ...]]:
    """Best of 2 runs of a bootstrap_ci call, and its result."""
    best, ci = float("inf"), (0.0, 0.0, 0.0)
    for _ in range(2):
        start = time.perf_counter()
        ci = fn()
        best = min(best, time.perf_counter() - start)
    return best, ci


def main() -> None:
    """Time every implementation at every size, then the bootstrap; write the tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6, 10**7])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bootstrap-n", type=int, default=10**6)
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)  # numpy runs these on one core; give torch the same
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            conf, correct = make_data(n)
            np.save(Path(tmp) / "conf.npy", conf)
            np.save(Path(tmp) / "correct.npy", correct)
            repeats = args.repeats if n < 10**7 else max(2, args.repeats // 2)
            impls = implementations(conf, correct)
            ref: dict[str, float] = {}
            for name, fns in impls.items():
                rec: dict[str, Any] = {"library": name, "n": n}
                for metric, fn in fns.items():
                    fn()  # warm-up
                    rec[f"{metric}_seconds"], rec[metric] = best_time(fn, repeats)
                    ref.setdefault(metric, rec[metric])
                    rec[f"{metric}_abs_diff"] = abs(rec[metric] - ref[metric])
                rec["peak_mib"] = peak_memory(name, Path(tmp))
                runs.append(rec)
                print(
                    f"n={n:>8} {name:22s} ECE {rec['ece_seconds'] * 1e3:8.1f} ms  "
                    f"MCE {rec['mce_seconds'] * 1e3:8.1f} ms  peak {rec['peak_mib']:7.1f} MiB  "
                    f"|ΔECE| {rec['ece_abs_diff']:.1e}",
                    flush=True,
                )
    for rec in runs:
        base = next(r for r in runs if r["n"] == rec["n"] and r["library"] == "llmcal")
        rec["ece_time_ratio"] = rec["ece_seconds"] / base["ece_seconds"]
        rec["mce_time_ratio"] = rec["mce_seconds"] / base["mce_seconds"]
    edges = edge_cases()
    boot = bootstrap_rows(args.bootstrap_n, args.resamples, loop_resamples=10)
    write_results(
        "metrics_speed",
        {"n_bins": N_BINS, "runs": runs, "edge_cases": edges, "bootstrap": boot,
         "netcal": netcal_available()},
        render(runs, edges, boot, args.repeats),
    )  # fmt: skip
    for rec in runs:
        if rec["library"] != "llmcal":
            print(
                f"ratio n={rec['n']} {rec['library']} / llmcal: ECE {rec['ece_time_ratio']:.1f}×, "
                f"MCE {rec['mce_time_ratio']:.1f}×"
            )


def render(
    runs: list[dict[str, Any]], edges: list[dict[str, Any]], boot: list[dict[str, Any]], rep: int
) -> str:
    """The Markdown report."""
    md = "# Metric speed: llmcal vs torchmetrics" + (
        " and netcal\n\n" if any(r["library"] == "netcal" for r in runs) else "\n\n"
    )
    md += (
        f"Top-label ECE / MCE, {N_BINS} equal-width bins, continuous seeded confidences in "
        "(0.25, 1) (no value on a bin edge or at 1.0). llmcal takes float64 numpy + bool; "
        "torchmetrics `binary_calibration_error` (validate_args on, as llmcal validates too) takes "
        "tensors made outside the timing, float64 or float32 preds; everything on 1 thread. "
        f"Time: best of {rep} (of {max(2, rep // 2)} at 10⁷), same process and inputs. Peak: "
        "extra peak RSS of one ECE call in a fresh process (`ru_maxrss` − RSS before the call). "
        "|Δ|: absolute difference from llmcal. ×: time / llmcal's time. netcal 1.4.0: "
        "`ECE(bins=15).measure(conf, correct)` (1-D input + 0/1 labels = its binary convention, "
        "i.e. top-label here); it pulls in tensorboard, gpytorch, pyro and scikit-learn (torch "
        "unchanged), so it was installed beside the shared venv (`pip install --target`, on "
        "PYTHONPATH), not into it. torchmetrics with float32 preds sums each bin in float32: "
        "at 10⁷ samples its ECE is off by ~1e-3.\n\n"
    )
    rows = [
        [f"{r['n']:.0e}".replace("e+0", "e"), r["library"], f"{r['ece_seconds'] * 1e3:.1f}",
         f"{r['mce_seconds'] * 1e3:.1f}", f"{r['peak_mib']:.0f}", f"{r['ece_abs_diff']:.1e}",
         f"{r['mce_abs_diff']:.1e}",
         "1" if r["library"] == "llmcal" else f"**{r['ece_time_ratio']:.1f}×**",
         "1" if r["library"] == "llmcal" else f"{r['mce_time_ratio']:.1f}×"]
        for r in runs
    ]  # fmt: skip
    md += md_table(
        ["n", "library", "ECE ms", "MCE ms", "peak MiB", "|ΔECE|", "|ΔMCE|", "× ECE", "× MCE"],
        rows,
    )
    md += "\n\n## Where the binning definitions differ (10 bins, 10⁵ samples)\n\n"
    md += (
        "llmcal: `edges[b] < c <= edges[b+1]` (closed on the right, 0 in the first bin, 1.0 in "
        "the last). torchmetrics: `torch.bucketize(..., right=True) - 1` on `linspace(0, 1, B+1)`, "
        "i.e. closed on the left, and c = 1.0 gets a bin of its own. The last column re-implements "
        "the torchmetrics rule in numpy, independently, and matches it.\n\n"
    )
    md += md_table(
        ["data", "metric", "llmcal", "torchmetrics", "numpy left-closed reference"],
        [[e["data"], e["metric"], f"{e['llmcal']:.10f}", f"{e['torchmetrics']:.10f}",
          f"{e['left_closed_reference']:.10f}"] for e in edges],
    )  # fmt: skip
    md += "\n\n## Bootstrap confidence intervals\n\n"
    md += (
        "`bootstrap_ci(metric, conf, correct, n_resamples=R)` (15 equal-width bins, percentile "
        "95 % interval, exact in distribution; best of 2) on one thread and on every core "
        "(`workers`; chunks of resamples have their own spawned generators, so both give the "
        "identical interval, asserted), vs the plain loop that draws R index vectors and "
        "recomputes the metric (timed over 10 resamples, × R/10; speedup vs all cores). The "
        "kernel's floor is the n × R = 10⁹ per-row draws inside the (bin, correct) cells. "
        "`whole-row draws s` is numpy alone drawing n indices over all rows per resample, "
        "gathering the confidences and summing them, on one thread (timed over 10 resamples, "
        "× R/10): the draw cost of resampling rows, which the cell-local draws undercut because "
        "each cell's values stay in cache.\n\n"
    )
    md += md_table(
        ["metric", "n", "resamples", "1 thread s", "whole-row draws s", "draws / 1 thread",
         "all cores s", "cores", "loop s (extrap.)", "speedup", "95 % CI"],
        [[b["metric"], f"{b['n']:.0e}".replace("e+0", "e"), b["resamples"],
          f"{b['seconds_one_thread']:.2f}",
          f"{b['seconds_whole_draws_one_thread_extrapolated']:.2f}",
          f"{b['whole_draws_over_one_thread']:.1f}×", f"{b['seconds_vectorised']:.2f}", b["threads"],
          f"{b['seconds_loop_extrapolated']:.1f}", f"{b['speedup']:.1f}×",
          f"[{b['ci'][1]:.5f}, {b['ci'][2]:.5f}]"] for b in boot],
    )  # fmt: skip
    return md


if __name__ == "__main__":
    main()
