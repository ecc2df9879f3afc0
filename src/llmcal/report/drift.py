"""Calibration drift between two runs on the same questions: paired bootstrap of ΔECE.

The two runs are aligned by question id (``llmcal.scores.align``) and only the common questions
are used. ``ΔECE = ECE(to) − ECE(from)``, each ECE computed on the common questions.

**Paired bootstrap.** Replicate ``j`` draws n question indices uniformly with replacement —
row ``j`` of ``numpy.random.default_rng(seed).integers(0, n, size=(n_resamples, n))`` — and
applies the *same* indices to both runs, so the question-to-question variation both runs share
cancels in Δ*. The interval is the percentile interval of Δ* (``alpha/2`` and ``1 − alpha/2``
quantiles). The resamples are evaluated as frequency weights, all at once, which equals
computing :func:`llmcal.metrics.ece` on the resampled rows.

**p-value** (two-sided, for H0: ΔECE = 0): ``p = min(1, 2·min(P*(Δ* ≤ 0), P*(Δ* ≥ 0)))`` where
``P*`` is the share of replicates. It is 0 when no replicate reaches 0, i.e. below
``1 / n_resamples``; report it as such, not as an exact 0.

**Moves.** A question moved up (down) when its top-label confidence rose (fell) by more than
``tolerance``; the top label may be a different option in the two runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from llmcal.errors import ConfigError, DataError
from llmcal.metrics import calibration as cal
from llmcal.metrics._validate import FloatArray, check_binning, check_n_bins, top_label
from llmcal.metrics.bootstrap import CHUNK_ELEMENTS, check_resamples, mass_bin_sums
from llmcal.scores import Scores, align

__all__ = [
    "DEFAULT_TOLERANCE",
    "bootstrap_p_value",
    "calibration_drift",
    "confidence_moves",
    "paired_ece_bootstrap",
]

#: Confidence changes up to this size count as unchanged.
DEFAULT_TOLERANCE = 0.01


class _Run:
    """One run's validated top-label arrays, prepared for weighted binned sums."""

    def __init__(self, conf: FloatArray, corr: FloatArray, n_bins: int, binning: str) -> None:
        self.n, self.n_bins, self.binning = conf.shape[0], n_bins, binning
        if binning == "width":
            # one column per bin holding the row residuals y − c: counts @ this = per-bin sums
            self.resid = np.zeros((self.n, n_bins))
            self.resid[np.arange(self.n), cal.width_bin_index(conf, n_bins)] = corr - conf
        else:
            self.order = np.argsort(conf, kind="stable")
            self.conf_sorted, self.corr_sorted = conf[self.order], corr[self.order]

    def ece(self, counts: npt.NDArray[np.int64]) -> FloatArray:
        """L1 ECE for each row of resample counts (r × n frequency weights)."""
        if self.binning == "width":
            sums = counts.astype(np.float64) @ self.resid
        else:
            _, _, sums = mass_bin_sums(
                self.conf_sorted, self.corr_sorted, self.n_bins, counts[:, self.order]
            )
        return np.asarray(np.abs(sums).sum(axis=1) / self.n, dtype=np.float64)


def paired_ece_bootstrap(
    conf_from: npt.ArrayLike,
    correct_from: npt.ArrayLike,
    conf_to: npt.ArrayLike,
    correct_to: npt.ArrayLike,
    n_bins: int = 15,
    binning: cal.Binning = "width",
    n_resamples: int = 1000,
    seed: int | None = 0,
) -> tuple[FloatArray, FloatArray]:
    """ECE of two runs on the same bootstrap resamples of the rows: ``(ece_from*, ece_to*)``."""
    b = check_n_bins(n_bins)
    check_binning(binning)
    count = check_resamples(n_resamples)
    ca, ya, _ = top_label(conf_from, correct_from)
    cb, yb, _ = top_label(conf_to, correct_to)
    n = ca.shape[0]
    if cb.shape[0] != n:
        raise DataError(f"paired runs need the same rows, got {n} and {cb.shape[0]}")
    runs = (_Run(ca, ya, b, binning), _Run(cb, yb, b, binning))
    rng = np.random.default_rng(seed)
    out: tuple[list[FloatArray], list[FloatArray]] = ([], [])
    per_chunk = max(1, CHUNK_ELEMENTS // n)
    for start in range(0, count, per_chunk):
        r = min(per_chunk, count - start)
        idx = rng.integers(0, n, size=(r, n))
        flat = (idx + n * np.arange(r)[:, None]).ravel()
        counts = np.bincount(flat, minlength=r * n).reshape(r, n)
        for run, acc in zip(runs, out, strict=True):
            acc.append(run.ece(counts))
    return np.concatenate(out[0]), np.concatenate(out[1])


def bootstrap_p_value(deltas: npt.ArrayLike) -> float:
    """Two-sided bootstrap p-value of H0 Δ = 0: ``min(1, 2·min(P(Δ* ≤ 0), P(Δ* ≥ 0)))``."""
    d = np.asarray(deltas, dtype=np.float64).ravel()
    d = d[~np.isnan(d)]
    if d.size == 0:
        return math.nan
    below, above = float(np.mean(d <= 0.0)), float(np.mean(d >= 0.0))
    return min(1.0, 2.0 * min(below, above))


def confidence_moves(
    conf_from: npt.ArrayLike, conf_to: npt.ArrayLike, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, int]:
    """How many rows' confidence rose or fell by more than ``tolerance`` (and the rest)."""
    if not (isinstance(tolerance, float | int) and 0.0 <= tolerance < 1.0):
        raise ConfigError(f"tolerance must be in [0, 1), got {tolerance!r}")
    a = np.asarray(conf_from, dtype=np.float64)
    b = np.asarray(conf_to, dtype=np.float64)
    if a.shape != b.shape:
        raise DataError(f"paired confidences need the same shape, got {a.shape} and {b.shape}")
    step = b - a
    up, down = int((step > tolerance).sum()), int((step < -tolerance).sum())
    return {"moved_up": up, "moved_down": down, "unchanged": int(a.size - up - down)}


def calibration_drift(
    before: Scores,
    after: Scores,
    n_bins: int = 15,
    binning: cal.Binning = "width",
    n_resamples: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """ΔECE (after − before) with a paired bootstrap CI and p-value, and confidence moves.

    Both Scores need labels on the common questions; raises ``ScoresError`` when they share no
    question id or their labels disagree.
    """
    if not (isinstance(alpha, float | int) and 0.0 < alpha < 1.0):
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
    a, b = align(before, after, how="inner")
    a.require_labels("drift")
    b.require_labels("drift")
    ca, cb = a.confidences(), b.confidences()
    ya, yb = a.correct(), b.correct()
    ece_a = cal.ece(ca, ya, n_bins, binning)
    ece_b = cal.ece(cb, yb, n_bins, binning)
    star_a, star_b = paired_ece_bootstrap(ca, ya, cb, yb, n_bins, binning, n_resamples, seed)
    deltas = star_b - star_a
    low, high = np.quantile(deltas, [alpha / 2.0, 1.0 - alpha / 2.0])
    return {
        "n_common": len(a),
        "n_only_before": len(before) - len(a),
        "n_only_after": len(after) - len(a),
        "ece_before": ece_a,
        "ece_after": ece_b,
        "delta_ece": ece_b - ece_a,
        "delta_ece_ci": [float(low), float(high)],
        "p_value": bootstrap_p_value(deltas),
        "accuracy_before": float(ya.mean()),
        "accuracy_after": float(yb.mean()),
        "mean_confidence_before": float(ca.mean()),
        "mean_confidence_after": float(cb.mean()),
        **confidence_moves(ca, cb, tolerance),
        "tolerance": float(tolerance),
        "answer_changed": int((a.predictions() != b.predictions()).sum()),
        "became_right": int((~ya & yb).sum()),
        "became_wrong": int((ya & ~yb).sum()),
        "n_bins": check_n_bins(n_bins),
        "binning": binning,
        "n_resamples": int(n_resamples),
        "seed": seed,
        "alpha": float(alpha),
    }
