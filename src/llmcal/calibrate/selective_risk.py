"""Selective answering with a risk bound (Learn-then-Test): answer only when confident enough.

Answer a question when its confidence is ≥ λ, abstain otherwise. :class:`SelectiveRisk` picks λ
on a labelled calibration split so that, with probability ≥ 1 − δ over that split, the error
rate among the answered questions, P(wrong | confidence ≥ λ), is ≤ r.

**How.** Candidate thresholds form a fixed grid (chosen before seeing data): 1, then
1 − 10^−e for e = 9, 8.5, …, 2.5, then j/G for j = G−1, …, 0 (``grid_size`` G). For each
candidate the null "risk(λ) > r" is tested with the exact binomial p-value
P(Bin(n_λ, r) ≤ e_λ) (n_λ answered calibration questions, e_λ of them wrong; valid because,
given n_λ, the answered questions are i.i.d. from the answered population). The p-value is
≤ δ exactly when the one-sided Clopper–Pearson upper bound on the risk is ≤ r.

* ``method="fixed_sequence"`` (default): test from high to low confidence at level δ and stop at
  the first candidate that fails; λ is the last one that passed. This controls the family-wise
  error at δ without any multiplicity correction, but a candidate near 1 that answers few
  questions can never pass and would end the sequence at once. So the sequence starts at the
  highest candidate that a small *pilot* part of the calibration split (``pilot_fraction``,
  picked by a hash of the question ids; only its confidences are used) expects to answer at
  least 2 · ⌈log δ / log(1 − r)⌉ tested questions; the pilot is then left out of the test, so
  the start is independent of the tested data and the guarantee stays exact.
  ``pilot_fraction=0`` starts at the top of the grid.
* ``method="bonferroni"``: test every candidate at level δ/m (m candidates, whole split, no
  pilot) and take the lowest λ that passes. Valid without ordering assumptions, less power.

When no candidate passes, λ is ∞: the rule answers nothing, and ``fit`` warns. Works on both
views of Scores through ``confidences()`` / ``correct()`` (chosen option among K, or P(True) of
a given free-form answer).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy import special

from llmcal.calibrate.base import warn
from llmcal.calibrate.guarantee import (
    Guarantee,
    check_unit_interval,
    id_uniforms,
    read_header,
    require_calibration_labels,
    scores_view,
    write_table,
)
from llmcal.errors import CalibrationError, ConfigError, ScoresError
from llmcal.metrics.binomial import binomial_upper_bound, clopper_pearson
from llmcal.scores import Scores

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "METHODS",
    "SELECTIVE_FORMAT",
    "SelectiveDecisions",
    "SelectiveRisk",
    "risk_pvalues",
    "selective_summary",
    "threshold_grid",
]

METHODS = ("fixed_sequence", "bonferroni")
SELECTIVE_FORMAT = "llmcal-selective"


def threshold_grid(grid_size: int = 200) -> npt.NDArray[np.float64]:
    """The fixed candidate thresholds, highest first (see the module docstring)."""
    linear = np.arange(grid_size - 1, -1, -1, dtype=np.float64) / grid_size
    tail = 1.0 - 10.0 ** -np.arange(9.0, 2.49, -0.5)
    tail = tail[tail > linear[0]]
    return np.concatenate(([1.0], tail, linear))


def _counts(
    conf: npt.NDArray[np.float64], wrong: npt.NDArray[np.bool_], grid: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Answered count and error count at each threshold (answer when conf >= threshold)."""
    order = np.argsort(conf, kind="stable")
    asc, w = conf[order], wrong[order].astype(np.int64)
    suffix = np.concatenate((np.cumsum(w[::-1])[::-1], [0]))
    idx = np.searchsorted(asc, grid, side="left")
    return (conf.shape[0] - idx).astype(np.int64), suffix[idx].astype(np.int64)


def risk_pvalues(
    n_answered: npt.ArrayLike, n_errors: npt.ArrayLike, risk: float
) -> npt.NDArray[np.float64]:
    """Exact binomial p-values of "risk > r": P(Bin(n, r) <= e); 1 where nothing is answered."""
    n = np.asarray(n_answered, dtype=np.int64)
    e = np.asarray(n_errors, dtype=np.int64)
    with np.errstate(all="ignore"):
        p = special.bdtr(e, np.maximum(n, 1), risk)
    return np.asarray(np.where((n == 0) | (e >= n), 1.0, p), dtype=np.float64)


class SelectiveRisk(Guarantee):
    """Answer when confidence ≥ λ, with P(error rate among answered ≤ risk) ≥ 1 − delta."""

    kind: ClassVar[str] = "selective"

    def __init__(
        self,
        risk: float = 0.1,
        delta: float = 0.05,
        method: str = "fixed_sequence",
        grid_size: int = 200,
        pilot_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.risk = check_unit_interval(risk, "risk", "--risk")
        self.delta = check_unit_interval(delta, "delta", "--delta")
        if method not in METHODS:
            raise ConfigError(f"method (--method) must be one of {METHODS}, got {method!r}")
        if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
            raise ConfigError(f"grid_size must be an integer >= 2, got {grid_size!r}")
        if (
            isinstance(pilot_fraction, bool)
            or not isinstance(pilot_fraction, int | float)
            or not 0.0 <= pilot_fraction < 1.0
        ):
            raise ConfigError(f"pilot_fraction must be in [0, 1), got {pilot_fraction!r}")
        self.method, self.grid_size = method, grid_size
        self.pilot_fraction, self.seed = float(pilot_fraction), int(seed)
        self.threshold_: float | None = None

    def get_config(self) -> dict[str, Any]:
        """risk, delta, method, grid_size, pilot_fraction, seed."""
        return {
            "risk": self.risk,
            "delta": self.delta,
            "method": self.method,
            "grid_size": self.grid_size,
            "pilot_fraction": self.pilot_fraction,
            "seed": self.seed,
        }

    def get_params(self) -> dict[str, Any]:
        """The threshold (None = answer nothing) and the bound it was certified with."""
        self._check_fitted()
        assert self.fit_info_ is not None
        t = self.threshold_
        return {
            "threshold": None if t is None or not math.isfinite(t) else t,
            "risk_upper_bound": self.fit_info_.get("risk_upper_bound"),
        }

    def _set_params(self, params: dict[str, Any], source: str) -> None:
        t = params["threshold"]
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)):
            raise CalibrationError(f"{source}: threshold must be a number or null, got {t!r}")
        self.threshold_ = math.inf if t is None else float(t)

    @property
    def threshold(self) -> float:
        """Answer when confidence >= this (``inf``: no threshold met the bound)."""
        self._check_fitted()
        assert self.threshold_ is not None
        return self.threshold_

    @property
    def answers_nothing(self) -> bool:
        """True when no candidate threshold met the bound."""
        return not math.isfinite(self.threshold)

    def fit(self, scores: Scores) -> Self:
        """Choose λ on a labelled calibration split (see the module docstring)."""
        require_calibration_labels(scores, "SelectiveRisk.fit")
        conf = np.asarray(scores.confidences(), dtype=np.float64)
        wrong = ~np.asarray(scores.correct(), dtype=bool)
        grid = threshold_grid(self.grid_size)
        m = grid.shape[0]
        start, n_pilot = 0, 0
        test_mask = np.ones(len(scores), dtype=bool)
        if self.method == "fixed_sequence" and self.pilot_fraction > 0:
            pilot = id_uniforms(scores.ids, self.seed, "pilot") < self.pilot_fraction
            n_pilot = int(pilot.sum())
            if 0 < n_pilot < len(scores):
                test_mask = ~pilot
                start = self._start(conf[pilot], grid, int(test_mask.sum()))
            else:
                n_pilot = 0
        n_ans, n_err = _counts(conf[test_mask], wrong[test_mask], grid)
        pvals = risk_pvalues(n_ans, n_err, self.risk)
        if self.method == "fixed_sequence":
            level = self.delta
            # fixed sequence: walk down from the start while each candidate passes
            fails = np.flatnonzero(pvals[start:] > level)
            stop = start + int(fails[0]) if fails.size else m
            chosen = stop - 1 if stop > start else None
            tested = min(stop + 1, m) - start
        else:
            level = self.delta / m
            passed = np.flatnonzero(pvals <= level)
            chosen = int(passed[-1]) if passed.size else None
            tested = m
        self.threshold_ = math.inf if chosen is None else float(grid[chosen])
        all_ans, all_err = _counts(conf, wrong, np.array([self.threshold_]))
        info: dict[str, Any] = {
            "method": self.method,
            "n_candidates": m,
            "n_pilot": n_pilot,
            "n_tested_split": int(test_mask.sum()),
            "start_threshold": float(grid[start]) if self.method == "fixed_sequence" else None,
            "n_hypotheses_tested": int(tested),
            "test_level": level,
            "calibration_coverage": float(all_ans[0]) / len(scores),
            "calibration_risk": float(all_err[0]) / all_ans[0] if all_ans[0] else None,
        }
        if chosen is None:
            info.update(risk_upper_bound=None, n_answered=0, n_errors=0)
            warn(
                f"selective: no confidence threshold keeps the error rate <= {self.risk:g} with "
                f"probability >= {1 - self.delta:g} on these {len(scores)} calibration "
                "questions; the rule answers nothing. Use more calibration questions, a larger "
                "--risk or --delta, or a better-ranked model"
            )
        else:
            k, n = int(n_err[chosen]), int(n_ans[chosen])
            info.update(
                risk_upper_bound=binomial_upper_bound(k, n, level), n_answered=n, n_errors=k
            )
        self.fit_info_ = self._fit_record(scores, **info)
        return self

    def _start(
        self, pilot_conf: npt.NDArray[np.float64], grid: npt.NDArray[np.float64], n_test: int
    ) -> int:
        """Where the sequence starts: the first candidate the pilot expects to answer enough.

        A candidate can pass only when it answers at least n_min = ⌈log δ / log(1 − r)⌉
        questions (n_min with no error at all); the start is the highest candidate at which
        the pilot's share of answered questions, scaled to the tested part, reaches 2 · n_min.
        """
        n_min = math.ceil(math.log(self.delta) / math.log1p(-self.risk) - 1e-9)
        share = (pilot_conf[None, :] >= grid[:, None]).mean(axis=1)
        ok = np.flatnonzero(share * n_test >= 2 * n_min)
        return int(ok[0]) if ok.size else grid.shape[0] - 1

    def decide(self, scores: Scores) -> SelectiveDecisions:
        """Answer / abstain for every question of ``scores``."""
        self._check_fitted()
        conf = np.asarray(scores.confidences(), dtype=np.float64)
        correct: list[bool | None] = [None] * len(scores)
        lab = np.flatnonzero(scores.labels >= 0)
        if lab.size:
            sub = scores.select(lab).correct()
            for i, c in zip(lab.tolist(), sub.tolist(), strict=True):
                correct[i] = bool(c)
        view = scores_view(scores)
        return SelectiveDecisions(
            ids=scores.ids,
            confidence=conf,
            answered=conf >= self.threshold,
            correct=np.array(correct, dtype=object),
            labels=scores.labels,
            prediction=scores.predictions() if view == "options" else None,
            meta={**scores.meta, "view": view, "selective": self.summary()},
            subjects=scores.subjects,
        )


@dataclass(frozen=True, eq=False)
class SelectiveDecisions:
    """Answer / abstain decisions of a selective rule, one row per question.

    Saved as Parquet (format ``llmcal-selective``): ``id`` (string), ``confidence`` (float64),
    ``answered`` (bool), ``correct`` (bool, null when unlabelled), ``label`` (int, −1 =
    unknown), ``prediction`` (chosen option, options view only) and ``subject`` (when known);
    the ``llmcal`` schema metadata holds the Scores' meta plus ``selective`` (the rule).
    """

    ids: npt.NDArray[np.object_]
    confidence: npt.NDArray[np.float64]
    answered: npt.NDArray[np.bool_]
    correct: npt.NDArray[np.object_]
    labels: npt.NDArray[np.int64]
    prediction: npt.NDArray[np.int64] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    subjects: npt.NDArray[np.object_] | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the decisions as Parquet atomically."""
        import pyarrow as pa

        columns: dict[str, Any] = {
            "id": pa.array(self.ids.tolist(), type=pa.string()),
            "confidence": pa.array(self.confidence, type=pa.float64()),
            "answered": pa.array(self.answered.tolist(), type=pa.bool_()),
            "correct": pa.array(self.correct.tolist(), type=pa.bool_()),
            "label": pa.array(self.labels, type=pa.int64()),
        }
        if self.prediction is not None:
            columns["prediction"] = pa.array(self.prediction, type=pa.int64())
        if self.subjects is not None:
            columns["subject"] = pa.array(self.subjects.tolist(), type=pa.string())
        header = {"format": SELECTIVE_FORMAT, "format_version": 1, "meta": self.meta}
        return write_table(path, columns, header)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SelectiveDecisions:
        """Read a decisions Parquet file written by :meth:`save`."""
        path = Path(path)
        table, header = read_header(path, SELECTIVE_FORMAT)
        missing = {"id", "confidence", "answered", "correct", "label"} - set(table.column_names)
        if missing:
            raise ScoresError(f"{path}: missing column(s) {sorted(missing)}")
        cols = set(table.column_names)
        return cls(
            ids=np.array(table.column("id").to_pylist(), dtype=object),
            confidence=np.asarray(table.column("confidence").to_pylist(), dtype=np.float64),
            answered=np.asarray(table.column("answered").to_pylist(), dtype=bool),
            correct=np.array(table.column("correct").to_pylist(), dtype=object),
            labels=np.asarray(table.column("label").to_pylist(), dtype=np.int64),
            prediction=np.asarray(table.column("prediction").to_pylist(), dtype=np.int64)
            if "prediction" in cols
            else None,
            meta=dict(header.get("meta") or {}),
            subjects=np.array(table.column("subject").to_pylist(), dtype=object)
            if "subject" in cols
            else None,
        )


def selective_summary(decisions: SelectiveDecisions, ci_alpha: float = 0.05) -> dict[str, Any]:
    """The guarantee, the coverage it leaves and (on labelled rows) the realised risk."""
    rule = decisions.meta.get("selective") or {}
    config, params = rule.get("config") or {}, rule.get("params") or {}
    r, d = config.get("risk"), float(config.get("delta") or math.nan)
    n = len(decisions)
    answered = decisions.answered
    threshold = params.get("threshold")
    if threshold is None:
        guarantee = (
            f"no confidence threshold met the bound (error rate <= {r} with probability >= "
            f"{1 - d:g}) on the calibration split: the rule answers nothing"
        )
    else:
        guarantee = (
            f"with probability >= {1 - d:g} over the calibration split, the error rate "
            f"among answered questions is <= {r} (answer when confidence >= {threshold:.6g})"
        )
    out: dict[str, Any] = {
        "n": n,
        "risk": r,
        "delta": d,
        "method": config.get("method"),
        "threshold": threshold,
        "answers_nothing": threshold is None,
        "guarantee": guarantee,
        "n_answered": int(answered.sum()),
        "coverage": float(answered.mean()) if n else math.nan,
        "ci_method": f"Clopper–Pearson exact {100 * (1 - ci_alpha):g}% interval",
    }
    known = np.array([c is not None for c in decisions.correct.tolist()], dtype=bool)
    right = np.array([bool(c) for c in decisions.correct.tolist()], dtype=bool)
    sel = answered & known
    out["n_answered_labelled"] = int(sel.sum())
    if known.any():
        out["accuracy_all"] = float(right[known].mean())
    if sel.any():
        errors = int((~right[sel]).sum())
        out["n_errors"] = errors
        out["realised_risk"] = errors / int(sel.sum())
        out["realised_risk_ci"] = list(clopper_pearson(errors, int(sel.sum()), ci_alpha))
        out["within_bound"] = bool(r is not None and errors / int(sel.sum()) <= float(r))
    return out
