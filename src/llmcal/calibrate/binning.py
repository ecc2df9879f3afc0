"""Top-label histogram binning and isotonic regression, and Platt scaling for binary tasks.

The top-label methods map the top-label confidence c to a calibrated c′, set the top option's
probability to c′ and rescale the other options proportionally so the row sums to 1; they return
log-probabilities as the new logits. Predictions are kept: when c′ is so low that the runner-up
would overtake the top option, c′ is raised to the tie point (the smallest value that keeps the
argmax), and the number of such rows is recorded (``n_argmax_clamped`` in the applied-calibration
meta, and for the calibration set in the artefact's ``fit`` record).

On answer-view Scores (free-form answers: columns [False, True], label 1 = the answer is right)
they map p(True) to a calibrated p(True) instead, fitted against correctness; a calibrator
fitted on one view refuses Scores of the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy.optimize import isotonic_regression

from llmcal.calibrate._solvers import (
    MAX_CONFIDENCE,
    check_full_rows,
    rescale_top_label,
    top_label_confidence,
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


def answer_view(scores: Scores) -> bool:
    """True for answer-view Scores (confidence that a given answer is right)."""
    return str(getattr(scores, "view", None) or scores.meta.get("view", "options")) == "answer"


def _p_true(scores: Scores) -> FloatArray:
    if scores.k != 2:
        raise CalibrationError(
            f"answer-view Scores must have 2 columns [False, True], these have K={scores.k}"
        )
    return np.asarray(scores.probs()[:, 1], dtype=np.float64)


class _TopLabel(Calibrator):
    """Shared code of the top-label calibrators: fit a map confidence → accuracy."""

    output_logit_kind: ClassVar[str] = "probs_log"

    def fit(self, scores: Scores | npt.ArrayLike, labels: npt.ArrayLike | None = None) -> Self:
        """Fit the confidence map on labelled Scores (or ``logits``, ``labels`` arrays).

        Options view: top-label confidence → accuracy of the argmax. Answer view (free-form
        answers, ``meta["view"] == "answer"``): p(True) → probability that the answer is right.
        """
        scores = as_scores(scores, labels, f"{type(self).__name__}.fit")
        require_labelled_rows(scores, f"{type(self).__name__}.fit")
        answer = answer_view(scores)
        if answer:
            conf = _p_true(scores)
            correct = (scores.labels == 1).astype(np.float64)
        else:
            top, conf = top_label_confidence(scores.logits)
            correct = (top == scores.labels).astype(np.float64)
        info = self._fit_map(conf, correct)
        n_clamped = 0 if answer else rescale_top_label(scores.logits, self._map(conf))[1]
        self.fit_info_ = {
            "n": len(scores),
            "n_used": len(scores),
            **provenance(scores),
            **info,
            "view": "answer" if answer else "options",
            "n_argmax_clamped": n_clamped,
        }
        return self

    def calibrated_confidence(self, scores: Scores | npt.ArrayLike) -> FloatArray:
        """The calibrated confidence of each row (top label before argmax protection; or p(True))."""
        self._check_fitted()
        scores = as_scores(scores, who=f"{type(self).__name__}.calibrated_confidence")
        if answer_view(scores):
            return self._map(_p_true(scores))
        return self._map(top_label_confidence(scores.logits)[1])

    def _transform_logits(self, scores: Scores) -> tuple[FloatArray, dict[str, Any]]:
        fitted = (self.fit_info_ or {}).get("view", "options")
        given = "answer" if answer_view(scores) else "options"
        if fitted != given:
            raise CalibrationError(
                f"{type(self).__name__} was fitted on {fitted}-view Scores but these are "
                f"{given}-view; fit it on Scores of the same kind"
            )
        if answer_view(scores):
            # p(True) → calibrated p(True); no argmax to protect (the answer is given)
            check_full_rows(scores.logits, type(self).__name__, 2)
            c = np.clip(self._map(_p_true(scores)), 1.0 - MAX_CONFIDENCE, MAX_CONFIDENCE)
            return np.stack([np.log1p(-c), np.log(c)], axis=1), {"view": "answer"}
        new_conf = self._map(top_label_confidence(scores.logits)[1])
        logp, n_clamped = rescale_top_label(scores.logits, new_conf)
        return logp, {"n_argmax_clamped": n_clamped}

    def _fit_map(self, conf: FloatArray, correct: FloatArray) -> dict[str, Any]:
        raise NotImplementedError

    def _map(self, conf: FloatArray) -> FloatArray:
        raise NotImplementedError


class HistogramBinning(_TopLabel):
    """Top-label histogram binning: each confidence bin maps to its accuracy (Zadrozny & Elkan 2001).

    ``binning="width"``: ``n_bins`` equal-width bins on [0, 1]; ``"mass"``: bins with equal
    numbers of calibration examples (ties may merge bins). An empty bin maps to its midpoint.
    """

    kind: ClassVar[str] = "histogram"

    def __init__(self, n_bins: int = 15, binning: str = "width") -> None:
        super().__init__()
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise CalibrationError(f"n_bins must be a positive integer, got {n_bins!r}")
        if binning not in ("width", "mass"):
            raise CalibrationError(f"binning must be 'width' or 'mass', got {binning!r}")
        self.n_bins = n_bins
        self.binning = binning
        self.edges_: FloatArray | None = None
        self.values_: FloatArray | None = None

    def _fit_map(self, conf: FloatArray, correct: FloatArray) -> dict[str, Any]:
        if self.binning == "width":
            edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        else:
            inner = np.quantile(conf, np.linspace(0.0, 1.0, self.n_bins + 1)[1:-1])
            edges = np.unique(np.concatenate([[0.0], inner, [1.0]]))
        idx = self._bin(edges, conf)
        counts = np.bincount(idx, minlength=len(edges) - 1)
        hits = np.bincount(idx, weights=correct, minlength=len(edges) - 1)
        mid = (edges[:-1] + edges[1:]) / 2.0
        values = np.where(counts > 0, hits / np.maximum(counts, 1), mid)
        self.edges_, self.values_ = edges, values
        return {"bin_counts": counts.tolist(), "n_empty_bins": int((counts == 0).sum())}

    @staticmethod
    def _bin(edges: FloatArray, conf: FloatArray) -> npt.NDArray[np.intp]:
        return np.searchsorted(edges[1:-1], conf, side="right")

    def _map(self, conf: FloatArray) -> FloatArray:
        assert self.edges_ is not None and self.values_ is not None
        return np.asarray(self.values_[self._bin(self.edges_, conf)], dtype=np.float64)

    def get_config(self) -> dict[str, Any]:
        """Constructor options."""
        return {"n_bins": self.n_bins, "binning": self.binning}

    def get_fitted_params(self) -> dict[str, Any]:
        """``{"edges": [B+1], "values": [B]}``: bin edges on the confidence and bin accuracies."""
        self._check_fitted()
        assert self.edges_ is not None and self.values_ is not None
        return {"edges": self.edges_.tolist(), "values": self.values_.tolist()}

    def _set_params(self, params: dict[str, Any], source: str) -> None:
        edges = float_array(params["edges"], None, "edges", source)
        if edges.ndim != 1 or edges.size < 2 or (np.diff(edges) <= 0).any():
            raise CalibrationError(f"{source}: 'edges' must be increasing; re-fit the calibrator")
        self.edges_ = edges
        self.values_ = float_array(params["values"], (edges.size - 1,), "values", source)


class IsotonicCalibration(_TopLabel):
    """Top-label isotonic regression of correctness on confidence (Zadrozny & Elkan 2002).

    The fitted step function is interpolated linearly between its breakpoints and clipped
    outside the fitted range (as scikit-learn's ``IsotonicRegression(out_of_bounds="clip")``).
    """

    kind: ClassVar[str] = "isotonic"

    def __init__(self) -> None:
        super().__init__()
        self.x_: FloatArray | None = None
        self.y_: FloatArray | None = None

    def _fit_map(self, conf: FloatArray, correct: FloatArray) -> dict[str, Any]:
        x, inv, counts = np.unique(conf, return_inverse=True, return_counts=True)
        mean = np.bincount(inv, weights=correct) / counts
        res = isotonic_regression(mean, weights=counts.astype(np.float64), increasing=True)
        y = np.asarray(res.x, dtype=np.float64)
        # only the ends of each constant block matter for the interpolation
        blocks = np.asarray(res.blocks)
        keep = np.unique(np.concatenate([blocks[:-1], blocks[1:] - 1]))
        self.x_, self.y_ = x[keep], y[keep]
        return {"n_blocks": len(blocks) - 1}

    def _map(self, conf: FloatArray) -> FloatArray:
        assert self.x_ is not None and self.y_ is not None
        return np.asarray(np.interp(conf, self.x_, self.y_), dtype=np.float64)

    def get_config(self) -> dict[str, Any]:
        """Constructor options (none)."""
        return {}

    def get_fitted_params(self) -> dict[str, Any]:
        """``{"x": [...], "y": [...]}``: breakpoints of the fitted increasing map."""
        self._check_fitted()
        assert self.x_ is not None and self.y_ is not None
        return {"x": self.x_.tolist(), "y": self.y_.tolist()}

    def _set_params(self, params: dict[str, Any], source: str) -> None:
        x = float_array(params["x"], None, "x", source)
        if x.ndim != 1 or x.size < 1 or (np.diff(x) <= 0).any():
            raise CalibrationError(f"{source}: 'x' must be increasing; re-fit the calibrator")
        y = float_array(params["y"], x.shape, "y", source)
        if (np.diff(y) < 0).any():
            raise CalibrationError(f"{source}: 'y' must be non-decreasing; re-fit the calibrator")
        self.x_, self.y_ = x, y


class PlattScaling(Calibrator):
    """Platt scaling for binary tasks: P(option 1) = σ(a·(z₁ − z₀) + b), fitted exactly by NLL.

    ``smooth_targets=True`` uses Platt's (1999) targets (N₊+1)/(N₊+2) and 1/(N₋+2) instead of
    1 and 0. The decision threshold moves with b, so predictions may change.
    """

    kind: ClassVar[str] = "platt"

    def __init__(self, smooth_targets: bool = False, max_iter: int = 200) -> None:
        super().__init__()
        self.smooth_targets = bool(smooth_targets)
        self.max_iter = int(max_iter)
        self.a_: float | None = None
        self.b_: float | None = None

    @staticmethod
    def _delta(scores: Scores) -> FloatArray:
        if scores.k != 2:
            raise CalibrationError(
                f"PlattScaling is for binary tasks (2 options), these Scores have K={scores.k}; "
                "use TemperatureScaling or another multi-class calibrator"
            )
        check_full_rows(scores.logits, "PlattScaling", 2)
        return np.asarray(scores.logits[:, 1] - scores.logits[:, 0], dtype=np.float64)

    @property
    def a(self) -> float:
        """Slope on the logit difference."""
        self._check_fitted()
        assert self.a_ is not None
        return self.a_

    @property
    def b(self) -> float:
        """Intercept."""
        self._check_fitted()
        assert self.b_ is not None
        return self.b_

    def fit(self, scores: Scores | npt.ArrayLike, labels: npt.ArrayLike | None = None) -> Self:
        """Logistic regression of the label on z₁ − z₀ by damped Newton (2 parameters).

        With arrays, ``scores`` may be n × 2 logits or 1-D logit differences z₁ − z₀.
        """
        scores = as_scores(scores, labels, "PlattScaling.fit")
        require_labelled_rows(scores, "PlattScaling.fit")
        if answer_view(scores) and np.unique(scores.labels).size < 2:
            which = "right" if scores.labels[0] == 1 else "wrong"
            raise CalibrationError(
                f"PlattScaling.fit: all {len(scores)} calibration answers are {which}, so the "
                "slope and intercept run off to infinity; use more calibration answers"
            )
        require_two_classes(scores.labels, "PlattScaling.fit")
        d = self._delta(scores)
        y = scores.labels.astype(np.float64)
        if self.smooth_targets:
            n_pos, n_neg = y.sum(), len(y) - y.sum()
            y = np.where(y > 0, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        x = np.stack([d, np.ones_like(d)], axis=1)

        def loss(theta: FloatArray) -> float:
            s = x @ theta
            return float(np.mean(np.logaddexp(0.0, s) - y * s))

        theta = np.array([1.0, 0.0])
        f = loss(theta)
        converged = False
        it = 0
        for it in range(1, self.max_iter + 1):  # noqa: B007 - reported below
            s = x @ theta
            sig = 0.5 * (1.0 + np.tanh(0.5 * s))
            grad = x.T @ (sig - y) / len(y)
            hess = (x * (sig * (1.0 - sig))[:, None]).T @ x / len(y)
            try:
                step = -np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                step = -grad
            t = 1.0
            while t > 1e-12:
                f_new = loss(theta + t * step)
                if f_new <= f + 1e-4 * t * float(grad @ step):
                    break
                t *= 0.5
            new = theta + t * step
            small = np.all(
                np.abs(new - theta) <= 8.0 * np.finfo(float).eps * np.maximum(1.0, np.abs(theta))
            )
            theta, f = new, loss(new)
            if small or np.max(np.abs(grad)) == 0.0:
                converged = True
                break
        if not converged:
            warn(
                f"PlattScaling: Newton did not converge in {self.max_iter} iterations (a = "
                f"{theta[0]:.4g}); the classes may be separable by the logit difference, so the "
                "maximum-likelihood slope is infinite. Use more calibration data."
            )
        s = x @ theta
        grad = x.T @ (0.5 * (1.0 + np.tanh(0.5 * s)) - y) / len(y)
        self.a_, self.b_ = float(theta[0]), float(theta[1])
        self.fit_info_ = {
            "n": len(scores),
            "n_used": len(scores),
            **provenance(scores),
            "solver": "newton (damped, exact)",
            "iterations": it,
            "nll": f,
            "gradient_norm": float(np.max(np.abs(grad))),
            "converged": converged,
        }
        return self

    def _transform_logits(self, scores: Scores) -> tuple[FloatArray, dict[str, Any]]:
        s = self.a * self._delta(scores) + self.b
        return np.stack([-np.logaddexp(0.0, s), -np.logaddexp(0.0, -s)], axis=1), {}

    output_logit_kind: ClassVar[str] = "probs_log"

    def get_config(self) -> dict[str, Any]:
        """Constructor options."""
        return {"smooth_targets": self.smooth_targets, "max_iter": self.max_iter}

    def get_fitted_params(self) -> dict[str, Any]:
        """``{"a": slope, "b": intercept}``."""
        return {"a": self.a, "b": self.b}

    def _set_params(self, params: dict[str, Any], source: str) -> None:
        self.a_ = float(float_array(params["a"], (), "a", source))
        self.b_ = float(float_array(params["b"], (), "b", source))
