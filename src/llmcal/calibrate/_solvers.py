"""Numerical cores shared by the calibrators: exact 1-D temperature fit, affine maps, top-label rescaling.

Everything here works on plain float64 arrays; rows may be padded with ``-inf`` on the right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize

from llmcal.errors import CalibrationError
from llmcal.scores import log_softmax

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_EPS = float(np.finfo(np.float64).eps)
#: The largest confidence a top-label calibrator emits: 1 − 2⁻⁵³, so every other option keeps a
#: finite log-probability (``-inf`` is reserved for padding).
MAX_CONFIDENCE = float(np.nextafter(1.0, 0.0))


# -- temperature -----------------------------------------------------------------------------
def inverse_temperature_terms(
    beta: float, z: FloatArray, p: FloatArray, w: FloatArray
) -> tuple[float, float, float]:
    """Weighted mean cross-entropy of ``σ(β z)`` against the target rows ``p``, with its first
    and second derivative in β.

    ``p`` is one-hot for labels or a reference distribution (zero on padding). The loss
    ``lse(β z) − β Σ p z`` is convex in β: the second derivative is the weighted mean of
    ``Var_q[z]``.
    """
    return _Terms(z, p, w)(beta)


class _Terms:
    """:func:`inverse_temperature_terms` with the padding handled once, for repeated calls."""

    def __init__(self, z: FloatArray, p: FloatArray, w: FloatArray) -> None:
        pad = ~np.isfinite(z)
        self.pad = pad if pad.any() else None
        # Shift each row so its largest logit is 0 (the loss is shift-invariant because Σp = 1).
        # Then E_q[z] and Σ p z are both small near a one-hot target and the gradient, their
        # difference, keeps full relative precision; unshifted, it cancels to ~ulp(max z) and
        # β of a peaked problem is only good to ~1e-5.
        top = np.max(np.where(pad, -np.inf, z), axis=1, keepdims=True)
        self.zf = np.where(pad, 0.0, z - top)
        self.t = (np.where(pad, 0.0, p) * self.zf).sum(axis=1)
        self.w, self.wsum = w, float(w.sum())

    def __call__(self, beta: float) -> tuple[float, float, float]:
        zf, w = self.zf, self.w
        u = beta * zf
        if self.pad is not None:
            u[self.pad] = -np.inf
        m = u.max(axis=1)
        e = np.exp(u - m[:, None])
        s = e.sum(axis=1)
        q = e / s[:, None]
        ez = (q * zf).sum(axis=1)
        var = (q * (zf - ez[:, None]) ** 2).sum(axis=1)
        f = float(np.dot(w, m + np.log(s) - beta * self.t) / self.wsum)
        g = float(np.dot(w, ez - self.t) / self.wsum)
        h = float(np.dot(w, var) / self.wsum)
        return f, g, h


@dataclass
class ScalarFit:
    """Result of the 1-D inverse-temperature solve."""

    beta: float
    iterations: int
    gradient: float
    loss: float
    converged: bool
    #: None inside the bracket; "tau_max" when τ ran to its upper bound (β → 0), "tau_min" when
    #: it ran to its lower bound (β → ∞).
    at_bound: str | None


def fit_inverse_temperature(
    z: FloatArray,
    p: FloatArray,
    w: FloatArray,
    tau_range: tuple[float, float],
    beta0: float = 1.0,
    max_iter: int = 400,
) -> ScalarFit:
    """Minimise the convex loss of :func:`inverse_temperature_terms` over β in 1/τ_max..1/τ_min.

    Safeguarded Newton: every evaluated point shrinks a sign bracket of the derivative, and a
    Newton step that leaves the bracket is replaced by a geometric bisection. It stops when the
    step is within a few ulps of β (machine precision), or the derivative is exactly zero.
    """
    terms = _Terms(z, p, w)
    lo, hi = 1.0 / tau_range[1], 1.0 / tau_range[0]
    f_lo, g_lo, _ = terms(lo)
    f_hi, g_hi, _ = terms(hi)
    if g_lo >= 0.0 and g_hi <= 0.0:  # flat loss (every row constant): any β is optimal
        f0, g0, _ = terms(beta0)
        return ScalarFit(beta0, 0, g0, f0, True, None)
    if g_lo >= 0.0:
        return ScalarFit(lo, 0, g_lo, f_lo, False, "tau_max")
    if g_hi <= 0.0:
        return ScalarFit(hi, 0, g_hi, f_hi, False, "tau_min")
    beta = min(max(beta0, lo), hi)
    f = g = 0.0
    for it in range(1, max_iter + 1):
        f, g, h = terms(beta)
        if g == 0.0:
            return ScalarFit(beta, it, g, f, True, None)
        if g < 0.0:
            lo = beta
        else:
            hi = beta
        step = -g / h if h > 0.0 else np.inf
        if abs(step) <= 4.0 * _EPS * beta or hi - lo <= 4.0 * _EPS * hi:
            return ScalarFit(beta, it, g, f, True, None)
        new = beta + step
        beta = float(new) if lo < new < hi else float(np.sqrt(lo * hi))
    return ScalarFit(beta, max_iter, g, f, False, None)


# -- affine maps (vector / matrix scaling) ---------------------------------------------------
def split_affine(theta: FloatArray, kind: str, k: int) -> tuple[FloatArray, FloatArray]:
    """``(w, b)`` for vector scaling or ``(W, b)`` for matrix scaling from the flat vector."""
    if kind == "vector":
        return theta[:k], theta[k:]
    return theta[: k * k].reshape(k, k), theta[k * k :]


def identity_affine(kind: str, k: int) -> FloatArray:
    """Parameters of the identity map: w = 1 (or W = I) and b = 0."""
    if kind == "vector":
        return np.concatenate([np.ones(k), np.zeros(k)])
    return np.concatenate([np.eye(k).ravel(), np.zeros(k)])


def apply_affine(z: FloatArray, kind: str, a: FloatArray, b: FloatArray) -> FloatArray:
    """``w ⊙ z + b`` (vector) or ``z Wᵀ + b`` (matrix), row-wise."""
    if kind == "vector":
        return np.asarray(z * a + b, dtype=np.float64)
    return np.asarray(z @ a.T + b, dtype=np.float64)


def affine_objective(
    theta: FloatArray,
    z: FloatArray,
    p: FloatArray,
    w: FloatArray,
    kind: str,
    off_diag_l2: float = 0.0,
    bias_l2: float = 0.0,
) -> tuple[float, FloatArray]:
    """Weighted mean cross-entropy of ``σ(φ_θ(z))`` against ``p``, plus ODIR, with its gradient."""
    k = z.shape[1]
    a, b = split_affine(theta, kind, k)
    u = apply_affine(z, kind, a, b)
    m = u.max(axis=1, keepdims=True)
    e = np.exp(u - m)
    s = e.sum(axis=1, keepdims=True)
    lse = (m + np.log(s))[:, 0]
    wsum = w.sum()
    f = float(np.dot(w, lse - (p * u).sum(axis=1)) / wsum)
    g_u = (e / s - p) * (w / wsum)[:, None]
    g_b = g_u.sum(axis=0)
    if kind == "vector":
        g_a = (g_u * z).sum(axis=0)
    else:
        g_a = (g_u.T @ z).ravel()
        if off_diag_l2 > 0.0 and k > 1:
            off = a * (1.0 - np.eye(k))
            f += off_diag_l2 * float((off**2).sum()) / (k * (k - 1))
            g_a = g_a + (2.0 * off_diag_l2 / (k * (k - 1))) * off.ravel()
        if bias_l2 > 0.0:
            f += bias_l2 * float((b**2).sum()) / k
            g_b = g_b + (2.0 * bias_l2 / k) * b
    return f, np.concatenate([g_a, g_b])


def fit_affine(
    z: FloatArray,
    p: FloatArray,
    w: FloatArray,
    kind: str,
    theta0: FloatArray,
    off_diag_l2: float = 0.0,
    bias_l2: float = 0.0,
    max_iter: int = 10_000,
) -> tuple[FloatArray, dict[str, Any]]:
    """Minimise :func:`affine_objective` with L-BFGS-B and the analytic gradient."""
    res = minimize(
        affine_objective,
        theta0,
        args=(z, p, w, kind, off_diag_l2, bias_l2),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "maxcor": 30, "ftol": 1e-15, "gtol": 1e-11},
    )
    theta = np.asarray(res.x, dtype=np.float64)
    f, grad = affine_objective(theta, z, p, w, kind, off_diag_l2, bias_l2)
    info = {
        "solver": "L-BFGS-B",
        "iterations": int(res.nit),
        "loss": f,
        "gradient_norm": float(np.max(np.abs(grad))),
        "message": str(res.message),
    }
    return theta, info


# -- top-label rescaling (histogram binning, isotonic) ---------------------------------------
def top_label_confidence(logits: FloatArray) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Argmax (first on ties) and the top-label probability of each row."""
    lp = log_softmax(logits)
    top = np.argmax(lp, axis=1)
    return top.astype(np.int64), np.exp(lp[np.arange(len(lp)), top])


def rescale_top_label(logits: FloatArray, new_conf: FloatArray) -> tuple[FloatArray, int]:
    """Log-probs with the top option set to ``new_conf`` and the others scaled to share the rest.

    A confidence so low that another option would overtake the top one is raised to the
    smallest value that keeps the argmax (the point where the top and the runner-up tie);
    returns the new log-probs and how many rows were raised.
    """
    lp = log_softmax(logits)
    n = len(lp)
    rows = np.arange(n)
    top = np.argmax(lp, axis=1)
    others = lp.copy()
    others[rows, top] = -np.inf
    lse_o = np.logaddexp.reduce(others, axis=1)  # log(1 − c), accurate even when c ≈ 1
    lp2 = others.max(axis=1)
    log_cmin = lp2 - np.logaddexp(lse_o, lp2)  # c_min = p2 / (1 − c + p2) ≤ 1/2
    with np.errstate(divide="ignore"):
        log_new = np.log(np.clip(np.asarray(new_conf, dtype=np.float64), 0.0, MAX_CONFIDENCE))
    raised = log_new < log_cmin
    log_c = np.where(raised, log_cmin, log_new)
    out = others - lse_o[:, None] + np.log1p(-np.exp(log_c))[:, None]
    out[rows, top] = log_c
    # rounding can leave a runner-up a hair above (or tied before) the top: push it just below
    bad = np.argmax(out, axis=1) != top
    if bad.any():
        below = np.nextafter(log_c[bad], -np.inf)
        sub = out[bad]
        sub = np.minimum(sub, below[:, None])
        sub[np.arange(len(sub)), top[bad]] = log_c[bad]
        out[bad] = sub
    return out, int(raised.sum())


def check_full_rows(logits: FloatArray, what: str, k: int | None = None) -> None:
    """Require every row to have all ``k`` options (no padding)."""
    n_opt = np.isfinite(logits).sum(axis=1)
    if k is not None and logits.shape[1] != k:
        raise CalibrationError(
            f"{what} was fitted on {k} options per question but these Scores have "
            f"{logits.shape[1]}; apply it only to Scores of the same task (same option count)"
        )
    if len(n_opt) and (n_opt != logits.shape[1]).any():
        counts = sorted({int(c) for c in n_opt})
        raise CalibrationError(
            f"{what} needs every question to have the same number of options, each with a "
            f"finite logit, got finite-logit counts {counts}; split the Scores by option count "
            "or use temperature scaling (options with probability 0 cannot be rescaled per class)"
        )
