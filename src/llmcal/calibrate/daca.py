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
    Calibrator,
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
    ) -> None:
        super().__init__()
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
        assert self.theta_ is not None and self.k_ is not None
        return split_affine(self.theta_, self.scaler, self.k_)

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
        }

    def get_params(self) -> dict[str, Any]:
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
            raise CalibrationError(
                f"DACA: target and reference do not fit together: {exc}. Score the same task "
                "(same questions) with both models, or pass align='inner' to use the common ids"
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

    def fit(self, target: Scores, reference: Scores) -> Self:
        """Fit on unlabelled ``target`` (PoLM) Scores against ``reference`` (PLM) Scores."""
        t, zt, zr, p, ref_info = self._prepare(target, reference)
        n, k = zt.shape
        ref_pred = np.argmax(zr, axis=1)
        agree = np.argmax(zt, axis=1) == ref_pred
        n_agree = int(agree.sum())
        sel = _select(agree, self.mask)
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

    def fit_transform(self, target: Scores, reference: Scores) -> Scores:
        """Fit, then transform ``target``."""
        return self.fit(target, reference).transform(target)

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
