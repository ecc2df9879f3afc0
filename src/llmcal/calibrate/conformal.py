"""Split conformal prediction sets for multiple choice: LAC, APS and RAPS scores.

Fit on a labelled calibration split of n questions: compute the nonconformity score s_i of each
true option and take q̂ = the ⌈(n+1)(1−α)⌉-th smallest score (the finite-sample quantile at level
⌈(n+1)(1−α)⌉/n). On a new question the set is every option whose score is ≤ q̂. When the
calibration and test questions are exchangeable,

    1 − α ≤ P(true option ∈ set) ≤ 1 − α + 1/(n+1)

(the upper bound needs scores without ties, which holds for continuous probabilities and for
randomised APS/RAPS). When ⌈(n+1)(1−α)⌉ > n there is no finite quantile: every set is all
options (coverage 1) and a warning says how many questions the α needs.

Scores (p sorted from the most likely option, rank ρ(k) = 1 for the top option):

* ``lac`` (least ambiguous set-valued classifier, Sadinle et al. 2019): s(k) = 1 − p_k.
* ``aps`` (adaptive prediction sets, Romano et al. 2020): s(k) = Σ_{ρ(j) ≤ ρ(k)} p_j, the mass
  of the options at least as likely as k; randomised (``randomized=True``): the last term is
  U · p_k with U ~ Uniform(0, 1), which removes ties and makes the coverage exact.
* ``raps`` (regularised APS, Angelopoulos et al. 2021): the APS score + λ · max(0, ρ(k) − k_reg),
  which penalises large sets.

U is drawn per question from a hash of (seed, id), so a question's set does not depend on the
other questions in the file. Options beyond a row's ``n_options`` are never in a set.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

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
from llmcal.metrics.binomial import clopper_pearson
from llmcal.scores import Scores

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "SCORE_KINDS",
    "SETS_FORMAT",
    "ConformalPredictor",
    "PredictionSets",
    "conformal_quantile",
    "nonconformity",
    "set_coverage",
]

SCORE_KINDS = ("lac", "aps", "raps")
SETS_FORMAT = "llmcal-prediction-sets"


def conformal_rank(n: int, alpha: float) -> int:
    """⌈(n+1)(1−α)⌉: the rank of q̂ among n calibration scores (may exceed n)."""
    # round first so that e.g. (99+1)(1-0.1) = 90.00000000000001 gives 90, not 91
    return math.ceil(round((n + 1) * (1.0 - alpha), 9))


def conformal_quantile(cal_scores: npt.ArrayLike, alpha: float) -> float:
    """q̂: the ⌈(n+1)(1−α)⌉-th smallest score; ``inf`` when that rank exceeds n."""
    s = np.sort(np.asarray(cal_scores, dtype=np.float64))
    k = conformal_rank(s.shape[0], alpha)
    return math.inf if k > s.shape[0] else float(s[k - 1])


def nonconformity(
    probs: npt.ArrayLike,
    n_options: npt.ArrayLike,
    score: str = "lac",
    u: npt.ArrayLike | None = None,
    lam: float = 0.01,
    k_reg: int = 1,
) -> npt.NDArray[np.float64]:
    """The score of every option (n × K); options beyond ``n_options`` get ``inf``.

    ``u`` (n uniforms) randomises APS/RAPS; None gives the deterministic scores.
    """
    p = np.asarray(probs, dtype=np.float64)
    n, k = p.shape
    valid = np.arange(k)[None, :] < np.asarray(n_options, dtype=np.int64)[:, None]
    if score == "lac":
        out = 1.0 - p
    elif score in ("aps", "raps"):
        masked = np.where(valid, p, -1.0)  # padding sorts last
        order = np.argsort(-masked, axis=1, kind="stable")
        sorted_p = np.take_along_axis(np.where(valid, p, 0.0), order, axis=1)
        cum = np.cumsum(sorted_p, axis=1)
        if u is None:
            s_sorted = cum
        else:
            uu = np.asarray(u, dtype=np.float64).reshape(n, 1)
            s_sorted = cum - sorted_p + uu * sorted_p
        if score == "raps":
            rank = np.arange(1, k + 1, dtype=np.float64)[None, :]
            s_sorted = s_sorted + lam * np.maximum(0.0, rank - k_reg)
        out = np.empty_like(s_sorted)
        np.put_along_axis(out, order, s_sorted, axis=1)
    else:
        raise ConfigError(f"conformal score must be one of {SCORE_KINDS}, got {score!r}")
    return np.asarray(np.where(valid, out, np.inf), dtype=np.float64)


@dataclass(frozen=True, eq=False)
class PredictionSets:
    """Conformal prediction sets: a membership mask (n × K), labels, ids, subjects and meta.

    Saved as Parquet (format ``llmcal-prediction-sets``): columns ``id`` (string), ``set``
    (list of option indices, 0 = A, ascending), ``label`` (int, −1 = unknown), ``n_options``
    (int) and ``subject`` (string, when known); the ``llmcal`` schema metadata holds
    ``{"format": "llmcal-prediction-sets", "format_version": 1, "meta": {...}}`` with the
    Scores' meta plus ``conformal`` (kind, config, fitted q̂, what it was fitted on).
    """

    ids: npt.NDArray[np.object_]
    members: npt.NDArray[np.bool_]
    labels: npt.NDArray[np.int64]
    n_options: npt.NDArray[np.int64]
    meta: dict[str, Any] = field(default_factory=dict)
    subjects: npt.NDArray[np.object_] | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def sizes(self) -> npt.NDArray[np.int64]:
        """Number of options in each set."""
        return np.asarray(self.members.sum(axis=1), dtype=np.int64)

    def sets(self) -> list[list[int]]:
        """Each set as a sorted list of option indices."""
        return [np.flatnonzero(row).tolist() for row in self.members]

    @property
    def has_labels(self) -> bool:
        """True when every row is labelled."""
        return bool(len(self) and (self.labels >= 0).all())

    def covered(self) -> npt.NDArray[np.bool_]:
        """Whether each labelled row's true option is in its set (labelled rows only)."""
        lab = self.labels >= 0
        rows = np.flatnonzero(lab)
        return np.asarray(self.members[rows, self.labels[rows]], dtype=bool)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the sets as Parquet atomically."""
        import pyarrow as pa

        columns: dict[str, Any] = {
            "id": pa.array(self.ids.tolist(), type=pa.string()),
            "set": pa.array(self.sets(), type=pa.list_(pa.int64())),
            "label": pa.array(self.labels, type=pa.int64()),
            "n_options": pa.array(self.n_options, type=pa.int64()),
        }
        if self.subjects is not None:
            columns["subject"] = pa.array(self.subjects.tolist(), type=pa.string())
        header = {"format": SETS_FORMAT, "format_version": 1, "meta": self.meta}
        return write_table(path, columns, header)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PredictionSets:
        """Read a prediction-sets Parquet file written by :meth:`save`."""
        path = Path(path)
        table, header = read_header(path, SETS_FORMAT)
        missing = {"id", "set", "label", "n_options"} - set(table.column_names)
        if missing:
            raise ScoresError(f"{path}: missing column(s) {sorted(missing)}")
        n_opt = np.asarray(table.column("n_options").to_pylist(), dtype=np.int64)
        labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
        k = int(n_opt.max()) if n_opt.size else 2
        members = np.zeros((len(n_opt), k), dtype=bool)
        for i, row in enumerate(table.column("set").to_pylist()):
            idx = np.asarray(row or [], dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n_opt[i]):
                raise ScoresError(
                    f"{path}: row {i}: set {row} has options outside 0..{n_opt[i] - 1}"
                )
            members[i, idx] = True
        if ((labels < -1) | (labels >= n_opt)).any():
            raise ScoresError(f"{path}: a label is outside -1..n_options-1")
        subjects = None
        if "subject" in table.column_names:
            subjects = np.array(table.column("subject").to_pylist(), dtype=object)
        return cls(
            ids=np.array(table.column("id").to_pylist(), dtype=object),
            members=members,
            labels=labels,
            n_options=n_opt,
            meta=dict(header.get("meta") or {}),
            subjects=subjects,
        )


class ConformalPredictor(Guarantee):
    """Split conformal prediction sets with coverage ≥ 1 − α (LAC, APS or RAPS scores)."""

    kind: ClassVar[str] = "conformal"

    def __init__(
        self,
        alpha: float = 0.1,
        score: str = "lac",
        randomized: bool = False,
        lam: float = 0.01,
        k_reg: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.alpha = check_unit_interval(alpha, "alpha", "--alpha")
        if score not in SCORE_KINDS:
            raise ConfigError(f"score (--score) must be one of {SCORE_KINDS}, got {score!r}")
        if randomized and score == "lac":
            raise ConfigError("randomized (--randomized) applies to the aps and raps scores")
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not lam >= 0:
            raise ConfigError(f"lam (--lam) must be a number >= 0, got {lam!r}")
        if isinstance(k_reg, bool) or not isinstance(k_reg, int) or k_reg < 0:
            raise ConfigError(f"k_reg (--k-reg) must be an integer >= 0, got {k_reg!r}")
        self.score, self.randomized = score, bool(randomized)
        self.lam, self.k_reg, self.seed = float(lam), int(k_reg), int(seed)
        self.qhat_: float | None = None

    def get_config(self) -> dict[str, Any]:
        """alpha, score, randomized, lam, k_reg, seed."""
        return {
            "alpha": self.alpha,
            "score": self.score,
            "randomized": self.randomized,
            "lam": self.lam,
            "k_reg": self.k_reg,
            "seed": self.seed,
        }

    def get_params(self) -> dict[str, Any]:
        """q̂ (None = infinite: every set is all options) and the calibration size."""
        self._check_fitted()
        assert self.fit_info_ is not None
        q = self.qhat_
        return {
            "qhat": None if q is None or not math.isfinite(q) else q,
            "n": self.fit_info_["n"],
            "rank": self.fit_info_["rank"],
        }

    def _set_params(self, params: dict[str, Any], source: str) -> None:
        q = params["qhat"]
        if q is not None and (isinstance(q, bool) or not isinstance(q, int | float)):
            raise CalibrationError(f"{source}: qhat must be a number or null, got {q!r}")
        self.qhat_ = math.inf if q is None else float(q)

    @property
    def qhat(self) -> float:
        """The fitted threshold q̂ on the nonconformity score (``inf`` = all options)."""
        self._check_fitted()
        assert self.qhat_ is not None
        return self.qhat_

    def _check_scores(self, scores: Scores, who: str) -> None:
        if scores_view(scores) == "answer":
            raise CalibrationError(
                f"{who}: conformal prediction sets are for multiple-choice (options-view) "
                "Scores, but these hold P(True) of given answers (view 'answer'); use "
                "selective answering (llmcal fit selective) for free-form answers"
            )

    def option_scores(self, scores: Scores, salt: str = "test") -> npt.NDArray[np.float64]:
        """The nonconformity score of every option of every question (n × K)."""
        u = id_uniforms(scores.ids, self.seed, salt) if self.randomized else None
        return nonconformity(
            scores.probs(), scores.n_options, self.score, u=u, lam=self.lam, k_reg=self.k_reg
        )

    def fit(self, scores: Scores) -> Self:
        """q̂ from the scores of the true options of a labelled calibration split."""
        self._check_scores(scores, "ConformalPredictor.fit")
        require_calibration_labels(scores, "ConformalPredictor.fit")
        all_scores = self.option_scores(scores, salt="calibration")
        true = all_scores[np.arange(len(scores)), scores.labels]
        n = len(scores)
        rank = conformal_rank(n, self.alpha)
        self.qhat_ = conformal_quantile(true, self.alpha)
        trivial = not math.isfinite(self.qhat_)
        if trivial:
            need = math.ceil(1.0 / self.alpha - 1.0 - 1e-9)
            warn(
                f"conformal: alpha={self.alpha:g} is too small for {n} calibration questions "
                f"(needs ⌈(n+1)(1−α)⌉ <= n, i.e. n >= {need}); every prediction set will be "
                "all options (coverage 1). Use more calibration questions or a larger alpha"
            )
        self.fit_info_ = self._fit_record(
            scores,
            rank=rank,
            target_coverage=1.0 - self.alpha,
            coverage_upper_bound=min(1.0, 1.0 - self.alpha + 1.0 / (n + 1)),
            trivial=trivial,
            calibration_mean_size=float(np.mean((all_scores <= self.qhat_).sum(axis=1))),
        )
        return self

    def predict_sets(self, scores: Scores) -> PredictionSets:
        """The prediction set of every question of ``scores``."""
        self._check_fitted()
        self._check_scores(scores, "ConformalPredictor.predict_sets")
        members = self.option_scores(scores) <= self.qhat
        valid = np.arange(scores.k)[None, :] < scores.n_options[:, None]
        return PredictionSets(
            ids=scores.ids,
            members=members & valid,
            labels=scores.labels,
            n_options=scores.n_options,
            meta={**scores.meta, "conformal": self.summary()},
            subjects=scores.subjects,
        )


def set_coverage(sets: PredictionSets, ci_alpha: float = 0.05) -> dict[str, Any]:
    """Empirical coverage with a Clopper–Pearson interval, set sizes, per size and per subject."""
    conf = sets.meta.get("conformal") or {}
    alpha = (conf.get("config") or {}).get("alpha")
    sizes = sets.sizes
    lab = sets.labels >= 0
    covered = sets.covered()
    n_lab = int(lab.sum())
    out: dict[str, Any] = {
        "n": len(sets),
        "n_labelled": n_lab,
        "target_coverage": None if alpha is None else 1.0 - float(alpha),
        "score": (conf.get("config") or {}).get("score"),
        "qhat": (conf.get("params") or {}).get("qhat"),
        "n_calibration": (conf.get("params") or {}).get("n"),
        "mean_size": float(sizes.mean()) if len(sets) else math.nan,
        "empty_share": float((sizes == 0).mean()) if len(sets) else math.nan,
        "size_counts": {int(s): int((sizes == s).sum()) for s in np.unique(sizes)},
        "ci_method": f"Clopper–Pearson exact {100 * (1 - ci_alpha):g}% interval",
    }
    if n_lab:
        k = int(covered.sum())
        out["coverage"] = k / n_lab
        out["coverage_ci"] = list(clopper_pearson(k, n_lab, ci_alpha))
        lab_sizes = sizes[lab]
        out["by_size"] = [
            {
                "size": int(s),
                "n": int((lab_sizes == s).sum()),
                "coverage": float(covered[lab_sizes == s].mean()),
            }
            for s in np.unique(lab_sizes)
        ]
        if sets.subjects is not None:
            subj = np.array(["(none)" if x is None else str(x) for x in sets.subjects[lab]])
            out["by_subject"] = {
                s: {
                    "n": int((subj == s).sum()),
                    "coverage": float(covered[subj == s].mean()),
                    "mean_size": float(lab_sizes[subj == s].mean()),
                }
                for s in sorted(set(subj.tolist()))
            }
    return out
