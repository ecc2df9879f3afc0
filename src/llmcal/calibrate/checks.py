"""Warnings a careful colleague would give about a calibrator: misapplied, or fitted on too little.

Both checks issue :class:`~llmcal.calibrate.base.CalibrationWarning` (the CLI prints each as one
``llmcal: warning: …`` line) and return the messages, so a caller can also show or test them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from llmcal.calibrate.base import CalibrationWarning, Calibrator
from llmcal.scores import Scores

#: Below this many fit questions per free parameter a vector / matrix scaling fit is flagged.
MIN_QUESTIONS_PER_PARAMETER = 10

#: Fit-provenance keys compared with a Scores' meta before applying a calibrator.
COMPARED = ("task", "model", "template", "mode")


def option_count(scores: Scores) -> int:
    """The number of option columns of ``scores``."""
    return int(np.asarray(scores.logits).shape[1]) if len(scores) else 0


def fitted_option_count(cal: Calibrator) -> int | None:
    """The option count a calibrator was fitted with, where it records one (``fit["k"]``)."""
    k = (cal.fit_info_ or {}).get("k")
    return int(k) if isinstance(k, int) and not isinstance(k, bool) else None


def misapplication(cal: Calibrator, scores: Scores) -> list[tuple[str, Any, Any]]:
    """(what, fitted on, these Scores) for each provenance entry that differs."""
    fit = cal.fit_info_ or {}
    diffs: list[tuple[str, Any, Any]] = []
    for key in COMPARED:
        then, now = fit.get(key), scores.meta.get(key)
        if then is not None and now is not None and then != now:
            diffs.append((key, then, now))
    k = fitted_option_count(cal)
    if k is not None and len(scores) and k != option_count(scores):
        diffs.append(("options", k, option_count(scores)))
    return diffs


def warn_misapplied(cal: Calibrator, scores: Scores, source: str = "the calibrator") -> list[str]:
    """Warn (one line) when ``cal`` is applied to another task, model, template or option count."""
    diffs = misapplication(cal, scores)
    if not diffs:
        return []

    def show(key: str, value: Any) -> str:
        return f"{value} options" if key == "options" else f"{key} {value!r}"

    then = ", ".join(show(k, a) for k, a, _ in diffs)
    now = ", ".join(show(k, b) for k, _, b in diffs)
    message = (
        f"{source} was fitted on {then} but these Scores are {now}; a calibration rarely "
        "transfers: check it on labelled data of the target, or re-fit it there"
    )
    _warn(message)
    return [message]


def free_parameters(cal: Calibrator) -> int:
    """The number of fitted parameters of vector / matrix maps (0 for the others)."""
    fit = cal.fit_info_ or {}
    kind = cal.kind if cal.kind != "daca" else str(fit.get("scaler", "temperature"))
    k = fitted_option_count(cal)
    if k is None:
        return 0
    if kind == "vector":
        return 2 * k
    if kind == "matrix":
        return k * k + k
    return 0


def warn_few_questions(cal: Calibrator) -> list[str]:
    """Warn when a vector / matrix map was fitted on < 10 questions per free parameter."""
    params = free_parameters(cal)
    n = (cal.fit_info_ or {}).get("n_used")
    if not params or not isinstance(n, int) or n >= MIN_QUESTIONS_PER_PARAMETER * params:
        return []
    fit = cal.fit_info_ or {}
    kind = cal.kind if cal.kind != "daca" else f"daca with {fit.get('scaler')} scaling"
    message = (
        f"{kind} fitted {params} parameters on {n} questions ({n / params:.1f} per parameter, "
        f"fewer than {MIN_QUESTIONS_PER_PARAMETER}); it may overfit: use more questions or "
        "temperature scaling (1 parameter)"
    )
    _warn(message)
    return [message]


def _warn(message: str) -> None:
    warnings.warn(message, CalibrationWarning, stacklevel=3)


def describe_params(cal: Calibrator) -> str:
    """The fitted parameters, rounded and short (``τ = 1.84``, ``w = [0.91 1.02 …]``)."""
    params: dict[str, Any] = cal.get_fitted_params()
    if cal.kind == "histogram":
        values = np.asarray(params["values"], dtype=np.float64)
        empty = (cal.fit_info_ or {}).get("n_empty_bins")
        return (
            f"{values.size} bins"
            + (f" ({empty} empty)" if empty else "")
            + f", accuracy per bin {values.min():.3g}–{values.max():.3g}"
        )
    if cal.kind == "isotonic":
        y = np.asarray(params["y"], dtype=np.float64)
        return f"{y.size} knots, calibrated confidence {y.min():.3g}–{y.max():.3g}"
    if "temperature" in params:
        return f"τ = {float(params['temperature']):.3g}"
    if isinstance(params.get("temperatures"), dict):  # one τ per subject
        taus = [float(t) for t in params["temperatures"].values()]
        return f"τ per subject ({len(taus)}), {min(taus):.3g}–{max(taus):.3g}" if taus else ""
    parts = []
    for key, value in params.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key} = {float(value):.3g}")
            continue
        try:
            arr = np.asarray(value, dtype=np.float64) if isinstance(value, list) else None
        except (TypeError, ValueError):  # a list of names, not numbers
            continue
        if arr is None:
            continue
        if arr.ndim == 2:
            diag = np.diag(arr)
            parts.append(f"{key}: {arr.shape[0]}×{arr.shape[1]}, diagonal {_vec(diag)}")
        elif arr.size:
            parts.append(f"{key} = {_vec(arr)}")
    return ", ".join(parts)


def _vec(arr: np.ndarray[Any, Any], show: int = 6) -> str:
    cells = [f"{x:.3g}" for x in arr[:show]]
    more = f" … ({arr.size} values)" if arr.size > show else ""
    return "[" + " ".join(cells) + more + "]"
