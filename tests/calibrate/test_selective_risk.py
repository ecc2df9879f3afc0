"""Selective answering with a risk bound: the exact binomial tools against scipy, a hand-made
calibration split, the guarantee by simulation over many seeded splits, artefact round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from llmcal.calibrate import CalibrationWarning, SelectiveDecisions, SelectiveRisk, load_guarantee
from llmcal.calibrate.guarantee import parquet_format
from llmcal.calibrate.selective_risk import risk_pvalues, selective_summary, threshold_grid
from llmcal.errors import CalibrationError, ConfigError
from llmcal.metrics.binomial import binomial_cdf, binomial_upper_bound, clopper_pearson
from llmcal.scores import Scores


def binary_scores(conf: np.ndarray, correct: np.ndarray, prefix: str = "q") -> Scores:
    """Two-option Scores whose top-label confidence is ``conf`` (>= 0.5) and correctness given."""
    logits = np.log(np.stack([conf, 1.0 - conf], axis=1))
    return Scores(
        ids=np.array([f"{prefix}{i}" for i in range(conf.shape[0])], dtype=object),
        logits=logits,
        labels=np.where(correct, 0, 1),
        meta={"task": "synthetic", "model": "toy"},
    )


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 10), (3, 10), (10, 10), (17, 261), (250, 1000)])
def test_clopper_pearson_matches_scipy(k: int, n: int) -> None:
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
    assert clopper_pearson(k, n, alpha=0.1) == pytest.approx((ci.low, ci.high), abs=1e-10)
    ub = binomial_upper_bound(k, n, delta=0.05)
    assert ub == pytest.approx(1.0 if k == n else stats.beta.ppf(0.95, k + 1, n - k), abs=1e-10)
    if k < n:  # the defining property: P(Bin(n, ub) <= k) = delta
        assert stats.binom.cdf(k, n, ub) == pytest.approx(0.05, abs=1e-9)
    assert binomial_cdf(k, n, 0.3) == pytest.approx(
        1.0 if k == n else stats.binom.cdf(k, n, 0.3), abs=1e-12
    )


def test_pvalue_passes_exactly_when_the_upper_bound_is_below_the_risk() -> None:
    n = np.repeat(np.arange(0, 120, 7), 30)
    e = np.concatenate([np.arange(30) % (m + 1) for m in np.arange(0, 120, 7)])
    p = risk_pvalues(n, e, 0.1)
    ub = np.array([binomial_upper_bound(int(a), int(b), 0.05) for a, b in zip(e, n, strict=True)])
    np.testing.assert_array_equal(p <= 0.05, ub <= 0.1)
    assert (p[n == 0] == 1.0).all()


def test_hand_made_split() -> None:
    # 100 questions at confidence .95, all right; 40 at .55, 20 of them wrong
    conf = np.r_[np.full(100, 0.95), np.full(40, 0.55)]
    correct = np.r_[np.ones(100, bool), np.arange(40) % 2 == 0]
    cal = binary_scores(conf, correct)
    grid = threshold_grid(200)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and (np.diff(grid) < 0).all()
    # Bonferroni over all candidates: 0.9^100 = 2.7e-5 <= 0.05/m passes for any threshold in
    # (0.55, 0.95]; at 0.55 the 20 errors in 140 fail; so the lowest passing threshold is 0.555
    bonf = SelectiveRisk(0.1, 0.05, method="bonferroni").fit(cal)
    assert bonf.threshold == pytest.approx(0.555)
    assert bonf.fit_info_["test_level"] == pytest.approx(0.05 / grid.shape[0])
    assert bonf.fit_info_["n_answered"] == 100 and bonf.fit_info_["n_errors"] == 0
    # pure fixed sequence from the top: nothing is answered at 1.0, the test fails there and
    # the sequence ends at once — the rule answers nothing, and says so
    with pytest.warns(CalibrationWarning, match="answers nothing"):
        fst0 = SelectiveRisk(0.1, 0.05, pilot_fraction=0.0).fit(cal)
    assert fst0.answers_nothing and fst0.to_dict()["params"]["threshold"] is None
    assert fst0.fit_info_["n_hypotheses_tested"] == 1
    d = fst0.decide(cal)
    assert not d.answered.any()
    assert "answers nothing" in selective_summary(d)["guarantee"]
    # with a pilot the sequence starts where the pilot predicts a pass, and walks down to 0.555
    fst = SelectiveRisk(0.1, 0.05).fit(cal)
    assert fst.threshold == pytest.approx(0.555)
    assert fst.fit_info_["n_pilot"] > 0
    assert fst.fit_info_["n_answered"] + fst.fit_info_["n_pilot"] >= 100


def _population(n: int, rng: np.random.Generator, prefix: str) -> Scores:
    """conf ~ U(0.5, 1), P(wrong | conf = c) = 1.5 (1 − c): over-confident, risk(λ) = 0.75 (1 − λ)."""
    c = rng.uniform(0.5, 1.0, size=n)
    return binary_scores(c, rng.random(n) >= 1.5 * (1.0 - c), prefix)


@pytest.mark.parametrize("method", ["fixed_sequence", "bonferroni"])
def test_guarantee_by_simulation(method: str) -> None:
    """Over 300 seeded calibration splits the chosen λ violates risk <= r at most δ of the time."""
    risk, delta, n_cal, splits = 0.1, 0.1, 3000, 300
    critical = 1.0 - risk / 0.75  # the true risk at λ is 0.75 (1 − λ): <= r iff λ >= critical
    violations, answered = 0, []
    for s in range(splits):
        cal = _population(n_cal, np.random.default_rng(5000 + s), f"s{s}-")
        rule = SelectiveRisk(risk, delta, method=method, seed=s).fit(cal)
        if math.isfinite(rule.threshold):
            violations += rule.threshold < critical - 1e-12
            answered.append((1.0 - rule.threshold) / 0.5)  # population coverage at λ
    rate = violations / splits
    slack = 3.0 * math.sqrt(delta * (1 - delta) / splits)
    assert rate <= delta + slack, rate
    # not vacuous: the rule answers in most splits, and a good share of the oracle's 26.7 %
    assert len(answered) >= 0.9 * splits and np.mean(answered) > 0.1
    print(
        f"{method}: violation rate {rate:.3f} (delta {delta}), answered in {len(answered)} "
        f"of {splits} splits, mean coverage {np.mean(answered):.3f}"
    )


def test_answer_view_decisions_and_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cal, test = _population(4000, rng, "c"), _population(1000, rng, "t")
    p = np.asarray(cal.confidences())
    cal_answer = Scores.from_confidence(
        p, correct=cal.correct(), ids=cal.ids, meta={"task": "free"}
    )
    assert cal_answer.view == "answer"
    a = SelectiveRisk(0.15, 0.05).fit(cal)
    b = SelectiveRisk(0.15, 0.05).fit(cal_answer)
    assert a.threshold == b.threshold and math.isfinite(a.threshold)
    path = a.save(tmp_path / "sel.json")
    art = json.loads(path.read_text())
    assert art["format"] == "llmcal-guarantee" and art["kind"] == "selective"
    assert art["params"]["risk_upper_bound"] <= 0.15 and art["fit"]["n"] == 4000
    loaded = load_guarantee(path)
    assert isinstance(loaded, SelectiveRisk) and loaded.threshold == a.threshold
    dec = loaded.decide(test)
    np.testing.assert_array_equal(dec.answered, np.asarray(test.confidences()) >= a.threshold)
    out = dec.save(tmp_path / "dec.parquet")
    assert parquet_format(out) == "llmcal-selective"
    back = SelectiveDecisions.load(out)
    np.testing.assert_array_equal(back.answered, dec.answered)
    assert back.correct.tolist() == test.correct().tolist()
    r = selective_summary(back)
    sel = dec.answered
    assert r["coverage"] == pytest.approx(sel.mean())
    assert r["realised_risk"] == pytest.approx(1 - test.correct()[sel].mean())
    assert r["threshold"] == a.threshold and "probability >= 0.95" in r["guarantee"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"risk": 0.0}, r"risk \(--risk\)"),
        ({"risk": 1.0}, r"risk \(--risk\)"),
        ({"delta": 0.0}, r"delta \(--delta\)"),
        ({"delta": 2.0}, r"delta \(--delta\)"),
        ({"method": "holm"}, "method"),
    ],
)
def test_bad_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SelectiveRisk(**kwargs)  # type: ignore[arg-type]


def test_unlabelled_calibration_is_refused() -> None:
    cal = _population(20, np.random.default_rng(0), "u")
    with pytest.raises(CalibrationError, match="20 of 20 rows are unlabelled"):
        SelectiveRisk().fit(cal.replace(labels=np.full(20, -1)))
