"""DACA: label-free calibration of a post-trained LLM against its pre-trained counterpart.

Luo et al., "Your Pre-trained LLM is Secretly an Unsupervised Confidence Calibrator"
(arXiv 2505.16690, NeurIPS 2025); spec in ``methods/daca.md``.

The target (post-trained model, PoLM) logits z are rescaled so that σ(φ(z)) matches the reference
(pre-trained model, PLM) distribution p = σ(z_ref), but only on the questions where both models
predict the same option (Eq. 7):

    L(φ) = E_x[ m(x) · KL(p(x) ‖ σ(φ(z(x)))) ],   m(x) = 1[argmax z_ref = argmax z]

Temperature scaling keeps the argmax, so the mask is computed once and does not depend on τ; the
loss (masked cross-entropy, which differs from the KL by the constant reference entropy) is convex
in β = 1/τ and is solved exactly (``parity=False``, the default). Vector and matrix scaling use the
literal Eq. 8 mask from the rescaled argmax: L-BFGS fits alternate with mask updates until the mask
is a fixed point (``fixed_mask=True`` keeps the initial mask). Labels are never used.

``parity=True`` runs the authors' loop instead (github.com/ml-stat-Sustech/Disagreement-Aware-
Calibration, ``calibration/optimization.py``): raw τ from ``tau0``, Adam, shuffled mini-batches,
both distributions clamped to [ε, 1−ε], the masked loss averaged over the whole batch (masked
items included), and the parameters recorded per epoch. Where the code differs from the paper
we follow the paper by default and expose the code's choice: ``lr`` is 0.05 (paper; the code uses
0.1). As in the code, tensors are float32 (``parity_dtype``) and the TS mask uses the unscaled
argmax; VS/MS in parity mode (not in the code) recompute the Eq. 8 mask at every step. The
shuffling uses ``torch.randperm`` with a seeded generator: the same distribution as the code's
``DataLoader(shuffle=True)``, not the same random stream.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from llmcal.calibrate._solvers import (
    apply_affine,
    check_full_rows,
    fit_affine,
    fit_inverse_temperature,
    identity_affine,
    split_affine,
)
from llmcal.calibrate.base import (
    CalibrationWarning,
    Calibrator,
    as_scores,
    float_array,
    provenance,
    require_two_classes,
    to_jsonable,
    warn,
)
from llmcal.calibrate.scaling import DEFAULT_TAU_RANGE, check_tau_range, diverged_message
from llmcal.errors import CalibrationError, ScoresError
from llmcal.scores import Scores, align, softmax

if TYPE_CHECKING:
    from typing_extensions import Self

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

logger = logging.getLogger(__name__)

SCALERS = ("temperature", "vector", "matrix")
MASKS = ("agree", "none", "disagree")
MISSING = ("spread", "renormalize")
#: What a fit with no question in the mask does: raise, or keep the identity (τ = 1), as the
#: authors' code does for a fully masked MMLU subject (daca.md §7.3, §8.10).
NO_AGREEMENT = ("error", "fallback")
UNSEEN = ("pooled", "identity", "error")


def reference_distribution(
    reference: Scores, missing: str = "spread"
) -> tuple[FloatArray, dict[str, Any]]:
    """The reference distribution p (n × K) and a record of how top-k gaps were filled.

    Without ``meta["topk"]`` this is ``softmax(logits)``. With ``meta["topk"] = {"k", "floor"}``,
    entries equal to ``floor`` are options missing from the top-k log-probs: ``"spread"`` gives
    them the unseen mass 1 − Σ exp(seen) in equal shares (the seen values must be log-probs);
    ``"renormalize"`` gives them 0 and renormalises the seen options. Rows with no missing
    option are a plain softmax in both modes.
    """
    return _reference_distribution(reference.logits, reference.meta, reference.ids, missing)


def _reference_distribution(
    z: FloatArray, meta: dict[str, Any], ids: npt.NDArray[np.object_], missing: str
) -> tuple[FloatArray, dict[str, Any]]:
    if missing not in MISSING:
        raise CalibrationError(f"missing must be one of {MISSING}, got {missing!r}")
    topk = meta.get("topk")
    if topk is None:
        return softmax(z), {"topk": None, "missing": None, "rows_filled": 0, "options_filled": 0}
    if not isinstance(topk, dict) or "floor" not in topk:
        raise CalibrationError(
            f'reference meta["topk"] must be {{"k": int, "floor": float}}, got {topk!r}'
        )
    floor = float(topk["floor"])
    finite = np.isfinite(z)
    miss = finite & (z == floor)
    seen = finite & ~miss
    n_miss = miss.sum(axis=1)
    p = softmax(z)
    rows = n_miss > 0
    if missing == "renormalize":
        empty = rows & (seen.sum(axis=1) == 0)
        if empty.any():
            bad = ids[int(np.argmax(empty))]
            raise CalibrationError(
                f"reference question {bad!r}: no option is in the top-k, so missing='renormalize' "
                "has nothing to renormalise; use missing='spread' or drop the question"
            )
        p[rows] = softmax(np.where(seen, z, -np.inf)[rows])
    elif rows.any():
        zs = np.where(seen, z, -np.inf)[rows]
        p_seen = np.exp(zs)
        total = p_seen.sum(axis=1)
        if (total > 1.0 + 1e-6).any():
            bad = ids[np.flatnonzero(rows)[int(np.argmax(total))]]
            raise CalibrationError(
                f"reference question {bad!r}: the seen top-k values sum to probability "
                f"{total.max():.6g} > 1, so they are not log-probabilities; missing='spread' "
                "needs log-probs (or use missing='renormalize')"
            )
        unseen = np.clip(1.0 - total, 0.0, None)
        filled = np.where(miss[rows], (unseen / n_miss[rows])[:, None], p_seen)
        p[rows] = filled / filled.sum(axis=1, keepdims=True)
    info = {
        "topk": {"k": topk.get("k"), "floor": floor},
        "missing": missing,
        "rows_filled": int(rows.sum()),
        "options_filled": int(n_miss.sum()),
    }
    return p, info


def agreement_mask(target_logits: npt.ArrayLike, reference_logits: npt.ArrayLike) -> BoolArray:
    """1[argmax target = argmax reference] per row (first index on ties)."""
    zt = np.asarray(target_logits, dtype=np.float64)
    zr = np.asarray(reference_logits, dtype=np.float64)
    return np.asarray(np.argmax(zt, axis=1) == np.argmax(zr, axis=1))


def _select(agree: BoolArray, mode: str) -> BoolArray:
    if mode == "agree":
        return agree
    if mode == "disagree":
        return ~agree
    return np.ones_like(agree)


def _entropy(p: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(-np.where(p > 0, p * np.log(p), 0.0).sum(axis=1), dtype=np.float64)


def _pad(z: FloatArray, k: int) -> FloatArray:
    if z.shape[1] == k:
        return z
    out = np.full((z.shape[0], k), -np.inf)
    out[:, : z.shape[1]] = z
    return out


class DACA(Calibrator):
    """Disagreement-Aware Confidence Alignment: fit a scaler of the target to a reference model.

    ``fit(target=polm_scores, reference=plm_scores)``; ``scaler`` is ``"temperature"``,
    ``"vector"`` or ``"matrix"``; ``mask`` is ``"agree"`` (DACA), ``"none"`` (naive alignment)
    or ``"disagree"`` (the disagreement-only ablation). See the module docstring.
    """

    kind: ClassVar[str] = "daca"

    def __init__(
        self,
        scaler: str = "temperature",
        mask: str = "agree",
        parity: bool = False,
        *,
        fixed_mask: bool = False,
        missing: str = "spread",
        align: str = "exact",
        tau_range: tuple[float, float] | list[float] = DEFAULT_TAU_RANGE,
        max_mask_rounds: int = 50,
        lr: float = 0.05,
        epochs: int = 400,
        batch_size: int = 256,
        seed: int = 0,
        tau0: float = 1.0,
        eps: float = 1e-8,
        parity_dtype: str = "float32",
        no_agreement: str = "error",
    ) -> None:
        super().__init__()
        if no_agreement not in NO_AGREEMENT:
            raise CalibrationError(
                f"no_agreement must be one of {NO_AGREEMENT}, got {no_agreement!r}"
            )
        self.no_agreement = no_agreement
        if scaler not in SCALERS:
            raise CalibrationError(f"scaler must be one of {SCALERS}, got {scaler!r}")
        if mask not in MASKS:
            raise CalibrationError(f"mask must be one of {MASKS}, got {mask!r}")
        if missing not in MISSING:
            raise CalibrationError(f"missing must be one of {MISSING}, got {missing!r}")
        if align not in ("exact", "inner"):
            raise CalibrationError(f"align must be 'exact' or 'inner', got {align!r}")
        if parity_dtype not in ("float32", "float64"):
            raise CalibrationError(
                f"parity_dtype must be 'float32' or 'float64', got {parity_dtype!r}"
            )
        if epochs < 1 or batch_size < 1 or max_mask_rounds < 1 or not lr > 0.0:
            raise CalibrationError("epochs, batch_size, max_mask_rounds and lr must be positive")
        self.scaler = scaler
        self.mask = mask
        self.parity = bool(parity)
        self.fixed_mask = bool(fixed_mask)
        self.missing = missing
        self.align = align
        self.tau_range = check_tau_range(tau_range)
        self.max_mask_rounds = int(max_mask_rounds)
        self.lr = float(lr)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.tau0 = float(tau0)
        self.eps = float(eps)
        self.parity_dtype = parity_dtype
        self.temperature_: float | None = None
        self.theta_: FloatArray | None = None
        self.k_: int | None = None
        #: The questions the final fit used, over the aligned questions (not saved).
        self.mask_: BoolArray | None = None
        #: The aligned question ids, in the order of ``mask_`` (not saved).
        self.ids_: list[str] | None = None

    # -- parameters --------------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        """The fitted temperature (``scaler="temperature"`` only)."""
        self._check_fitted()
        if self.temperature_ is None:
            raise CalibrationError(f"this DACA uses scaler={self.scaler!r}, which has no single τ")
        return self.temperature_

    def _parts(self) -> tuple[FloatArray, FloatArray]:
        self._check_fitted()
        if self.theta_ is None or self.k_ is None:
            raise CalibrationError("this DACA uses scaler='temperature', which has no w / W / b")
        return split_affine(self.theta_, self.scaler, self.k_)

    @property
    def w_(self) -> FloatArray:
        """Per-option scale (fitted, ``scaler="vector"``)."""
        if self.scaler != "vector":
            raise CalibrationError(f"this DACA uses scaler={self.scaler!r}; w_ is for 'vector'")
        return self._parts()[0]

    @property
    def W_(self) -> FloatArray:
        """The K × K logit map (fitted, ``scaler="matrix"``)."""
        if self.scaler != "matrix":
            raise CalibrationError(f"this DACA uses scaler={self.scaler!r}; W_ is for 'matrix'")
        return self._parts()[0]

    @property
    def b_(self) -> FloatArray:
        """Per-option bias (fitted, vector or matrix scaler)."""
        return self._parts()[1]

    def get_config(self) -> dict[str, Any]:
        """Constructor options."""
        return {
            "scaler": self.scaler,
            "mask": self.mask,
            "parity": self.parity,
            "fixed_mask": self.fixed_mask,
            "missing": self.missing,
            "align": self.align,
            "tau_range": list(self.tau_range),
            "max_mask_rounds": self.max_mask_rounds,
            "lr": self.lr,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "tau0": self.tau0,
            "eps": self.eps,
            "parity_dtype": self.parity_dtype,
            "no_agreement": self.no_agreement,
        }

    def get_fitted_params(self) -> dict[str, Any]:
        """``{"temperature"}``, ``{"w", "b"}`` or ``{"W", "b"}`` depending on the scaler."""
        self._check_fitted()
        if self.scaler == "temperature":
            return {"temperature": self.temperature}
        a, b = self._parts()
        return {("w" if self.scaler == "vector" else "W"): a.tolist(), "b": b.tolist()}

    def _set_params(self, params: dict[str, Any], source: str) -> None:
        if self.scaler == "temperature":
            tau = float(float_array(params["temperature"], (), "temperature", source))
            if tau <= 0.0:
                raise CalibrationError(f"{source}: temperature must be > 0, got {tau}; re-fit it")
            self.temperature_ = tau
            return
        name = "w" if self.scaler == "vector" else "W"
        a = float_array(params[name], None, name, source)
        k = a.shape[0] if a.ndim >= 1 else 0
        want = (k,) if self.scaler == "vector" else (k, k)
        if k < 2 or a.shape != want:
            raise CalibrationError(f"{source}: {name!r} has shape {a.shape}; re-fit the calibrator")
        b = float_array(params["b"], (k,), "b", source)
        self.k_, self.theta_ = k, np.concatenate([a.ravel(), b])

    # -- fitting -----------------------------------------------------------------------------
    def _prepare(
        self, target: Scores, reference: Scores
    ) -> tuple[Scores, FloatArray, FloatArray, FloatArray, dict[str, Any]]:
        if not isinstance(target, Scores) or not isinstance(reference, Scores):
            raise CalibrationError("DACA.fit(target=..., reference=...) takes two Scores objects")
        views = [str(getattr(s, "view", None) or s.meta.get("view", "options"))
                 for s in (target, reference)]  # fmt: skip
        if views[0] != views[1]:
            raise CalibrationError(
                f"DACA: the target holds {views[0]}-view Scores and the reference "
                f"{views[1]}-view ones; both must be the same view (for free-form answers: "
                "P(True) of the same answers from both models, llmcal confidence --method ptrue)"
            )
        if views[0] == "answer" and (target.k != 2 or reference.k != 2):
            raise CalibrationError("DACA: answer-view Scores must have 2 columns [False, True]")
        try:
            if len(target) == len(reference) and np.array_equal(target.ids, reference.ids):
                t, r = target, reference  # already aligned: skip the id lookup
                both = (t.labels >= 0) & (r.labels >= 0)
                if (t.labels[both] != r.labels[both]).any():
                    t, r = align(target, reference, how=self.align)  # raises, naming the id
            else:
                t, r = align(target, reference, how=self.align)
        except ScoresError as exc:
            hint = "Score the same task (same questions) with both models"
            common = set(map(str, target.ids)) & set(map(str, reference.ids))
            if self.align == "exact" and common and len(common) < max(len(target), len(reference)):
                # only then can the common questions help
                hint += (
                    f", or fit on the {len(common)} common questions with --align inner "
                    "(DACA(align='inner') in Python)"
                )
            raise CalibrationError(
                f"DACA: target and reference do not fit together: {exc}. {hint}"
            ) from exc
        k = max(t.k, r.k)
        zt, zr = _pad(t.logits, k), _pad(r.logits, k)
        nt, nr = np.isfinite(zt).sum(axis=1), np.isfinite(zr).sum(axis=1)
        if (nt != nr).any():
            bad = np.flatnonzero(nt != nr)
            raise CalibrationError(
                f"DACA: {len(bad)} questions have different option counts in target and reference "
                f"(e.g. id {t.ids[bad[0]]!r}: {nt[bad[0]]} vs {nr[bad[0]]}); both models must score "
                "the same options in the same order"
            )
        if k < 2 or (nt < 2).any():
            raise CalibrationError("DACA needs at least 2 options per question")
        for name, z, n_opt in (("target", zt, nt), ("reference", zr, nr)):
            real = np.arange(k)[None, :] < n_opt[:, None]
            if not np.isfinite(z[real]).all():
                raise CalibrationError(f"DACA: {name} has non-finite logits on real options")
        p, ref_info = _reference_distribution(zr, r.meta, r.ids, self.missing)
        return t, zt, zr, p, ref_info

    def fit(self, target: Scores | npt.ArrayLike, reference: Scores | npt.ArrayLike) -> Self:
        """Fit on unlabelled ``target`` (PoLM) against ``reference`` (PLM): Scores or logit arrays.

        Arrays are n × K logits of the same n questions in the same order (row i of one is row i
        of the other).
        """
        target = as_scores(target, who="DACA.fit(target)")
        reference = as_scores(reference, who="DACA.fit(reference)")
        t, zt, zr, p, ref_info = self._prepare(target, reference)
        n, k = zt.shape
        ref_pred = np.argmax(zr, axis=1)
        agree = np.argmax(zt, axis=1) == ref_pred
        n_agree = int(agree.sum())
        sel = _select(agree, self.mask)
        if not sel.any() and self.no_agreement == "fallback":
            return self._fallback(t, reference, n, n_agree, k, ref_info)
        if not sel.any():
            what = {"agree": "agree", "disagree": "disagree", "none": "exist"}[self.mask]
            raise CalibrationError(
                f"DACA: no questions {what} (of {n} aligned: {n_agree} agree, {n - n_agree} "
                "disagree on the predicted option), so there is nothing to fit on. Check that both "
                "Scores use the same task, template and option order, or use more questions"
            )
        if self.scaler != "temperature":
            check_full_rows(zt, f"DACA(scaler={self.scaler!r})")
            require_two_classes(
                ref_pred[sel], f"DACA(scaler={self.scaler!r})", "reference predictions"
            )
        info: dict[str, Any] = {
            "n": len(target),
            "n_reference": len(reference),
            "n_total": n,
            "n_agree": n_agree,
            "n_disagree": n - n_agree,
            **provenance(target),
            "reference": {**provenance(reference), **ref_info},
            "mask": self.mask,
            "scaler": self.scaler,
            "k": k,
        }
        if self.parity:
            info.update(self._fit_parity(zt, p, ref_pred, sel))
        elif self.scaler == "temperature":
            info.update(self._fit_temperature(zt, p, sel))
        else:
            info.update(self._fit_affine(zt, p, ref_pred, sel))
        self.ids_ = [str(i) for i in t.ids.tolist()]
        self.fit_info_ = to_jsonable(info)
        return self

    def fit_transform(
        self, target: Scores | npt.ArrayLike, reference: Scores | npt.ArrayLike
    ) -> Scores:
        """Fit, then transform ``target``."""
        return self.fit(target, reference).transform(target)

    def _fallback(
        self, t: Scores, reference: Scores, n: int, n_agree: int, k: int, ref_info: dict[str, Any]
    ) -> Self:
        """No question in the mask: the identity scaler (τ = 1), recorded as a fallback."""
        if self.scaler == "temperature":
            self.temperature_ = 1.0
        else:
            self.k_, self.theta_ = k, identity_affine(self.scaler, k)
        self.mask_ = np.zeros(n, dtype=bool)
        self.ids_ = [str(i) for i in t.ids.tolist()]
        warn(
            f"DACA: no question is in the {self.mask!r} mask (of {n}: {n_agree} agree); "
            "no_agreement='fallback' keeps τ = 1 (the identity)"
        )
        self.fit_info_ = to_jsonable(
            {
                "n": len(t),
                "n_reference": len(reference),
                "n_total": n,
                "n_agree": n_agree,
                "n_disagree": n - n_agree,
                **provenance(t),
                "reference": {**provenance(reference), **ref_info},
                "mask": self.mask,
                "scaler": self.scaler,
                "k": k,
                "n_used": 0,
                "fallback": True,
                "solver": "none (no question in the mask: identity fallback)",
            }
        )
        return self

    def _fit_temperature(self, zt: FloatArray, p: FloatArray, sel: BoolArray) -> dict[str, Any]:
        self.mask_ = sel
        w = sel.astype(np.float64)
        res = fit_inverse_temperature(zt, p, w, self.tau_range)
        tau = 1.0 / res.beta
        self.temperature_ = tau
        if res.at_bound is not None:
            why = (
                "Fitting on disagreements only pushes τ up without bound (Prop. 3.3 of the paper)."
                if self.mask == "disagree"
                else "The reference is much less (or more) confident than the target everywhere; "
                "check the pairing."
            )
            warn(diverged_message("DACA", res.at_bound, tau, why))
        ent = float(np.dot(w, _entropy(p)) / w.sum())
        return {
            "n_used": int(sel.sum()),
            "solver": "newton-bracketed (inverse temperature, exact)",
            "iterations": res.iterations,
            "gradient": res.gradient,
            "converged": res.converged,
            "loss_ce": res.loss,
            "kl": res.loss - ent,
            "diverged": res.at_bound is not None,
            "tau_bound": res.at_bound,
        }

    def _fit_affine(
        self, zt: FloatArray, p: FloatArray, ref_pred: npt.NDArray[np.intp], sel: BoolArray
    ) -> dict[str, Any]:
        k = zt.shape[1]
        theta = identity_affine(self.scaler, k)
        recompute = self.mask != "none" and not self.fixed_mask
        changes: list[int] = []
        seen = {sel.tobytes()}
        mask_converged = not recompute
        sel_fit = sel
        info: dict[str, Any] = {}
        for _ in range(self.max_mask_rounds if recompute else 1):
            if not sel.any():
                raise CalibrationError(
                    f"DACA(scaler={self.scaler!r}): after rescaling, no question is left in the "
                    f"{self.mask!r} mask; use fixed_mask=True or scaler='temperature'"
                )
            theta, info = fit_affine(zt, p, sel.astype(np.float64), self.scaler, theta)
            sel_fit = sel
            if not recompute:
                break
            a, b = split_affine(theta, self.scaler, k)
            pred = np.argmax(apply_affine(zt, self.scaler, a, b), axis=1)
            new_sel = _select(pred == ref_pred, self.mask)
            changed = int((new_sel != sel).sum())
            changes.append(changed)
            logger.info(
                "DACA %s: mask round %d changed %d rows", self.scaler, len(changes), changed
            )
            if changed == 0:
                mask_converged = True
                break
            if new_sel.tobytes() in seen:  # the mask cycles: keep the last fit
                break
            seen.add(new_sel.tobytes())
            sel = new_sel
        if not mask_converged:
            warn(
                f"DACA(scaler={self.scaler!r}): the Eq. 8 mask (recomputed from the rescaled "
                f"argmax) did not settle after {len(changes)} rounds (rows changed per round: "
                f"{changes}); the result is the last round's fit. Consider fixed_mask=True"
            )
        diverged = not np.isfinite(theta).all() or float(np.max(np.abs(theta))) > 1e6
        if diverged:
            warn(
                f"DACA(scaler={self.scaler!r}): the parameters ran off to {np.max(np.abs(theta)):.3g}; "
                "the objective has no finite minimiser on this mask (marked diverged=True)"
            )
        self.k_, self.theta_ = k, theta
        self.mask_ = sel_fit
        ent = float(np.dot(sel_fit, _entropy(p)) / sel_fit.sum())
        return {
            "n_used": int(sel_fit.sum()),
            **info,
            "solver": "L-BFGS-B" + (" + Eq. 8 mask fixed point" if recompute else ""),
            "loss_ce": info["loss"],
            "kl": info["loss"] - ent,
            "mask_recomputed": recompute,
            "mask_changes": changes,
            "mask_converged": mask_converged,
            "diverged": diverged,
        }

    # -- parity with the authors' code -------------------------------------------------------
    def _fit_parity(
        self, zt: FloatArray, p: FloatArray, ref_pred: npt.NDArray[np.intp], sel0: BoolArray
    ) -> dict[str, Any]:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the batches are tiny: intra-op threads only add overhead
        try:
            with torch.enable_grad():
                final, history, losses, changes = self._adam_loop(zt, p, ref_pred, sel0)
        finally:
            torch.set_num_threads(threads)
        if not np.isfinite(final).all() or not np.isfinite(losses[-1]):
            raise CalibrationError(
                "DACA parity mode: the Adam loop produced non-finite values (the authors' raw τ is "
                "unconstrained and can cross 0); use parity=False for the exact solver or a lower lr"
            )
        k = zt.shape[1]
        out: dict[str, Any] = {
            "solver": f"adam (parity with the authors' code, {self.parity_dtype})",
            "epochs": self.epochs,
            "history": {"loss": losses},
        }
        if self.scaler == "temperature":
            tau = float(final[0])
            if tau <= 0.0:
                raise CalibrationError(
                    f"DACA parity mode ended with τ = {tau:g} ≤ 0 (raw τ is unconstrained); "
                    "use parity=False"
                )
            exact = self._fit_temperature(zt, p, sel0)  # sets temperature_ to the exact τ
            out["history"]["tau"] = history
            out["n_used"] = int(sel0.sum())
            out["exact_temperature"] = self.temperature_
            out["exact_loss_ce"] = exact["loss_ce"]
            out["exact_diverged"] = exact["diverged"]
            self.temperature_ = tau
        else:
            self.k_, self.theta_ = k, final
            a, b = split_affine(final, self.scaler, k)
            if self.fixed_mask:
                used = sel0
            else:
                pred = np.argmax(apply_affine(zt, self.scaler, a, b), axis=1)
                used = _select(pred == ref_pred, self.mask)
            self.mask_ = used
            out["n_used"] = int(used.sum())
            out["history"]["params"] = history
            out["history"]["mask_changes"] = changes
            out["mask_recomputed"] = self.mask != "none" and not self.fixed_mask
        return out

    def _adam_loop(
        self, zt: FloatArray, p: FloatArray, ref_pred: npt.NDArray[np.intp], sel0: BoolArray
    ) -> tuple[FloatArray, list[Any], list[float], list[int]]:
        """The [code] loop: shuffled mini-batches, Adam, clamped CE averaged over the whole batch."""
        import torch

        dtype = torch.float32 if self.parity_dtype == "float32" else torch.float64
        n, k = zt.shape
        eps = self.eps
        gen = torch.Generator().manual_seed(self.seed)
        zq_all = torch.tensor(np.array(zt), dtype=dtype)
        p_all = torch.tensor(np.array(p), dtype=dtype).clamp(eps, 1.0 - eps)
        ref_all = torch.tensor(np.array(ref_pred), dtype=torch.long)
        if self.scaler == "temperature":
            params = [torch.tensor(self.tau0, dtype=dtype, requires_grad=True)]
        else:
            a0, b0 = split_affine(identity_affine(self.scaler, k), self.scaler, k)
            params = [
                torch.tensor(np.array(a0), dtype=dtype, requires_grad=True),
                torch.tensor(np.array(b0), dtype=dtype, requires_grad=True),
            ]
        rescaled_mask = self.scaler != "temperature" and not self.fixed_mask

        def scaled(zq: torch.Tensor) -> torch.Tensor:
            if self.scaler == "temperature":
                return zq / params[0]
            if self.scaler == "vector":
                return zq * params[0] + params[1]
            return zq @ params[0].T + params[1]

        def selection(zq: torch.Tensor, u: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            agree = (u if rescaled_mask else zq).argmax(-1) == ref
            if self.mask == "agree":
                return agree
            if self.mask == "disagree":
                return ~agree
            return torch.ones_like(agree)

        opt = torch.optim.Adam(params, lr=self.lr)
        history: list[Any] = []
        losses: list[float] = []
        changes: list[int] = []
        prev = torch.tensor(np.array(sel0))
        for _ in range(self.epochs):
            perm = torch.randperm(n, generator=gen)
            total, batches = 0.0, 0
            for start in range(0, n, self.batch_size):
                idx = perm[start : start + self.batch_size]
                zq = zq_all[idx]
                opt.zero_grad()
                u = scaled(zq)
                m = selection(zq, u.detach(), ref_all[idx])
                q = torch.softmax(u, dim=-1).clamp(eps, 1.0 - eps)
                per = -(p_all[idx] * q.log()).sum(-1)
                loss = torch.where(m, per, torch.zeros_like(per)).mean()  # whole batch, as [code]
                loss.backward()
                opt.step()
                total += float(loss.detach())
                batches += 1
            losses.append(total / batches)
            with torch.no_grad():
                if self.scaler == "temperature":
                    history.append(float(params[0]))
                else:
                    history.append(torch.cat([t.reshape(-1) for t in params]).tolist())
                    if rescaled_mask:
                        cur = selection(zq_all, scaled(zq_all), ref_all)
                        changes.append(int((cur != prev).sum()))
                        prev = cur
        final = np.concatenate([t.detach().double().reshape(-1).numpy() for t in params])
        return final, history, losses, changes

    # -- applying ----------------------------------------------------------------------------
    def _transform_logits(self, scores: Scores) -> tuple[FloatArray, dict[str, Any]]:
        if self.scaler == "temperature":
            return scores.logits / self.temperature, {}
        check_full_rows(scores.logits, f"DACA(scaler={self.scaler!r})", self.k_)
        a, b = self._parts()
        return apply_affine(scores.logits, self.scaler, a, b), {}


class SubjectDACA(Calibrator):
    """DACA with one temperature per subject (the paper's MMLU protocol, daca.md §2).

    ``fit(target=..., reference=...)`` fits a temperature-scaling :class:`DACA` on each
    subject's questions (``Scores.subjects``); a subject with no agreeing question keeps τ = 1
    (``no_agreement="fallback"``, counted in ``fit_info_["n_fallback"]``) or raises
    (``"error"``). ``transform`` applies each question's subject τ; a subject not seen in the
    fit (or a question without a subject) gets ``unseen``: the pooled DACA τ over all fitted
    questions (``"pooled"``), 1 (``"identity"``), or an error.
    """

    kind: ClassVar[str] = "daca-subject"

    def __init__(
        self,
        mask: str = "agree",
        parity: bool = False,
        *,
        no_agreement: str = "fallback",
        unseen: str = "pooled",
        missing: str = "spread",
        align: str = "exact",
        tau_range: tuple[float, float] | list[float] = DEFAULT_TAU_RANGE,
        lr: float = 0.05,
        epochs: int = 400,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if unseen not in UNSEEN:
            raise CalibrationError(f"unseen must be one of {UNSEEN}, got {unseen!r}")
        self.unseen = unseen
        self._options: dict[str, Any] = {
            "mask": mask,
            "parity": bool(parity),
            "no_agreement": no_agreement,
            "missing": missing,
            "align": align,
            "tau_range": list(check_tau_range(tau_range)),
            "lr": float(lr),
            "epochs": int(epochs),
            "batch_size": int(batch_size),
            "seed": int(seed),
        }
        self._daca()  # validates the options
        self.temperatures_: dict[str, float] = {}
        self.fallback_subjects_: list[str] = []
        self.unseen_temperature_: float | None = None

    def _daca(self) -> DACA:
        return DACA(scaler="temperature", **self._options)

    def get_config(self) -> dict[str, Any]:
        """Constructor options."""
        return {**self._options, "unseen": self.unseen}

    def get_fitted_params(self) -> dict[str, Any]:
        """``{"temperatures": {subject: τ}, "fallback_subjects", "unseen_temperature"}``."""
        self._check_fitted()
        return {
            "temperatures": dict(self.temperatures_),
            "fallback_subjects": list(self.fallback_subjects_),
            "unseen_temperature": self.unseen_temperature_,
        }

    def _set_params(self, params: dict[str, Any], source: str) -> None:
        temps = params["temperatures"]
        if not isinstance(temps, dict) or not temps:
            raise CalibrationError(f"{source}: 'temperatures' must be a non-empty object")
        out = {}
        for subject, value in temps.items():
            tau = float(float_array(value, (), f"temperatures[{subject!r}]", source))
            if tau <= 0.0:
                raise CalibrationError(f"{source}: τ of subject {subject!r} is {tau} ≤ 0; re-fit")
            out[str(subject)] = tau
        self.temperatures_ = out
        self.fallback_subjects_ = [str(x) for x in params.get("fallback_subjects", [])]
        unseen = params.get("unseen_temperature")
        self.unseen_temperature_ = None if unseen is None else float(unseen)

    def fit(self, target: Scores, reference: Scores) -> Self:
        """Fit one τ per subject of ``target`` (aligned with ``reference`` by id)."""
        if not isinstance(target, Scores) or not isinstance(reference, Scores):
            raise CalibrationError("SubjectDACA.fit(target=..., reference=...) takes two Scores")
        if target.subjects is None:
            raise CalibrationError(
                "SubjectDACA needs subjects in the target Scores (score a task with subjects, "
                "e.g. mmlu), or use DACA for one pooled τ"
            )
        try:
            t, r = align(target, reference, how=self._options["align"])
        except ScoresError as exc:
            raise CalibrationError(f"SubjectDACA: target and reference do not fit: {exc}") from exc
        assert t.subjects is not None
        subjects = np.array([str(x) for x in t.subjects], dtype=object)
        temps: dict[str, float] = {}
        fallback: list[str] = []
        per: dict[str, dict[str, Any]] = {}
        for subject in sorted(set(subjects.tolist())):
            idx = np.flatnonzero(subjects == subject)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CalibrationWarning)
                d = self._daca().fit(target=t.select(idx), reference=r.select(idx))
            temps[subject] = d.temperature
            info = d.fit_info_ or {}
            if info.get("fallback"):
                fallback.append(subject)
            per[subject] = {
                "n": len(idx),
                "n_agree": info.get("n_agree"),
                "n_used": info.get("n_used"),
                "temperature": d.temperature,
                "fallback": bool(info.get("fallback", False)),
                "diverged": bool(info.get("diverged", False)),
            }
        pooled: float | None = None
        if self.unseen == "pooled":
            opts = {**self._options, "no_agreement": "fallback"}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CalibrationWarning)
                pooled = DACA(scaler="temperature", **opts).fit(target=t, reference=r).temperature
        elif self.unseen == "identity":
            pooled = 1.0
        if fallback:
            warn(
                f"SubjectDACA: {len(fallback)} of {len(temps)} subjects have no question in the "
                f"{self._options['mask']!r} mask and keep τ = 1: {', '.join(fallback[:10])}"
            )
        self.temperatures_ = temps
        self.fallback_subjects_ = fallback
        self.unseen_temperature_ = pooled
        self.fit_info_ = to_jsonable(
            {
                "n": len(target),
                "n_total": len(t),
                "n_used": int(sum(v["n_used"] or 0 for v in per.values())),
                **provenance(target),
                "reference": provenance(reference),
                "n_subjects": len(temps),
                "n_fallback": len(fallback),
                "subjects": per,
                "unseen": self.unseen,
            }
        )
        return self

    def subject_temperatures(self, scores: Scores) -> FloatArray:
        """The τ applied to each row of ``scores``."""
        self._check_fitted()
        subjects = scores.subjects if scores.subjects is not None else np.full(len(scores), None)
        out = np.empty(len(scores))
        missing: list[str] = []
        for i, s in enumerate(subjects):
            tau = self.temperatures_.get(str(s)) if s is not None else None
            if tau is None:
                if self.unseen_temperature_ is None:
                    missing.append(str(s))
                    continue
                tau = self.unseen_temperature_
            out[i] = tau
        if missing:
            raise CalibrationError(
                f"SubjectDACA(unseen='error'): {len(missing)} questions have subjects not seen "
                f"in the fit (e.g. {missing[0]!r}); re-fit with unseen='pooled' or 'identity'"
            )
        return out

    def _transform_logits(self, scores: Scores) -> tuple[FloatArray, dict[str, Any]]:
        taus = self.subject_temperatures(scores)
        return scores.logits / taus[:, None], {}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for one value) of ``values``."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        raise CalibrationError("mean_std of no values")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def template_protocol(
    runs: Mapping[str, tuple[Scores, Scores, Scores]],
    metric: Callable[[Scores], float],
    *,
    per_subject: bool = True,
    no_agreement: str = "fallback",
) -> dict[str, Any]:
    """The paper's protocol over prompt templates (e.g. daca1–daca5): mean ± std of a metric.

    ``runs[template] = (target_cal, reference_cal, target_test)``. Per template, DACA is
    fitted on the calibration pair (one τ per subject with ``per_subject``) and ``metric`` is
    computed on the test Scores before and after, averaged over subjects when ``per_subject``
    (so every subject counts, the τ = 1 fallbacks included). Returns per-template values,
    the fallback counts and ``{"vanilla": (mean, std), "daca": (mean, std)}`` over templates.
    """
    per: dict[str, dict[str, Any]] = {}
    for name, (t_cal, r_cal, t_test) in runs.items():
        cal: Calibrator
        if per_subject:
            cal = SubjectDACA(no_agreement=no_agreement).fit(target=t_cal, reference=r_cal)
        else:
            cal = DACA(no_agreement=no_agreement).fit(target=t_cal, reference=r_cal)
        calibrated = cal.transform(t_test)
        if per_subject:
            if t_test.subjects is None:
                raise CalibrationError(f"template {name!r}: the test Scores have no subjects")
            groups = sorted({str(s) for s in t_test.subjects})
            subj = np.array([str(s) for s in t_test.subjects], dtype=object)
            vanilla = [metric(t_test.select(np.flatnonzero(subj == g))) for g in groups]
            daca = [metric(calibrated.select(np.flatnonzero(subj == g))) for g in groups]
            v, d = float(np.mean(vanilla)), float(np.mean(daca))
        else:
            v, d = metric(t_test), metric(calibrated)
        info = cal.fit_info_ or {}
        per[name] = {
            "vanilla": v,
            "daca": d,
            "n_fallback": int(info.get("n_fallback", 1 if info.get("fallback") else 0)),
            "n_subjects": int(info.get("n_subjects", 1)),
        }
    return {
        "templates": per,
        "vanilla": mean_std([p["vanilla"] for p in per.values()]),
        "daca": mean_std([p["daca"] for p in per.values()]),
        "n_fallback": {k: p["n_fallback"] for k, p in per.items()},
    }
