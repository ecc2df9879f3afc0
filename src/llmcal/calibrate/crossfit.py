"""Cross-fitted calibration: k-fold out-of-fold predictions when there is no separate cal split.

``CrossFitted(TemperatureScaling(), n_splits=5).fit(scores)`` splits the labelled questions into
``n_splits`` stratified folds (seeded), fits one copy of the calibrator on all folds but one and
calibrates the held-out fold with it. ``fit_transform`` returns these out-of-fold calibrated
Scores (as scikit-learn's ``cross_val_predict``, or ``TargetEncoder.fit_transform``): every
question is calibrated by a calibrator that never saw its label, so metrics on them are honest.

New questions (``transform``) are calibrated as scikit-learn's ``CalibratedClassifierCV``:
``ensemble=True`` averages the probabilities of the ``n_splits`` fold calibrators;
``ensemble=False`` uses one calibrator fitted on all the questions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from llmcal.calibrate.base import (
    CALIBRATORS,
    Calibrator,
    as_scores,
    provenance,
    require_labelled_rows,
    to_jsonable,
)
from llmcal.errors import CalibrationError
from llmcal.scores import Scores, log_softmax

if TYPE_CHECKING:
    from typing_extensions import Self

FloatArray = npt.NDArray[np.float64]


def stratified_folds(
    labels: npt.ArrayLike, n_splits: int, seed: int | None = 0
) -> npt.NDArray[np.int64]:
    """Fold index (0 … n_splits−1) per row: each label's rows dealt round-robin over the folds.

    Rows are shuffled within each label with ``seed`` (``None``: kept in order); the deal
    continues where the previous label stopped, so fold sizes differ by at most one.
    """
    y = np.asarray(labels)
    folds = np.empty(len(y), dtype=np.int64)
    rng = np.random.default_rng(seed) if seed is not None else None
    start = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if rng is not None:
            idx = rng.permutation(idx)
        folds[idx] = (start + np.arange(len(idx))) % n_splits
        start = (start + len(idx)) % n_splits
    return folds


def _pad(z: FloatArray, k: int) -> FloatArray:
    out = np.full((z.shape[0], k), -np.inf)
    out[:, : z.shape[1]] = z
    return out


class CrossFitted(Calibrator, wrapper=True):
    """k-fold cross-fitting of a supervised calibrator (see the module docstring).

    ``calibrator`` is an unfitted calibrator (or its kind name, or ``{"kind", "config"}``);
    ``ensemble`` chooses how new questions are calibrated; ``seed`` (``None`` = no shuffle)
    fixes the folds.
    """

    kind: ClassVar[str] = "cross_fitted"

    def __init__(
        self,
        calibrator: Calibrator | str | dict[str, Any] = "temperature",
        n_splits: int = 5,
        ensemble: bool = True,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.calibrator = self._base(calibrator)
        if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 2:
            raise CalibrationError(f"n_splits must be an integer ≥ 2, got {n_splits!r}")
        self.n_splits = n_splits
        self.ensemble = bool(ensemble)
        self.seed = None if seed is None else int(seed)
        self.members_: list[Calibrator] | None = None
        self.folds_: npt.NDArray[np.int64] | None = None
        self.oof_: Scores | None = None
        kind = self.calibrator.output_logit_kind
        self.output_logit_kind = "probs_log" if self.ensemble else kind  # type: ignore[misc]

    @staticmethod
    def _base(spec: Any) -> Calibrator:
        if isinstance(spec, CrossFitted):
            raise CalibrationError("CrossFitted cannot wrap another CrossFitted")
        if isinstance(spec, Calibrator):
            if spec.kind == "daca":
                raise CalibrationError(
                    "DACA never uses labels, so there is nothing to cross-fit: fit it on all the "
                    "(unlabelled) questions with DACA().fit(target, reference)"
                )
            return spec.clone()
        kind: Any = spec if isinstance(spec, str) else None
        config: Any = {}
        if isinstance(spec, dict):
            kind, config = spec.get("kind"), spec.get("config", {})
        if kind == "daca":
            return CrossFitted._base(CALIBRATORS["daca"]())
        if not isinstance(kind, str) or kind not in CALIBRATORS or not isinstance(config, dict):
            raise CalibrationError(
                f"CrossFitted: calibrator must be a Calibrator, a kind name or "
                f'{{"kind", "config"}}, got {spec!r}; kinds: {sorted(CALIBRATORS)}'
            )
        return CALIBRATORS[kind](**config)

    def get_config(self) -> dict[str, Any]:
        """Constructor options (the wrapped calibrator as ``{"kind", "config"}``)."""
        return {
            "calibrator": {"kind": self.calibrator.kind, "config": self.calibrator.get_config()},
            "n_splits": self.n_splits,
            "ensemble": self.ensemble,
            "seed": self.seed,
        }

    def get_fitted_params(self) -> dict[str, Any]:
        """``{"members": [artefact dicts]}``: the fold calibrators (ensemble) or the full-data one."""
        self._check_fitted()
        assert self.members_ is not None
        return {"members": [m.to_dict() for m in self.members_]}

    def _set_params(self, params: dict[str, Any], source: str) -> None:
        members = params["members"]
        if not isinstance(members, list) or not members:
            raise CalibrationError(f"{source}: 'members' must be a non-empty list; re-fit it")
        loaded = [Calibrator.from_dict(m, f"{source} (member {i})") for i, m in enumerate(members)]
        if any(m.kind != self.calibrator.kind for m in loaded):
            raise CalibrationError(
                f"{source}: members are not all {self.calibrator.kind!r} calibrators; re-fit it"
            )
        self.members_ = loaded

    def fit(self, scores: Scores | npt.ArrayLike, labels: npt.ArrayLike | None = None) -> Self:
        """Fit ``n_splits`` fold calibrators (and, with ``ensemble=False``, one on all rows)."""
        scores = as_scores(scores, labels, "CrossFitted.fit")
        require_labelled_rows(scores, "CrossFitted.fit")
        n, k = len(scores), scores.k
        if n < self.n_splits:
            raise CalibrationError(
                f"CrossFitted.fit: {n} questions cannot be split into n_splits={self.n_splits} "
                "folds; use fewer folds or more questions"
            )
        folds = stratified_folds(scores.labels, self.n_splits, self.seed)
        oof = np.full((n, k), -np.inf)
        members: list[Calibrator] = []
        infos: list[dict[str, Any]] = []
        for f in range(self.n_splits):
            held = folds == f
            member = self.calibrator.clone()
            try:
                member.fit(scores.select(~held))
            except CalibrationError as exc:
                raise CalibrationError(f"CrossFitted fold {f + 1}/{self.n_splits}: {exc}") from exc
            z = member.transform(scores.select(held)).logits
            oof[held] = _pad(log_softmax(z), k)
            members.append(member)
            infos.append(
                {"n_held_out": int(held.sum()), **member.get_fitted_params()}
                if len(str(member.get_fitted_params())) < 500
                else {"n_held_out": int(held.sum())}
            )
        if not self.ensemble:
            members = [self.calibrator.clone().fit(scores)]
        self.members_, self.folds_ = members, folds
        y = scores.labels
        self.fit_info_ = to_jsonable(
            {
                "n": n,
                "n_used": n,
                **provenance(scores),
                "n_splits": self.n_splits,
                "ensemble": self.ensemble,
                "folds": infos,
                "oof_nll": float(-np.mean(oof[np.arange(n), y])),
                "oof_accuracy": float(np.mean(np.argmax(oof, axis=1) == y)),
            }
        )
        record = {
            "kind": self.kind,
            "config": self.get_config(),
            "out_of_fold": True,
            "fitted_on": {"task": scores.meta.get("task"), "model": scores.meta.get("model")},
        }
        meta = {
            **scores.meta,
            "calibration": [*scores.meta.get("calibration", []), to_jsonable(record)],
            "logit_kind": "probs_log",
        }
        meta.pop("topk", None)
        self.oof_ = Scores(
            ids=scores.ids,
            logits=oof,
            labels=y,
            meta=meta,
            subjects=scores.subjects,
            n_options=scores.n_options,
        )
        return self

    def fit_transform(self, scores: Any, *args: Any, **kwargs: Any) -> Scores:
        """Fit, and return the OUT-OF-FOLD calibrated Scores (not ``transform(scores)``)."""
        self.fit(scores, *args, **kwargs)
        assert self.oof_ is not None
        return self.oof_

    def _transform_logits(self, scores: Scores) -> tuple[FloatArray, dict[str, Any]]:
        assert self.members_ is not None
        if len(self.members_) == 1:
            return self.members_[0].transform(scores).logits, {"n_members": 1}
        probs = np.mean([m.transform(scores).probs() for m in self.members_], axis=0)
        with np.errstate(divide="ignore"):
            return np.log(probs), {"n_members": len(self.members_)}
