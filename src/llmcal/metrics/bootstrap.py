"""Seeded, vectorised nonparametric bootstrap confidence intervals for any metric.

A resample draws n rows uniformly with replacement. ``bootstrap_ci`` returns the metric on the
data and the *percentile* interval: the ``alpha/2`` and ``1 - alpha/2`` quantiles (numpy's
default linear interpolation) of the metric over the resamples. Resamples on which the metric is
NaN (e.g. AUROC when a resample holds only one class) are dropped. The percentile interval of a
biased statistic such as ECE (biased upwards) is shifted with it and need not contain the
estimate when the calibration error is near 0.

The llmcal metrics are resampled without a Python loop over resamples, chunk by chunk so memory
stays bounded, in ways that are exact in distribution:

* ECE / MCE / debiased L2 with equal-width bins: per resample the counts of the (bin, correct)
  cells are one multinomial draw, and only the within-cell confidence sums need per-row draws;
* the same with equal-mass bins: resample counts are used as frequency weights (bins are
  recomputed on each resample, ties kept whole);
* means of per-row scores (accuracy, Brier, NLL): a multinomial over the distinct values where
  there are few, otherwise gathered draws.

Any other callable is evaluated once per resample on the resampled arrays.

Resamples are drawn in chunks of about ``CHUNK_ELEMENTS`` row draws; chunk ``i`` has its own
generator, ``SeedSequence(seed).spawn(n_chunks)[i]``, so the built-in kernels run chunks on
``workers`` threads (numpy releases the GIL while drawing and summing) and the result is a
deterministic function of ``seed``, the data and ``n_resamples`` whatever the thread count.
Different metrics draw their resamples differently, so equal seeds do not give row-identical
resamples across metrics.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from llmcal.errors import ConfigError, DataError
from llmcal.metrics import calibration as cal
from llmcal.metrics import scoring
from llmcal.metrics._validate import (
    FloatArray,
    as_labels,
    as_probs,
    check_binning,
    check_n_bins,
    check_norm,
    top_label,
)

__all__ = ["bootstrap_ci", "bootstrap_distribution"]

#: Draws held in memory at once (rows × resamples per chunk).
CHUNK_ELEMENTS = 1 << 22

#: One chunk of resamples: how many, and the generator that draws them.
Chunk = tuple[int, np.random.Generator]
Kernel = Callable[[Callable[..., float], dict[str, Any], list[Chunk], int], FloatArray]
T = TypeVar("T")


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: npt.ArrayLike,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
    workers: int | None = None,
    **metric_kwargs: Any,
) -> tuple[float, float, float]:
    """``(estimate, low, high)``: the metric and its percentile bootstrap interval.

    ``arrays`` are the per-row inputs of ``metric`` (resampled together, along their first
    axis); metric options go in ``metric_kwargs`` (or a ``functools.partial``). ``workers``
    threads draw the resamples of built-in metrics (default: the usable CPUs); the result does
    not depend on it.
    """
    if not (isinstance(alpha, float | int) and 0.0 < alpha < 1.0):
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    _check_request(metric, n_resamples, metric_kwargs)
    estimate = float(metric(*arrays, **metric_kwargs))
    stats = bootstrap_distribution(
        metric, *arrays, n_resamples=n_resamples, seed=seed, workers=workers, **metric_kwargs
    )
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return estimate, math.nan, math.nan
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return estimate, float(low), float(high)


def bootstrap_distribution(
    metric: Callable[..., float],
    *arrays: npt.ArrayLike,
    n_resamples: int = 1000,
    seed: int | None = 0,
    workers: int | None = None,
    **metric_kwargs: Any,
) -> FloatArray:
    """The metric on ``n_resamples`` bootstrap resamples of the rows (seeded; see the module)."""
    n_resamples = _check_request(metric, n_resamples, metric_kwargs)
    n_workers = _check_workers(workers)
    if not arrays:
        raise ConfigError("bootstrap_ci needs the metric's per-row arrays")
    data = [np.asarray(a) for a in arrays]
    if any(a.ndim == 0 for a in data):
        raise ConfigError(
            "every positional argument after the metric must be a per-row array; "
            "pass metric options as keywords (e.g. n_bins=10)"
        )
    n = data[0].shape[0]
    if n == 0:
        raise DataError("cannot bootstrap an empty data set")
    if any(a.shape[0] != n for a in data):
        raise DataError(f"arrays have different lengths {[a.shape[0] for a in data]}")
    func, kwargs = _unwrap(metric, metric_kwargs)
    plan = chunk_plan(n, n_resamples, seed)
    kernel = _KERNELS.get(func)
    if kernel is not None:
        bound = inspect.signature(func).bind(*data, **kwargs)
        bound.apply_defaults()
        return kernel(func, dict(bound.arguments), plan, n_workers)
    return _generic(func, data, kwargs, plan)


def chunk_plan(n: int, n_resamples: int, seed: int | None) -> list[Chunk]:
    """Chunks of resamples of ``n`` rows, each with its own generator spawned from ``seed``."""
    sizes = list(_chunks(n, n_resamples))
    children = np.random.SeedSequence(seed).spawn(len(sizes))
    return [(r, np.random.default_rng(c)) for r, c in zip(sizes, children, strict=True)]


def map_chunks(
    fn: Callable[[int, np.random.Generator], T], plan: list[Chunk], workers: int
) -> list[T]:
    """``fn(size, rng)`` for every chunk, in plan order, on up to ``workers`` threads."""
    if workers <= 1 or len(plan) <= 1:
        return [fn(r, rng) for r, rng in plan]
    with ThreadPoolExecutor(min(workers, len(plan))) as pool:
        return list(pool.map(lambda chunk: fn(*chunk), plan))


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_workers(workers: Any) -> int:
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer or None, got {workers!r}")
    return workers


def check_resamples(n_resamples: Any) -> int:
    """``n_resamples`` as a positive int, or a ConfigError."""
    try:
        count = operator.index(n_resamples)
    except TypeError:
        count = 0
    if isinstance(n_resamples, bool) or count < 1:
        raise ConfigError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    return count


def _check_request(metric: Callable[..., float], n_resamples: Any, kwargs: dict[str, Any]) -> int:
    count = check_resamples(n_resamples)
    if "weights" in _unwrap(metric, kwargs)[1]:
        raise ConfigError("bootstrap_ci resamples rows itself; do not pass weights=")
    return count


def _unwrap(
    metric: Callable[..., float], kwargs: dict[str, Any]
) -> tuple[Callable[..., float], dict[str, Any]]:
    if isinstance(metric, functools.partial) and not metric.args:
        return metric.func, {**metric.keywords, **kwargs}
    return metric, kwargs


def _chunks(n: int, n_resamples: int) -> Iterator[int]:
    """Sizes of consecutive resample chunks with about CHUNK_ELEMENTS draws each."""
    per = max(1, CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, per):
        yield min(per, n_resamples - start)


def _generic(
    func: Callable[..., float],
    data: list[npt.NDArray[Any]],
    kwargs: dict[str, Any],
    plan: list[Chunk],
) -> FloatArray:
    n = data[0].shape[0]
    out: list[float] = []
    for r, rng in plan:
        idx = rng.integers(0, n, size=(r, n))
        # an arbitrary callable has no batched form (nor known thread safety): a plain loop
        out.extend(float(func(*(a[row] for a in data), **kwargs)) for row in idx)
    return np.asarray(out, dtype=np.float64)


# -- binned calibration errors ---------------------------------------------------------------------
Sums = tuple[FloatArray, FloatArray, FloatArray]


def _width_bin_sums(
    conf: FloatArray, corr: FloatArray, n_bins: int
) -> Callable[[int, np.random.Generator], Sums]:
    """A chunk function: resampled per-bin (count, Σ correct, Σ (correct − conf)), each r × B."""
    n = conf.shape[0]
    cell = 2 * cal.width_bin_index(conf, n_bins) + corr.astype(np.int64)
    order = np.argsort(cell, kind="stable")
    by_cell = conf[order]
    size = np.bincount(cell, minlength=2 * n_bins)
    start = np.concatenate(([0], np.cumsum(size)[:-1]))
    p = size / n
    cells = [by_cell[start[j] : start[j] + size[j]] for j in range(2 * n_bins)]
    # a cell with few distinct confidences (saturated 1.0s, rounded API log-probs) resamples
    # its value counts in one multinomial, ~8x cheaper per value than drawing every row
    few = {}
    for j in np.flatnonzero(size):
        values, freq = np.unique(cells[j], return_counts=True)
        if values.shape[0] * 8 <= size[j]:
            few[j] = (values, freq / size[j])

    def chunk(r: int, rng: np.random.Generator) -> Sums:
        counts = rng.multinomial(n, p, size=r)
        conf_sums = np.zeros((r, 2 * n_bins))
        for j in np.flatnonzero(size):
            nj = counts[:, j]
            if j in few:
                values, freq = few[j]
                conf_sums[:, j] = rng.multinomial(nj, freq) @ values
                continue
            took = nj > 0
            total = int(nj.sum())
            if total == 0:
                continue
            drawn = cells[j][rng.integers(0, size[j], size=total)]
            offsets = np.concatenate(([0], np.cumsum(nj[took])[:-1]))
            conf_sums[took, j] = np.add.reduceat(drawn, offsets)
        count_b = (counts[:, 0::2] + counts[:, 1::2]).astype(np.float64)
        hits_b = counts[:, 1::2].astype(np.float64)
        return count_b, hits_b, hits_b - (conf_sums[:, 0::2] + conf_sums[:, 1::2])

    return chunk


def mass_bin_sums(
    conf: FloatArray, corr: FloatArray, n_bins: int, counts: npt.NDArray[np.int64]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Equal-mass per-bin sums for r rows of resample counts (r × n, each row summing to n).

    ``conf`` must be sorted ascending; rows of ``counts`` are frequency weights in that order.
    """
    r = counts.shape[0]
    start = cal.tie_group_starts(conf)
    before = (np.cumsum(counts, axis=1) - counts)[:, start]
    total = counts.sum(axis=1, keepdims=True)
    bins = np.minimum(before * n_bins // total, n_bins - 1)
    flat = (bins + n_bins * np.arange(r)[:, None]).ravel()
    w = counts.astype(np.float64)

    def per_bin(values: FloatArray) -> FloatArray:
        sums = np.bincount(flat, weights=values.ravel(), minlength=r * n_bins)
        return np.asarray(sums, dtype=np.float64).reshape(r, n_bins)

    return per_bin(w), per_bin(w * corr), per_bin(w * (corr - conf))


def _mass_bin_sums(
    conf: FloatArray, corr: FloatArray, n_bins: int
) -> Callable[[int, np.random.Generator], Sums]:
    n = conf.shape[0]
    order = np.argsort(conf)
    conf_s, corr_s = conf[order], corr[order]

    # rows are exchangeable under resampling, so counts are drawn directly in sorted order
    def chunk(r: int, rng: np.random.Generator) -> Sums:
        draws = rng.integers(0, n, size=(r, n)) + n * np.arange(r)[:, None]
        counts = np.bincount(draws.ravel(), minlength=r * n).reshape(r, n)
        return mass_bin_sums(conf_s, corr_s, n_bins, counts)

    return chunk


def _reduce_ce(
    func: Callable[..., float],
    args: dict[str, Any],
    weight: FloatArray,
    hits: FloatArray,
    resid: FloatArray,
    total: float,
) -> FloatArray:
    full = weight > 0
    if func is cal.debiased_l2_ece:
        ok = weight >= 2.0
        nb = np.where(ok, weight, 2.0)
        acc = hits / nb
        term = np.where(ok, nb / total * ((resid / nb) ** 2 - acc * (1.0 - acc) / (nb - 1.0)), 0.0)
        sq = term.sum(axis=1)
        return np.asarray(sq if args["squared"] else np.sqrt(np.maximum(sq, 0.0)))
    norm = "max" if func is cal.mce else args["norm"]
    if norm == "l1":
        return np.asarray(np.abs(resid).sum(axis=1) / total)
    safe = np.where(full, weight, 1.0)
    if norm == "l2":
        return np.asarray(np.sqrt(np.where(full, resid**2 / safe, 0.0).sum(axis=1) / total))
    return np.asarray(np.where(full, np.abs(resid) / safe, 0.0).max(axis=1))


def _binned_kernel(
    func: Callable[..., float], args: dict[str, Any], plan: list[Chunk], workers: int
) -> FloatArray:
    conf, corr, _ = top_label(args["confidence"], args["correct"])
    n_bins = check_n_bins(args["n_bins"])
    check_binning(args["binning"])
    check_norm(args.get("norm", "l1"))
    sums = (_width_bin_sums if args["binning"] == "width" else _mass_bin_sums)(conf, corr, n_bins)
    n = float(conf.shape[0])

    def chunk(r: int, rng: np.random.Generator) -> FloatArray:
        return _reduce_ce(func, args, *sums(r, rng), n)

    return np.concatenate(map_chunks(chunk, plan, workers))


# -- means of per-row scores -----------------------------------------------------------------------
def resampled_means(values: FloatArray, rng: np.random.Generator, n_resamples: int) -> FloatArray:
    """Means of ``values`` over bootstrap resamples (one generator, memory-bounded chunks)."""
    fn = _means(values)
    return np.concatenate([fn(r, rng) for r in _chunks(values.shape[0], n_resamples)])


def _means(values: FloatArray) -> Callable[[int, np.random.Generator], FloatArray]:
    """A chunk function: means of ``values`` over r resamples."""
    n = values.shape[0]
    distinct, inverse = np.unique(values, return_inverse=True)
    if distinct.shape[0] <= 256:
        # few distinct values (accuracy, ties): resample the value counts in one multinomial
        freq = np.bincount(inverse.ravel(), minlength=distinct.shape[0]) / n

        def few(r: int, rng: np.random.Generator) -> FloatArray:
            counts = rng.multinomial(n, freq, size=r)
            # where() keeps a value that was not drawn out of the sum even when it is inf (NLL)
            drawn = np.where(counts > 0, counts * distinct, 0.0)
            return np.asarray(drawn.sum(axis=1) / n, dtype=np.float64)

        return few

    def gathered(r: int, rng: np.random.Generator) -> FloatArray:
        return np.asarray(values[rng.integers(0, n, size=(r, n))].mean(axis=1), dtype=np.float64)

    return gathered


def _mean_kernel(per_row: Callable[[dict[str, Any]], FloatArray]) -> Kernel:
    def kernel(
        func: Callable[..., float], args: dict[str, Any], plan: list[Chunk], workers: int
    ) -> FloatArray:
        return np.concatenate(map_chunks(_means(per_row(args)), plan, workers))

    return kernel


def _accuracy_rows(a: dict[str, Any]) -> FloatArray:
    p = as_probs(a["probs"])
    return (np.argmax(p, axis=1) == as_labels(a["labels"], *p.shape)).astype(np.float64)


def _top_brier_rows(a: dict[str, Any]) -> FloatArray:
    conf, corr, _ = top_label(a["confidence"], a["correct"])
    return np.asarray(np.square(conf - corr), dtype=np.float64)


_KERNELS: dict[Callable[..., float], Kernel] = {
    cal.ece: _binned_kernel,
    cal.mce: _binned_kernel,
    cal.debiased_l2_ece: _binned_kernel,
    scoring.accuracy: _mean_kernel(_accuracy_rows),
    scoring.brier: _mean_kernel(lambda a: scoring.brier_per_sample(a["probs"], a["labels"])),
    scoring.nll: _mean_kernel(
        lambda a: scoring.nll_per_sample(a["values"], a["labels"], a["kind"])
    ),
    scoring.top_label_brier: _mean_kernel(_top_brier_rows),
}
