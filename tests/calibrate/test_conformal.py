"""Split conformal prediction sets: hand-computed scores, the finite-sample coverage bounds over
many seeded splits, α too small for n, artefact and Parquet round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from llmcal.calibrate import CalibrationWarning, ConformalPredictor, PredictionSets
from llmcal.calibrate.conformal import (
    conformal_quantile,
    conformal_rank,
    nonconformity,
    set_coverage,
)
from llmcal.calibrate.guarantee import load_guarantee, parquet_format
from llmcal.errors import CalibrationError, ConfigError, ScoresError
from llmcal.scores import Scores


def synthetic(n: int, rng: np.random.Generator, prefix: str, k: int = 4) -> Scores:
    """Over-confident model: labels from softmax(z), reported logits 2z; a third of rows have 3 options."""
    z = rng.normal(size=(n, k)) * 1.5
    short = np.arange(n) % 3 == 0
    z[short, k - 1] = -np.inf
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    return Scores(
        ids=np.array([f"{prefix}{i}" for i in range(n)], dtype=object),
        logits=2.0 * z,
        labels=y,
        meta={"task": "synthetic", "model": "toy-instruct"},
        subjects=np.array([("alg", "bio")[i % 2] for i in range(n)], dtype=object),
    )


def test_scores_by_hand() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.7, 0.3, 0.0]])
    n_opt = np.array([3, 3, 2])
    lac = nonconformity(probs, n_opt, "lac")
    np.testing.assert_allclose(lac[0], [0.5, 0.7, 0.8])
    assert lac[2, 2] == math.inf  # padding is never in a set
    aps = nonconformity(probs, n_opt, "aps")
    # mass of the options at least as likely: row 1 sorted is B (.6), C (.3), A (.1)
    np.testing.assert_allclose(aps[0], [0.5, 0.8, 1.0])
    np.testing.assert_allclose(aps[1], [1.0, 0.6, 0.9])
    np.testing.assert_allclose(aps[2, :2], [0.7, 1.0])
    rand = nonconformity(probs, n_opt, "aps", u=np.array([0.25, 0.5, 1.0]))
    np.testing.assert_allclose(rand[0], [0.25 * 0.5, 0.5 + 0.25 * 0.3, 0.8 + 0.25 * 0.2])
    np.testing.assert_allclose(rand[1], [0.9 + 0.05, 0.3, 0.6 + 0.15])
    raps = nonconformity(probs, n_opt, "raps", lam=0.1, k_reg=1)
    np.testing.assert_allclose(raps[0], [0.5, 0.8 + 0.1, 1.0 + 0.2])


def test_quantile_rank_and_float_rounding() -> None:
    s = np.arange(1, 11) / 10.0  # 0.1 … 1.0
    assert conformal_rank(10, 0.2) == 9 and conformal_quantile(s, 0.2) == pytest.approx(0.9)
    # (99 + 1)(1 − 0.1) is 90.00000000000001 in floating point: the rank must still be 90
    assert conformal_rank(99, 0.1) == 90
    assert conformal_quantile(np.arange(99.0), 0.1) == 89.0
    assert conformal_quantile(s[:5], 0.1) == math.inf  # ⌈6 · 0.9⌉ = 6 > 5


def test_lac_sets_by_hand() -> None:
    # calibration true-option probabilities .9 .8 .7 .6 .5 .4 .3 .2 .1: LAC scores .1 … .9
    p_true = np.arange(9, 0, -1) / 10.0
    logits = np.log(np.stack([p_true, 1 - p_true], axis=1))
    cal = Scores(ids=np.array([f"c{i}" for i in range(9)], dtype=object), logits=logits,
                 labels=np.zeros(9, dtype=np.int64))  # fmt: skip
    cp = ConformalPredictor(alpha=0.25).fit(cal)  # rank ⌈10 · 0.75⌉ = 8 → q̂ = 0.8
    assert cp.qhat == pytest.approx(0.8)
    test = Scores(ids=np.array(["a", "b", "c"], dtype=object),
                  logits=np.log(np.array([[0.15, 0.85], [0.5, 0.5], [0.1, 0.9]])),
                  labels=np.array([1, 0, 0]))  # fmt: skip
    sets = cp.predict_sets(test)
    # keep option k when 1 − p_k <= 0.8, i.e. p_k >= 0.2
    assert sets.sets() == [[1], [0, 1], [1]]
    assert sets.covered().tolist() == [True, True, False]


CONFIGS = [
    ("lac", False),
    ("aps", False),
    ("aps", True),
    ("raps", False),
    ("raps", True),
]


@pytest.mark.parametrize(("score", "randomized"), CONFIGS)
def test_coverage_over_many_splits(score: str, randomized: bool) -> None:
    """Mean coverage over 200 seeded splits lies in [1 − α, 1 − α + 1/(n+1)] up to MC error."""
    alpha, n_cal, n_test, splits = 0.1, 100, 300, 200
    cov = np.empty(splits)
    for s in range(splits):
        rng = np.random.default_rng(1000 + s)
        data = synthetic(n_cal + n_test, rng, f"s{s}-")
        cp = ConformalPredictor(alpha, score, randomized=randomized, seed=s)
        cp.fit(data[:n_cal])
        cov[s] = cp.predict_sets(data[n_cal:]).covered().mean()
    slack = 3.0 * cov.std(ddof=1) / math.sqrt(splits)
    lower, upper = 1 - alpha, 1 - alpha + 1 / (n_cal + 1)
    assert lower - slack <= cov.mean() <= upper + slack, (cov.mean(), slack)


def test_alpha_too_small_gives_all_options_with_a_warning() -> None:
    data = synthetic(20, np.random.default_rng(0), "x")
    with pytest.warns(CalibrationWarning, match=r"too small for 5 calibration questions.*n >= 9"):
        cp = ConformalPredictor(alpha=0.1).fit(data[:5])
    sets = cp.predict_sets(data[5:])
    np.testing.assert_array_equal(sets.sizes, data[5:].n_options)
    assert cp.to_dict()["params"]["qhat"] is None and cp.fit_info_["trivial"] is True


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), True])
def test_alpha_outside_the_unit_interval(alpha: float) -> None:
    with pytest.raises(ConfigError, match=r"alpha \(--alpha\) must be a number strictly"):
        ConformalPredictor(alpha=alpha)


def test_unlabelled_and_answer_view_calibration_are_refused() -> None:
    data = synthetic(30, np.random.default_rng(1), "u")
    with pytest.raises(CalibrationError, match="3 of 30 rows are unlabelled"):
        ConformalPredictor().fit(data.replace(labels=np.where(np.arange(30) < 3, -1, data.labels)))
    binary = Scores(ids=np.array(["a", "b"], dtype=object), logits=np.log([[0.3, 0.7], [0.6, 0.4]]),
                    labels=np.array([1, 0]), meta={"view": "answer"})  # fmt: skip
    with pytest.raises(CalibrationError, match="for multiple-choice"):
        ConformalPredictor().fit(binary)


def test_artefact_and_sets_round_trip(tmp_path: Path) -> None:
    data = synthetic(400, np.random.default_rng(2), "r")
    cp = ConformalPredictor(0.2, "raps", randomized=True, lam=0.05, k_reg=2, seed=7)
    cp.fit(data[:200])
    path = cp.save(tmp_path / "cp.json")
    art = json.loads(path.read_text())
    assert art["format"] == "llmcal-guarantee" and art["kind"] == "conformal"
    assert art["config"] == {"alpha": 0.2, "score": "raps", "randomized": True, "lam": 0.05,
                             "k_reg": 2, "seed": 7}  # fmt: skip
    assert art["fit"]["task"] == "synthetic" and art["fit"]["n"] == 200
    assert art["params"]["rank"] == math.ceil(201 * 0.8)
    loaded = load_guarantee(path)
    assert isinstance(loaded, ConformalPredictor) and loaded.qhat == cp.qhat
    a, b = cp.predict_sets(data[200:]), loaded.predict_sets(data[200:])
    np.testing.assert_array_equal(a.members, b.members)
    # a question's randomised set does not depend on the other rows or their order
    rev = loaded.predict_sets(data[200:][np.arange(199, -1, -1)])
    np.testing.assert_array_equal(rev.members[::-1], a.members)

    out = a.save(tmp_path / "sets.parquet")
    assert parquet_format(out) == "llmcal-prediction-sets"
    back = PredictionSets.load(out)
    np.testing.assert_array_equal(back.members, a.members)
    assert back.ids.tolist() == a.ids.tolist() and back.subjects is not None
    assert back.meta["conformal"]["params"]["qhat"] == cp.qhat
    with pytest.raises(ScoresError, match=r"not a readable Parquet|not an llmcal-prediction-sets"):
        PredictionSets.load(path)


def test_set_coverage_report_by_hand() -> None:
    members = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 1, 1], [0, 0, 1]], dtype=bool)
    sets = PredictionSets(
        ids=np.array(list("abcde"), dtype=object),
        members=members,
        labels=np.array([0, 2, 1, 0, -1]),
        n_options=np.array([3, 3, 3, 3, 3]),
        meta={"conformal": {"config": {"alpha": 0.1, "score": "lac"}, "params": {}}},
        subjects=np.array(["x", "x", "y", "y", "y"], dtype=object),
    )
    r = set_coverage(sets)
    assert r["n"] == 5 and r["n_labelled"] == 4 and r["coverage"] == 0.75
    assert r["mean_size"] == pytest.approx(9 / 5)
    ci = stats.binomtest(3, 4).proportion_ci(confidence_level=0.95, method="exact")
    assert r["coverage_ci"] == pytest.approx([ci.low, ci.high], abs=1e-12)
    assert r["by_size"] == [{"size": 1, "n": 1, "coverage": 1.0}, {"size": 2, "n": 2, "coverage": 0.5},
                            {"size": 3, "n": 1, "coverage": 1.0}]  # fmt: skip
    assert r["by_subject"] == {"x": {"n": 2, "coverage": 0.5, "mean_size": 1.5},
                               "y": {"n": 2, "coverage": 1.0, "mean_size": 2.5}}  # fmt: skip
    assert r["target_coverage"] == pytest.approx(0.9) and r["size_counts"] == {1: 2, 2: 2, 3: 1}
