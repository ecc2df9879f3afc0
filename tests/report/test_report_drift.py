"""Drift statistics: hand computations, the paired bootstrap against a slow loop, alignment."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_runs import make_scores, perturbed, two_option_scores

from llmcal.errors import ConfigError, DataError, ScoresError
from llmcal.metrics import bootstrap_distribution, ece
from llmcal.report import drift as drift_module
from llmcal.report.drift import (
    bootstrap_p_value,
    calibration_drift,
    confidence_moves,
    paired_ece_bootstrap,
)


def test_hand_computed_delta_and_moves() -> None:
    # 10 bins. Before: bins (0.9, 1] conf .95 acc .5 and (0.5, 0.6] conf .55 acc .5 -> ECE .25.
    # After: the first two move to (0.7, 0.8] with conf .75 -> ECE (.25 + .05) / 2 = .15.
    correct = np.array([1, 0, 1, 0])
    before = np.array([0.95, 0.95, 0.55, 0.55])
    after = np.array([0.75, 0.75, 0.55, 0.555])
    assert ece(before, correct, n_bins=10) == pytest.approx(0.25, abs=1e-12)
    assert ece(after, correct, n_bins=10) == pytest.approx(0.15 + 0.005 / 4, abs=1e-12)
    assert confidence_moves(before, after, tolerance=0.01) == {
        "moved_up": 0,
        "moved_down": 2,
        "unchanged": 2,
    }
    assert confidence_moves(before, after, tolerance=0.001) == {
        "moved_up": 1,
        "moved_down": 2,
        "unchanged": 1,
    }
    d = calibration_drift(
        two_option_scores(before, correct), two_option_scores(after, correct), n_bins=10
    )
    assert d["ece_before"] == pytest.approx(0.25, abs=1e-12)
    assert d["delta_ece"] == pytest.approx(-0.1 + 0.005 / 4, abs=1e-12)
    assert (d["moved_up"], d["moved_down"], d["unchanged"]) == (0, 2, 2)
    assert d["accuracy_before"] == d["accuracy_after"] == 0.5
    assert d["answer_changed"] == 0


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        ([-0.3, -0.2, -0.1, 0.4], 0.5),  # P(<=0) = .75, P(>=0) = .25
        ([-0.2, -0.1, 0.0, 0.3], 1.0),  # P(>=0) = .5 -> 2 * .5
        ([-0.2, -0.1, -0.05, -0.01], 0.0),  # no replicate reaches 0
        ([0.0, 0.0], 1.0),
        ([0.1, 0.2, 0.3, -0.1, 0.2, 0.1, 0.3, 0.4, 0.5, 0.6], 0.2),
    ],
)
def test_p_value_by_hand(deltas: list[float], expected: float) -> None:
    assert bootstrap_p_value(deltas) == pytest.approx(expected, abs=1e-12)


def _slow_paired(
    ca: np.ndarray,
    ya: np.ndarray,
    cb: np.ndarray,
    yb: np.ndarray,
    binning: str,
    n_resamples: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One resample of question indices per replicate, applied to both runs."""
    rng = np.random.default_rng(seed)
    n = ca.shape[0]
    out_a, out_b = [], []
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        out_a.append(ece(ca[idx], ya[idx], n_bins=15, binning=binning))  # type: ignore[arg-type]
        out_b.append(ece(cb[idx], yb[idx], n_bins=15, binning=binning))  # type: ignore[arg-type]
    return np.array(out_a), np.array(out_b)


@pytest.mark.parametrize("binning", ["width", "mass"])
@pytest.mark.parametrize("chunk", [None, 150])
def test_paired_bootstrap_equals_slow_loop(
    binning: str, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunk is not None:  # several chunks of resamples must continue the same random stream
        monkeypatch.setattr(drift_module, "CHUNK_ELEMENTS", chunk)
    a = make_scores(3, n=57)
    b = perturbed(a, seed=4)
    ca, ya, cb, yb = a.confidences(), a.correct(), b.confidences(), b.correct()
    # rounding creates tied confidences, which equal-mass bins must keep together
    ca, cb = np.round(ca, 2), np.round(cb, 2)
    fast_a, fast_b = paired_ece_bootstrap(
        ca,
        ya,
        cb,
        yb,
        binning=binning,
        n_resamples=120,
        seed=7,  # type: ignore[arg-type]
    )
    slow_a, slow_b = _slow_paired(ca, ya, cb, yb, binning, 120, seed=7)
    np.testing.assert_allclose(fast_a, slow_a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast_b, slow_b, rtol=0, atol=1e-12)
    assert np.std(fast_b - fast_a) > 0  # the replicates differ


def test_pairing_narrows_the_interval() -> None:
    a = make_scores(5, n=400)
    b = perturbed(a, seed=6, scale=0.97, noise=0.05)
    ca, ya, cb, yb = a.confidences(), a.correct(), b.confidences(), b.correct()
    star_a, star_b = paired_ece_bootstrap(ca, ya, cb, yb, n_resamples=400, seed=0)
    # unpaired: each run resampled on its own, as two separate bootstrap_ci calls would
    ind_a = bootstrap_distribution(ece, ca, ya, n_resamples=400, seed=1)
    ind_b = bootstrap_distribution(ece, cb, yb, n_resamples=400, seed=2)
    assert np.std(star_b - star_a) < 0.5 * np.std(ind_b - ind_a)
    # the marginals are ordinary bootstrap distributions of each run's ECE
    assert np.mean(star_a) == pytest.approx(np.mean(ind_a), abs=0.01)


def test_identical_runs_have_zero_drift() -> None:
    a = make_scores(8, n=80)
    d = calibration_drift(a, a, n_resamples=200)
    assert d["delta_ece"] == 0.0 and d["delta_ece_ci"] == [0.0, 0.0]
    assert d["p_value"] == 1.0
    assert (d["moved_up"], d["moved_down"], d["unchanged"]) == (0, 0, 80)
    assert d["answer_changed"] == d["became_right"] == d["became_wrong"] == 0


def test_drift_aligns_by_id_and_uses_common_questions() -> None:
    a = make_scores(9, n=60)
    b_full = perturbed(a, seed=10)
    # the second run has the questions in another order, 10 of them missing, 5 extra ones
    keep = np.random.default_rng(0).permutation(60)[:50]
    extra = make_scores(11, n=5, ids=[f"extra{i}" for i in range(5)])
    b = type(a).concat([b_full.select(keep), extra])
    d = calibration_drift(a, b, n_resamples=300, seed=1, tolerance=0.02)
    common = [i for i in a.ids.tolist() if i in set(b.ids.tolist())]
    a2, b2 = a.by_ids(common), b.by_ids(common)
    assert (d["n_common"], d["n_only_before"], d["n_only_after"]) == (50, 10, 5)
    assert d["ece_before"] == pytest.approx(ece(a2.confidences(), a2.correct()), abs=1e-15)
    assert d["ece_after"] == pytest.approx(ece(b2.confidences(), b2.correct()), abs=1e-15)
    assert d["delta_ece"] == pytest.approx(d["ece_after"] - d["ece_before"], abs=1e-15)
    step = b2.confidences() - a2.confidences()
    assert d["moved_up"] == int((step > 0.02).sum()) and d["moved_down"] == int(
        (step < -0.02).sum()
    )
    assert d["moved_up"] + d["moved_down"] + d["unchanged"] == 50
    assert d["answer_changed"] == int((a2.predictions() != b2.predictions()).sum())
    assert d["became_right"] == int((~a2.correct() & b2.correct()).sum())
    # the interval and p come from the paired replicates on the aligned rows
    star_a, star_b = paired_ece_bootstrap(
        a2.confidences(), a2.correct(), b2.confidences(), b2.correct(), n_resamples=300, seed=1
    )
    lo, hi = np.quantile(star_b - star_a, [0.025, 0.975])
    assert d["delta_ece_ci"] == pytest.approx([lo, hi], abs=1e-15)
    assert d["p_value"] == pytest.approx(bootstrap_p_value(star_b - star_a), abs=1e-15)


def test_drift_errors() -> None:
    a = make_scores(12, n=20)
    other = make_scores(13, n=20, ids=[f"z{i}" for i in range(20)])
    with pytest.raises(ScoresError, match="share no question id"):
        calibration_drift(a, other)
    with pytest.raises(ConfigError, match="tolerance"):
        confidence_moves([0.5], [0.6], tolerance=1.5)
    with pytest.raises(DataError, match="same rows"):
        paired_ece_bootstrap([0.5, 0.6], [1, 0], [0.5], [1])
    with pytest.raises(ConfigError, match="n_resamples"):
        paired_ece_bootstrap([0.5], [1], [0.5], [1], n_resamples=0)
    with pytest.raises(ConfigError, match="alpha"):
        calibration_drift(a, a, alpha=1.5)
