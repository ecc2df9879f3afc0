"""Input checks shared by the metrics: arrays become float64 numpy arrays or a clear error."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import numpy.typing as npt

from llmcal.errors import ConfigError, DataError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

BINNINGS = ("width", "mass")
NORMS = ("l1", "l2", "max")


def first_bad(mask: npt.ArrayLike) -> int:
    """Index of the first True entry of a 1-D mask."""
    return int(np.flatnonzero(np.asarray(mask))[0])


def as_vector(values: npt.ArrayLike, name: str) -> FloatArray:
    """A non-empty 1-D float64 array without NaN."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be numeric, got {type(values).__name__} ({exc})") from exc
    if arr.ndim != 1:
        raise DataError(f"{name} must be 1-D (one value per sample), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"{name} is empty; the metric needs at least one sample")
    nan = np.isnan(arr)
    if nan.any():
        raise DataError(f"{name} contains NaN (first at index {first_bad(nan)})")
    return arr


def as_confidence(confidence: npt.ArrayLike, name: str = "confidence") -> FloatArray:
    """Confidences: 1-D, in [0, 1]."""
    raw = np.asarray(confidence)
    # fast path: two reductions, no temporaries (NaN fails both tests and falls through)
    if (
        raw.dtype == np.float64
        and raw.ndim == 1
        and raw.size
        and 0.0 <= raw.min() <= raw.max() <= 1.0
    ):
        return raw
    conf = as_vector(confidence, name)
    bad = (conf < 0.0) | (conf > 1.0)
    if bad.any():
        i = first_bad(bad)
        raise DataError(f"{name} must lie in [0, 1]; index {i} is {conf[i]!r}")
    return conf


def as_correct(correct: npt.ArrayLike, n: int, name: str = "correct") -> FloatArray:
    """Correctness indicators (bool or 0/1) of length ``n`` as float64 0.0/1.0."""
    raw = np.asarray(correct)
    if raw.dtype == np.bool_ and raw.shape == (n,) and n:
        return raw.astype(np.float64)  # every bool is valid
    arr = as_vector(correct, name)
    if arr.shape[0] != n:
        raise DataError(
            f"{name} has {arr.shape[0]} entries but confidence has {n}; they must match"
        )
    bad = (arr != 0.0) & (arr != 1.0)
    if bad.any():
        i = first_bad(bad)
        raise DataError(f"{name} must be boolean or 0/1; index {i} is {arr[i]!r}")
    return arr


def as_weights(weights: npt.ArrayLike | None, n: int) -> FloatArray | None:
    """Optional non-negative frequency weights of length ``n`` with a positive sum."""
    if weights is None:
        return None
    w = as_vector(weights, "weights")
    if w.shape[0] != n:
        raise DataError(f"weights has {w.shape[0]} entries but there are {n} samples")
    bad = ~np.isfinite(w) | (w < 0.0)
    if bad.any():
        i = first_bad(bad)
        raise DataError(f"weights must be finite and >= 0; index {i} is {w[i]!r}")
    if not w.sum() > 0.0:
        raise DataError("weights sum to 0; at least one sample needs a positive weight")
    return w


def top_label(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    """Validated ``(confidence, correct, weights)`` for the top-label metrics."""
    conf = as_confidence(confidence)
    corr = as_correct(correct, conf.shape[0])
    return conf, corr, as_weights(weights, conf.shape[0])


def as_probs(probs: npt.ArrayLike, name: str = "probs", atol: float = 1e-6) -> FloatArray:
    """An n × K probability matrix (rows sum to 1 within ``atol``; padding columns are 0)."""
    try:
        p = np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be numeric, got {type(probs).__name__} ({exc})") from exc
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise DataError(
            f"{name} must be a non-empty 2-D array (n samples × K options), got shape {p.shape}"
        )
    nan = np.isnan(p).any(axis=1)
    if nan.any():
        raise DataError(f"{name} contains NaN (first in row {first_bad(nan)})")
    bad = ((p < 0.0) | (p > 1.0)).any(axis=1)
    if bad.any():
        i = first_bad(bad)
        raise DataError(f"{name} must lie in [0, 1]; row {i} is {p[i].tolist()}")
    off = np.abs(p.sum(axis=1) - 1.0) > atol
    if off.any():
        i = first_bad(off)
        raise DataError(
            f"{name} rows must sum to 1; row {i} sums to {p[i].sum()!r} "
            "(pass logits through llmcal.scores.softmax first)"
        )
    return p


def as_labels(labels: npt.ArrayLike, n: int, k: int, name: str = "labels") -> IntArray:
    """Integer labels in ``0..k-1``, one per row."""
    raw = np.asarray(labels)
    if raw.ndim != 1:
        raise DataError(f"{name} must be 1-D, got shape {raw.shape}")
    if raw.shape[0] != n:
        raise DataError(f"{name} has {raw.shape[0]} entries but there are {n} rows of scores")
    if raw.dtype.kind == "b" or raw.dtype.kind not in "iuf":
        raise DataError(f"{name} must be integer class indices, got dtype {raw.dtype}")
    if raw.dtype.kind == "f":
        nonint = ~np.isfinite(raw) | (raw != np.round(raw))
        if nonint.any():
            i = first_bad(nonint)
            raise DataError(f"{name} must be integer class indices; index {i} is {raw[i]!r}")
    y = raw.astype(np.int64)
    if (y == -1).any():
        raise DataError(
            f"{name} contain -1 (unknown) at index {first_bad(y == -1)}; "
            "metrics need labelled rows (use scores.labelled_only())"
        )
    bad = (y < 0) | (y >= k)
    if bad.any():
        i = first_bad(bad)
        raise DataError(f"{name} must lie in 0..{k - 1}; index {i} is {int(y[i])}")
    return y


def check_n_bins(n_bins: Any) -> int:
    """A positive integer number of bins."""
    if isinstance(n_bins, bool):
        raise ConfigError(f"n_bins must be a positive integer, got {n_bins!r}")
    try:
        b = operator.index(n_bins)
    except TypeError:
        raise ConfigError(f"n_bins must be a positive integer, got {n_bins!r}") from None
    if b < 1:
        raise ConfigError(f"n_bins must be >= 1, got {b}")
    return b


def check_binning(binning: str) -> str:
    """One of :data:`BINNINGS`."""
    if binning not in BINNINGS:
        raise ConfigError(f"binning must be one of {BINNINGS}, got {binning!r}")
    return binning


def check_norm(norm: str) -> str:
    """One of :data:`NORMS`."""
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm
