"""Supervised scaling calibrators: temperature, vector and matrix scaling (Guo et al. 2017)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from llmcal.calibrate._solvers import (
    apply_affine,
    check_full_rows,
    fit_affine,
    fit_inverse_temperature,
    identity_affine,
    inverse_temperature_terms,
    split_affine,
)
from llmcal.calibrate.base import (
    Calibrator,
    as_scores,
    float_array,
    provenance,
    require_labelled_rows,
    require_two_classes,
    warn,
)
from llmcal.errors import CalibrationError
from llmcal.scores import Scores

if TYPE_CHECKING:
    from typing_extensions import Self

FloatArray = npt.NDArray[np.float64]

DEFAULT_TAU_RANGE = (1e-4, 1e4)


def check_tau_range(tau_range: Any) -> tuple[float, float]:
    """Validate a ``(tau_min, tau_max)`` pair."""
    try:
        lo, hi = (float(v) for v in tau_range)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"tau_range must be two numbers, got {tau_range!r}") from exc
    if not (0.0 < lo < 1.0 < hi < np.inf):
        raise CalibrationError(
            f"tau_range must satisfy 0 < tau_min < 1 < tau_max, got {tau_range!r}"
        )
    return lo, hi


def one_hot(labels: npt.NDArray[np.int64], k: int) -> FloatArray:
    """Rows of the identity for each label."""
    p = np.zeros((len(labels), k))
    p[np.arange(len(labels)), labels] = 1.0
    return p


def diverged_message(who: str, bound: str, tau: float, why: str) -> str:
    """The warning text for a temperature that ran to the edge of its range."""
    direction = "∞ (uniform confidence)" if bound == "tau_max" else "0 (confidence 1)"
    return (
        f"{who}: the loss keeps decreasing as τ → {direction}; τ was capped at {tau:g} and the "
        f"fit is marked diverged=True. {why}"
    )


class TemperatureScaling(Calibrator):
    """Temperature scaling fitted exactly by NLL: a convex 1-D problem in β = 1/τ."""

    kind: ClassVar[str] = "temperature"

    def __init__(self, tau_range: tuple[float, float] | list[float] = DEFAULT_TAU_RANGE) -> None:
        super().__init__()
        self.tau_range = check_tau_range(tau_range)
        self.temperature_: float | None = None

    @property
    def temperature(self) -> float:
        """The fitted temperature τ (logits are divided by it)."""
        self._check_fitted()
        assert self.temperature_ is not None
        return self.temperature_

    def fit(self, scores: Scores | npt.ArrayLike, labels: npt.ArrayLike | None = None) -> Self:
        """Minimise the NLL of ``σ(z/τ)`` on labelled Scores (or ``logits``, ``labels`` arrays)."""
        scores = as_scores(scores, labels, "TemperatureScaling.fit")
        require_labelled_rows(scores, "TemperatureScaling.fit")
        z = scores.logits
        onehot = np.zeros_like(z)
        onehot[np.arange(len(scores)), scores.labels] = 1.0
        w = np.ones(len(scores))
        res = fit_inverse_temperature(z, onehot, w, self.tau_range)
        tau = 1.0 / res.beta
        if res.at_bound is not None:
            warn(
                diverged_message(
                    "TemperatureScaling",
                    res.at_bound,
                    tau,
                    "Every prediction is right, so sharper is always better; use more, or "
                    "harder, calibration data."
                    if res.at_bound == "tau_min"
                    else "The labels look unrelated to the logits (no signal to calibrate).",
                )
            )
        self.temperature_ = tau
        self.fit_info_ = {
            "n": len(scores),
            "n_used": len(scores),
            **provenance(scores),
            "solver": "newton-bracketed (inverse temperature, exact)",
            "iterations": res.iterations,
            "gradient": res.gradient,
            "nll": res.loss,
            "nll_at_tau_1": inverse_temperature_terms(1.0, z, onehot, w)[0],
            "converged": res.converged,
            "diverged": res.at_bound is not None,
            "tau_bound": res.at_bound,
        }
        return self

    def get_config(self) -> dict[str, Any]:
        """Constructor options."""
        return {"tau_range": list(self.tau_range)}

    def get_fitted_params(self) -> dict[str, Any]:
        """``{"temperature": τ}``."""
        self._check_fitted()
        return {"temperature": self.temperature}

    def _set_params(self, params: dict[str, Any], source: str) -> None:
        tau = float(float_array(params["temperature"], (), "temperature", source))
        lo, hi = self.tau_range
        if tau <= 0.0:
            raise CalibrationError(f"{source}: temperature must be > 0, got {tau}; re-fit it")
        if not lo <= tau <= hi:
            raise CalibrationError(
                f"{source}: temperature {tau!r} is outside the calibrator's tau_range "
                f"[{lo:g}, {hi:g}]; the file is corrupt, re-fit it"
            )
        self.temperature_ = tau

    def _transform_logits(self, scores: Scores) -> tuple[FloatArray, dict[str, Any]]:
        return scores.logits / self.temperature, {}


class _AffineScaling(Calibrator):
    """Shared code of vector and matrix scaling: an affine map of the logits fitted by NLL."""

    map_kind: ClassVar[str]
    off_diag_l2: float = 0.0
    bias_l2: float = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.k_: int | None = None
        self.theta_: FloatArray | None = None

    def fit(self, scores: Scores | npt.ArrayLike, labels: npt.ArrayLike | None = None) -> Self:
        """Minimise the NLL of ``σ(φ(z))`` on labelled Scores (or arrays) with L-BFGS."""
        name = type(self).__name__
        scores = as_scores(scores, labels, f"{name}.fit")
        require_labelled_rows(scores, f"{name}.fit")
        check_full_rows(scores.logits, name)
        require_two_classes(scores.labels, f"{name}.fit")
        z = scores.logits
        k = z.shape[1]
        p = one_hot(scores.labels, k)
        w = np.ones(len(scores))
        theta, info = fit_affine(
            z,
            p,
            w,
            self.map_kind,
            identity_affine(self.map_kind, k),
            self.off_diag_l2,
            self.bias_l2,
        )
        if not np.isfinite(theta).all():
            raise CalibrationError(
                f"{name}: the fit diverged (non-finite parameters); use temperature scaling or "
                "more calibration data"
            )
        self.k_, self.theta_ = k, theta
        self.fit_info_ = {
            "n": len(scores),
            "n_used": len(scores),
            **provenance(scores),
            "k": k,
            **info,
            "nll": info["loss"],
        }
        return self

    def _parts(self) -> tuple[FloatArray, FloatArray]:
        self._check_fitted()
        assert self.theta_ is not None and self.k_ is not None
        return split_affine(self.theta_, self.map_kind, self.k_)

    def _transform_logits(self, scores: Scores) -> tuple[FloatArray, dict[str, Any]]:
        check_full_rows(scores.logits, type(self).__name__, self.k_)
        a, b = self._parts()
        return apply_affine(scores.logits, self.map_kind, a, b), {}


class VectorScaling(_AffineScaling):
    """Vector scaling ``w ⊙ z + b`` fitted by NLL (init w = 1, b = 0)."""

    kind: ClassVar[str] = "vector"
    map_kind: ClassVar[str] = "vector"

    @property
    def w_(self) -> FloatArray:
        """Per-option logit scale (fitted)."""
        return self._parts()[0]

    @property
    def b_(self) -> FloatArray:
        """Per-option bias (fitted)."""
        return self._parts()[1]

    @property
    def w(self) -> FloatArray:
        """Per-option logit scale."""
        return self._parts()[0]

    @property
    def b(self) -> FloatArray:
        """Per-option bias."""
        return self._parts()[1]

    def get_config(self) -> dict[str, Any]:
        """Constructor options (none)."""
        return {}

    def get_fitted_params(self) -> dict[str, Any]:
        """``{"w": [K], "b": [K]}``."""
        a, b = self._parts()
        return {"w": a.tolist(), "b": b.tolist()}

    def _set_params(self, params: dict[str, Any], source: str) -> None:
        w = float_array(params["w"], None, "w", source)
        if w.ndim != 1 or w.size < 2:
            raise CalibrationError(f"{source}: 'w' must be a list of ≥ 2 numbers; re-fit it")
        b = float_array(params["b"], w.shape, "b", source)
        self.k_, self.theta_ = w.size, np.concatenate([w, b])


class MatrixScaling(_AffineScaling):
    """Matrix scaling ``W z + b`` fitted by NLL, with optional ODIR regularisation.

    ``off_diag_l2`` and ``bias_l2`` add ``λ·mean(W_ij², i≠j) + μ·mean(b²)`` (Kull et al. 2019),
    useful when the calibration set is small relative to K² + K parameters.
    """

    kind: ClassVar[str] = "matrix"
    map_kind: ClassVar[str] = "matrix"

    @property
    def W_(self) -> FloatArray:
        """The K × K logit map (fitted)."""
        return self._parts()[0]

    @property
    def b_(self) -> FloatArray:
        """Per-option bias (fitted)."""
        return self._parts()[1]

    def __init__(self, off_diag_l2: float = 0.0, bias_l2: float = 0.0) -> None:
        super().__init__()
        if not (off_diag_l2 >= 0.0 and bias_l2 >= 0.0):
            raise CalibrationError(
                f"off_diag_l2 and bias_l2 must be ≥ 0, got {off_diag_l2}, {bias_l2}"
            )
        self.off_diag_l2 = float(off_diag_l2)
        self.bias_l2 = float(bias_l2)

    @property
    def W(self) -> FloatArray:
        """The K × K logit map."""
        return self._parts()[0]

    @property
    def b(self) -> FloatArray:
        """Per-option bias."""
        return self._parts()[1]

    def get_config(self) -> dict[str, Any]:
        """Constructor options."""
        return {"off_diag_l2": self.off_diag_l2, "bias_l2": self.bias_l2}

    def get_fitted_params(self) -> dict[str, Any]:
        """``{"W": [[K×K]], "b": [K]}``."""
        a, b = self._parts()
        return {"W": a.tolist(), "b": b.tolist()}

    def _set_params(self, params: dict[str, Any], source: str) -> None:
        w = float_array(params["W"], None, "W", source)
        if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] < 2:
            raise CalibrationError(f"{source}: 'W' must be a K × K matrix (K ≥ 2); re-fit it")
        b = float_array(params["b"], (w.shape[0],), "b", source)
        self.k_, self.theta_ = w.shape[0], np.concatenate([w.ravel(), b])
