"""Ranking and selective prediction: does higher confidence mean more likely correct?

Ties in confidence are handled without favouring either class:

* ``auroc`` counts a tied (correct, wrong) pair as half a win (the Mann–Whitney statistic with
  mid-ranks, equal to scikit-learn's ``roc_auc_score``). When only one class is present (all
  correct or all wrong) AUROC is undefined and the function returns NaN (scikit-learn raises).
* ``aurc`` and ``selective_accuracy(coverage=...)`` rank by confidence, highest first; where a
  cut falls inside a group of tied confidences they use the *expected* count of errors over
  random orderings of the tie (a tie of m samples with e errors contributes e/m per selected
  sample). They are therefore independent of the order of the input.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from llmcal.errors import ConfigError
from llmcal.metrics._validate import FloatArray, top_label

__all__ = ["aurc", "auroc", "risk_coverage_curve", "selective_accuracy"]


def auroc(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> float:
    """AUROC of confidence as a score for correctness; NaN when only one class is present."""
    conf, corr, w = top_label(confidence, correct, weights)
    wt = np.ones_like(conf) if w is None else w
    pos_w, neg_w = wt * corr, wt * (1.0 - corr)
    p_total, n_total = float(pos_w.sum()), float(neg_w.sum())
    if p_total == 0.0 or n_total == 0.0:
        return math.nan
    order = np.argsort(conf)
    s = conf[order]
    gid = np.concatenate(([0], np.cumsum(s[1:] != s[:-1])))
    pos_g = np.bincount(gid, weights=pos_w[order])
    neg_g = np.bincount(gid, weights=neg_w[order])
    neg_below = np.cumsum(neg_g) - neg_g
    # twice the statistic: integer-valued for unit weights, so exact in float64 for n < ~9e7
    twice = float(np.sum(pos_g * (2.0 * neg_below + neg_g)))
    return twice / (2.0 * p_total * n_total)


def _ranked(conf: FloatArray, corr: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Highest confidence first: per tie group its confidence, size and correct count."""
    order = np.argsort(-conf)
    s = conf[order]
    gid = np.concatenate(([0], np.cumsum(s[1:] != s[:-1])))
    size = np.bincount(gid).astype(np.float64)
    hits = np.bincount(gid, weights=corr[order])
    first = np.concatenate(([0], np.flatnonzero(s[1:] != s[:-1]) + 1))
    return s[first], size, np.asarray(hits, dtype=np.float64)


def _expected_errors(conf: FloatArray, corr: FloatArray) -> FloatArray:
    """Expected errors among the k most confident samples, k = 1..n (ties split evenly)."""
    _, size, hits = _ranked(conf, corr)
    errs = size - hits
    before_n = np.cumsum(size) - size
    before_e = np.cumsum(errs) - errs
    g = np.repeat(np.arange(size.shape[0]), size.astype(np.int64))
    k = np.arange(1, conf.shape[0] + 1, dtype=np.float64)
    return np.asarray(before_e[g] + (k - before_n[g]) * errs[g] / size[g], dtype=np.float64)


def risk_coverage_curve(
    confidence: npt.ArrayLike, correct: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(coverage, risk, thresholds)``: keeping the samples with confidence >= threshold.

    One point per distinct confidence, highest threshold first, so coverage rises to 1; risk is
    the error rate among the kept samples.
    """
    conf, corr, _ = top_label(confidence, correct)
    thresholds, size, hits = _ranked(conf, corr)
    kept = np.cumsum(size)
    risk = np.cumsum(size - hits) / kept
    return kept / conf.shape[0], risk, thresholds


def aurc(confidence: npt.ArrayLike, correct: npt.ArrayLike) -> float:
    """Area under the risk–coverage curve: mean over k = 1..n of the error rate of the top k."""
    conf, corr, _ = top_label(confidence, correct)
    errors = _expected_errors(conf, corr)
    return float(np.mean(errors / np.arange(1, conf.shape[0] + 1)))


def selective_accuracy(
    confidence: npt.ArrayLike,
    correct: npt.ArrayLike,
    coverage: float | None = None,
    threshold: float | None = None,
) -> float:
    """Accuracy on the most confident ``coverage`` share, or on confidence >= ``threshold``.

    With ``coverage`` the top ``k = ceil(coverage * n)`` samples are kept (``coverage * n`` is
    first rounded to 9 decimals so that e.g. 0.7 * 10 keeps 7); a tie at the cut contributes its
    expected accuracy. With ``threshold`` every sample with confidence >= threshold is kept, and
    the result is NaN when none is.
    """
    if (coverage is None) == (threshold is None):
        raise ConfigError("give exactly one of coverage= or threshold=")
    conf, corr, _ = top_label(confidence, correct)
    n = conf.shape[0]
    if coverage is None:
        keep = conf >= float(threshold)  # type: ignore[arg-type]
        return float(corr[keep].mean()) if keep.any() else math.nan
    cov = float(coverage)
    if not 0.0 < cov <= 1.0:
        raise ConfigError(f"coverage must be in (0, 1], got {coverage!r}")
    k = max(1, math.ceil(round(cov * n, 9)))
    errors = _expected_errors(conf, corr)[k - 1]
    return float((k - errors) / k)
