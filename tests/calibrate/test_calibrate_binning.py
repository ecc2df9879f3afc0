"""Histogram binning, isotonic regression, Platt scaling and the top-label rescaling they share."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from llmcal.calibrate import Calibrator, HistogramBinning, IsotonicCalibration, PlattScaling
from llmcal.calibrate._solvers import rescale_top_label
from llmcal.errors import CalibrationError
from llmcal.scores import Scores


def make_scores(logits: np.ndarray, labels: np.ndarray, prefix: str = "q") -> Scores:
    return Scores(
        ids=np.array([f"{prefix}{i}" for i in range(len(logits))], dtype=object),
        logits=logits,
        labels=labels,
        meta={"task": "synthetic"},
    )


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width bins, written out by hand."""
    idx = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return total


@pytest.fixture(scope="module")
def miscalibrated() -> tuple[Scores, Scores]:
    """Labels drawn from softmax(z); the model reports 3z (over-confident)."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(8000, 4)) * 1.3
    y = (softmax(z).cumsum(axis=1) > rng.random(8000)[:, None]).argmax(axis=1)
    return make_scores(3.0 * z[:4000], y[:4000], "c"), make_scores(3.0 * z[4000:], y[4000:], "t")


def top_conf_and_correct(scores: Scores) -> tuple[np.ndarray, np.ndarray]:
    p = softmax(scores.logits)
    return p.max(axis=1), p.argmax(axis=1) == scores.labels


@pytest.mark.parametrize(
    "make",
    [
        lambda: HistogramBinning(15, "width"),
        lambda: HistogramBinning(10, "mass"),
        IsotonicCalibration,
    ],
)
def test_top_label_reduces_ece_and_keeps_argmax(
    make: Callable[[], Calibrator], miscalibrated: tuple[Scores, Scores]
) -> None:
    cal_set, test_set = miscalibrated
    cal = make().fit(cal_set)
    before = ece(*top_conf_and_correct(test_set))
    out = cal.transform(test_set)
    after = ece(*top_conf_and_correct(out))
    assert before > 0.1
    assert after < 0.3 * before and after < 0.03
    np.testing.assert_array_equal(out.predictions(), test_set.predictions())
    np.testing.assert_allclose(np.exp(out.logits).sum(axis=1), 1.0, atol=1e-12)
    assert out.meta["logit_kind"] == "probs_log"
    assert out.meta["calibration"][-1]["kind"] == cal.kind


def test_histogram_bins_hold_their_accuracy(miscalibrated: tuple[Scores, Scores]) -> None:
    cal_set, _ = miscalibrated
    hb = HistogramBinning(n_bins=10).fit(cal_set)
    conf, correct = top_conf_and_correct(cal_set)
    new = hb.calibrated_confidence(cal_set)
    bins = np.minimum((conf * 10).astype(int), 9)
    for b in np.unique(bins):
        sel = bins == b
        np.testing.assert_allclose(new[sel], correct[sel].mean(), rtol=0, atol=1e-15)
    mass = HistogramBinning(n_bins=8, binning="mass").fit(cal_set)
    assert mass.fit_info_ is not None
    counts = np.array(mass.fit_info_["bin_counts"])
    assert counts.sum() == len(cal_set)
    assert counts.max() - counts.min() <= 2


def test_isotonic_matches_sklearn(miscalibrated: tuple[Scores, Scores]) -> None:
    cal_set, test_set = miscalibrated
    iso = IsotonicCalibration().fit(cal_set)
    conf, correct = top_conf_and_correct(cal_set)
    ref = IsotonicRegression(out_of_bounds="clip").fit(conf, correct.astype(float))
    conf_t, _ = top_conf_and_correct(test_set)
    np.testing.assert_allclose(iso.calibrated_confidence(test_set), ref.predict(conf_t), atol=1e-12)
    assert len(iso.get_fitted_params()["x"]) < len(np.unique(conf))  # stored compactly


def test_rescale_raises_confidence_that_would_flip_the_argmax() -> None:
    # top option (index 1) is barely ahead of index 0; a calibrated confidence of 0.1 would flip it
    logits = np.log(np.array([[0.45, 0.5, 0.05], [0.2, 0.7, 0.1]]))
    out, n = rescale_top_label(logits, np.array([0.1, 0.6]))
    assert n == 1
    p = np.exp(out)
    assert np.argmax(p, axis=1).tolist() == [1, 1]
    c_min = 0.45 / (1 - 0.5 + 0.45)  # where top and runner-up tie
    assert p[0, 1] == pytest.approx(c_min, rel=1e-12)
    assert p[0, 0] < p[0, 1]
    # the unclamped row: top set exactly, others keep their 2:1 ratio
    assert p[1, 1] == pytest.approx(0.6, rel=1e-14)
    assert p[1, 0] / p[1, 2] == pytest.approx(2.0, rel=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-14)


def test_histogram_records_clamped_rows() -> None:
    # bin (0.4, 0.5] is always wrong in calibration; a test row there would flip without the clamp
    rng = np.random.default_rng(0)
    p = np.array([[0.45, 0.46, 0.09]] * 50 + [[0.1, 0.85, 0.05]] * 50)
    y = np.array([0] * 50 + [1] * 50)
    scores = make_scores(np.log(p) + rng.normal(size=(100, 1)), y)
    hb = HistogramBinning(n_bins=10).fit(scores)
    out = hb.transform(scores)
    np.testing.assert_array_equal(out.predictions(), scores.predictions())
    assert out.meta["calibration"][-1]["n_argmax_clamped"] == 50
    assert hb.fit_info_ is not None and hb.fit_info_["n_argmax_clamped"] == 50


@settings(max_examples=150, deadline=None)
@given(
    k=st.integers(2, 6),
    n_real=st.integers(2, 6),
    seed=st.integers(0, 2**32 - 1),
    conf=st.floats(0.0, 1.0),
    ties=st.booleans(),
)
def test_rescale_properties(k: int, n_real: int, seed: int, conf: float, ties: bool) -> None:
    n_real = min(n_real, k)
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(1, k)) * rng.choice([0.1, 1.0, 30.0])
    if ties:
        z = np.round(z)
    z[0, n_real:] = -np.inf
    out, _ = rescale_top_label(z, np.array([conf]))
    assert np.argmax(out[0]) == np.argmax(z[0])
    assert np.isneginf(out[0, n_real:]).all() and np.isfinite(out[0, :n_real]).all()
    assert abs(np.exp(out[0]).sum() - 1.0) < 1e-12
    assert np.exp(out[0]).max() >= min(conf, 0.99) - 1e-12


def binary(rng: np.random.Generator, n: int) -> tuple[Scores, np.ndarray]:
    delta = rng.normal(size=n) * 2.0
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.6 * delta - 0.4)))).astype(int)
    z0 = rng.normal(size=n)
    return make_scores(np.stack([z0, z0 + delta], axis=1), y), delta


def test_platt_equals_sklearn_logistic_regression() -> None:
    scores, delta = binary(np.random.default_rng(4), 3000)
    platt = PlattScaling().fit(scores)
    lr = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(delta[:, None], scores.labels)
    assert platt.a == pytest.approx(lr.coef_[0, 0], abs=1e-5)
    assert platt.b == pytest.approx(lr.intercept_[0], abs=1e-5)
    out = platt.transform(scores)
    np.testing.assert_allclose(np.exp(out.logits), lr.predict_proba(delta[:, None]), atol=1e-6)


def test_platt_smoothed_targets_equal_weighted_logistic_regression() -> None:
    scores, delta = binary(np.random.default_rng(8), 400)
    platt = PlattScaling(smooth_targets=True).fit(scores)
    y = scores.labels
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    x = np.concatenate([delta, delta])[:, None]
    yy = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    lr = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(
        x, yy, sample_weight=np.concatenate([t, 1 - t])
    )
    assert platt.a == pytest.approx(lr.coef_[0, 0], abs=1e-5)
    assert platt.b == pytest.approx(lr.intercept_[0], abs=1e-5)


def test_platt_needs_two_options() -> None:
    scores = make_scores(np.zeros((4, 3)) + np.arange(3), np.array([0, 1, 2, 0]))
    with pytest.raises(CalibrationError, match="binary"):
        PlattScaling().fit(scores)
    fitted = PlattScaling().fit(binary(np.random.default_rng(1), 100)[0])
    with pytest.raises(CalibrationError, match="binary"):
        fitted.transform(scores)


def test_binning_options_validated() -> None:
    with pytest.raises(CalibrationError, match="n_bins"):
        HistogramBinning(n_bins=0)
    with pytest.raises(CalibrationError, match="binning"):
        HistogramBinning(binning="quantile")
