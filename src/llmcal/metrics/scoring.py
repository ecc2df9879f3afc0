"""Accuracy and proper scoring rules (Brier, NLL) of option probabilities.

``probs`` is n × K; rows with fewer options carry probability 0 in their padding columns, which
adds nothing to any score here. ``labels`` are option indices in ``0..K-1``.

Brier score: ``brier = mean_i sum_k (p_ik - 1[y_i = k])^2``, the multi-class definition of Brier
(1950), in [0, 2]. For K = 2 it is **twice** scikit-learn's binary ``brier_score_loss``
(``mean (p_1 - y)^2``), because both columns contribute the same squared error; it equals
``brier_score_loss(y, probs, labels=range(K))`` for K > 2 (scikit-learn >= 1.7, which scales
only the binary case by one half) and ``K *`` the mean squared error against one-hot labels.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

from llmcal.errors import ConfigError, DataError
from llmcal.metrics._validate import (
    FloatArray,
    as_labels,
    as_probs,
    as_weights,
    first_bad,
    top_label,
)
from llmcal.scores import log_softmax

__all__ = [
    "accuracy",
    "brier",
    "brier_per_sample",
    "nll",
    "nll_per_sample",
    "top_label_brier",
]

NLLInput = Literal["probs", "log_probs", "logits"]


def _mean(values: FloatArray, weights: npt.ArrayLike | None) -> float:
    w = as_weights(weights, values.shape[0])
    if w is None:
        return float(np.mean(values))
    return float(np.sum(w * values) / w.sum())


def accuracy(
    probs: npt.ArrayLike, labels: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> float:
    """Share of rows whose most probable option (first on ties) is the label."""
    p = as_probs(probs)
    y = as_labels(labels, *p.shape)
    return _mean((np.argmax(p, axis=1) == y).astype(np.float64), weights)


def brier_per_sample(probs: npt.ArrayLike, labels: npt.ArrayLike) -> FloatArray:
    """Per-row multi-class Brier score ``sum_k (p_k - 1[y = k])^2``."""
    p = as_probs(probs)
    y = as_labels(labels, *p.shape)
    # subtract the one-hot in place rather than expanding the square: for p_y near 1 the
    # expansion sum p^2 + 1 - 2 p_y cancels catastrophically
    d = p.copy()
    d[np.arange(p.shape[0]), y] -= 1.0
    return np.asarray(np.square(d).sum(axis=1), dtype=np.float64)


def brier(
    probs: npt.ArrayLike, labels: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> float:
    """Multi-class Brier score: mean over rows of ``sum_k (p_k - 1[y = k])^2`` (in [0, 2])."""
    return _mean(brier_per_sample(probs, labels), weights)


def top_label_brier(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> float:
    """Brier score of the top-label confidence for correctness: mean ``(conf - correct)^2``."""
    conf, corr, w = top_label(confidence, correct, weights)
    return _mean(np.square(conf - corr), w)


def _log_probs(values: npt.ArrayLike, kind: str) -> FloatArray:
    if kind == "probs":
        p = as_probs(values)
        with np.errstate(divide="ignore"):
            return np.log(p)
    if kind not in ("log_probs", "logits"):
        raise ConfigError(f"kind must be 'probs', 'log_probs' or 'logits', got {kind!r}")
    z = np.asarray(values, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise DataError(f"{kind} must be a non-empty 2-D array (n × K), got shape {z.shape}")
    bad = (np.isnan(z) | np.isposinf(z)).any(axis=1)
    if bad.any():
        i = first_bad(bad)
        raise DataError(f"{kind} contain NaN or +inf (first in row {i}: {z[i].tolist()})")
    if kind == "logits":
        return log_softmax(z)
    lse = np.log(np.exp(z).sum(axis=1))
    off = np.abs(lse) > 1e-6
    if off.any():
        i = first_bad(off)
        raise DataError(
            f"log_probs row {i} is not normalised (logsumexp = {lse[i]!r}); pass kind='logits' "
            "to normalise with a log-softmax"
        )
    return z


def nll_per_sample(
    values: npt.ArrayLike, labels: npt.ArrayLike, kind: NLLInput = "probs"
) -> FloatArray:
    """Per-row negative log-likelihood ``-log p_y`` (inf where p_y = 0)."""
    logp = _log_probs(values, kind)
    y = as_labels(labels, *logp.shape)
    return np.asarray(-logp[np.arange(logp.shape[0]), y], dtype=np.float64)


def nll(
    values: npt.ArrayLike,
    labels: npt.ArrayLike,
    kind: NLLInput = "probs",
    weights: npt.ArrayLike | None = None,
) -> float:
    """Mean negative log-likelihood of the labels (natural log).

    ``kind`` says what ``values`` holds: ``"probs"`` (log taken here), ``"log_probs"`` (used as
    given, so no precision is lost for confident rows; must be normalised) or ``"logits"``
    (log-softmax first; ``-inf`` padding allowed). A label with probability 0 gives ``inf``.
    """
    return _mean(nll_per_sample(values, labels, kind), weights)
