"""Calibration errors: hand-worked cases, torchmetrics cross-checks, edge conventions, properties."""

from __future__ import annotations

import bisect
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcal.errors import ConfigError, DataError
from llmcal.metrics import (
    classwise_ece,
    debiased_l2_ece,
    ece,
    mce,
    reliability_data,
    smooth_ece,
    smooth_ece_bandwidth,
)
from llmcal.metrics.calibration import mass_bin_index, width_bin_index, width_edges

FAST = settings(max_examples=40, deadline=None)


def _data(seed: int, n: int, power: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.05, 0.999, size=n)
    correct = rng.random(n) < conf**power
    return conf, correct


# -- hand-worked examples --------------------------------------------------------------------------
# B = 5, edges 0, .2, .4, .6, .8, 1 (bins closed on the right):
#   0.1           -> bin 0: n=1, acc 0,   conf 0.1   -> |gap| 1/10
#   0.3, 0.35     -> bin 1: n=2, acc 1/2, conf 0.325 -> |gap| 7/40
#   0.9, .95, 1.0 -> bin 4: n=3, acc 2/3, conf 0.95  -> |gap| 17/60
HAND_CONF = [0.1, 0.3, 0.35, 0.9, 0.95, 1.0]
HAND_CORRECT = [0, 1, 0, 1, 1, 0]
HAND_GAPS = [(1, 1 / 10), (2, 7 / 40), (3, 17 / 60)]


def test_ece_hand_example_l1_l2_max() -> None:
    l1 = sum(n * g for n, g in HAND_GAPS) / 6  # (0.1 + 0.35 + 0.85) / 6 = 1.3 / 6
    l2 = math.sqrt(sum(n * g * g for n, g in HAND_GAPS) / 6)
    assert ece(HAND_CONF, HAND_CORRECT, n_bins=5) == pytest.approx(1.3 / 6, abs=1e-15)
    assert ece(HAND_CONF, HAND_CORRECT, n_bins=5) == pytest.approx(l1, abs=1e-15)
    assert ece(HAND_CONF, HAND_CORRECT, n_bins=5, norm="l2") == pytest.approx(l2, abs=1e-15)
    assert mce(HAND_CONF, HAND_CORRECT, n_bins=5) == pytest.approx(17 / 60, abs=1e-15)
    assert ece(HAND_CONF, HAND_CORRECT, n_bins=5, norm="max") == mce(HAND_CONF, HAND_CORRECT, 5)


def test_reliability_data_hand_example() -> None:
    rd = reliability_data(HAND_CONF, HAND_CORRECT, n_bins=5)
    assert rd.count.tolist() == [1, 2, 0, 0, 3]
    np.testing.assert_allclose(rd.edges, [0, 0.2, 0.4, 0.6, 0.8, 1.0], rtol=0, atol=0)
    np.testing.assert_allclose(rd.accuracy[[0, 1, 4]], [0, 0.5, 2 / 3], atol=1e-15)
    np.testing.assert_allclose(rd.confidence[[0, 1, 4]], [0.1, 0.325, 0.95], atol=1e-15)
    assert np.isnan(rd.accuracy[2]) and np.isnan(rd.confidence[3])
    assert rd.ece() == pytest.approx(1.3 / 6, abs=1e-15)
    d = rd.to_dict()
    assert d["accuracy"][2] is None and d["count"] == [1, 2, 0, 0, 3]


def test_equal_mass_hand_example() -> None:
    # sorted: 0.1(0) 0.5(0) | 0.7(1) 0.9(1): gaps 0.3 and 0.2 -> ECE 0.25
    assert ece([0.9, 0.1, 0.5, 0.7], [1, 0, 0, 1], n_bins=2, binning="mass") == pytest.approx(0.25)


def test_equal_mass_keeps_ties_together() -> None:
    # three tied 0.5s all go to bin 0 (acc 1/3, gap 1/6); 0.9 alone in bin 1 (gap 0.1)
    conf, correct = [0.5, 0.5, 0.5, 0.9], [1, 0, 0, 1]
    expected = (3 * (1 / 6) + 1 * 0.1) / 4
    assert ece(conf, correct, n_bins=2, binning="mass") == pytest.approx(expected, abs=1e-15)
    for perm in ([3, 2, 1, 0], [1, 3, 0, 2], [0, 3, 2, 1]):
        c = np.array(conf)[perm]
        y = np.array(correct)[perm]
        assert ece(c, y, n_bins=2, binning="mass") == pytest.approx(expected, abs=1e-15)
    rd = reliability_data(conf, correct, n_bins=2, binning="mass")
    assert rd.count.tolist() == [3, 1]
    assert rd.edges.tolist() == [0.5, 0.7, 0.9]


def test_equal_mass_more_bins_than_samples_is_mean_abs_residual() -> None:
    conf = np.array([0.2, 0.9, 0.55, 0.61])
    y = np.array([1, 0, 1, 1])
    expected = np.mean(np.abs(y - conf))
    for b in (4, 5, 50):
        assert ece(conf, y, n_bins=b, binning="mass") == pytest.approx(expected, abs=1e-15)
    rd = reliability_data(conf, y, n_bins=6, binning="mass")
    assert rd.count.sum() == 4 and (rd.count <= 1).all()


def test_classwise_hand_example_with_padding() -> None:
    probs = [[0.5, 0.2, 0.3], [0.4, 0.6, 0.0]]
    labels = [2, 1]
    # B=2 (edges 0, .5, 1). class 0: p=[.5,.4] hits=[0,0] both in bin 0 -> 0.45
    # class 1: p=[.2,.6] hits=[0,1] -> (0.2 + 0.4)/2 = 0.3; class 2 (row 0 only): |1-.3| = 0.7
    expected = (0.45 + 0.3 + 0.7) / 3
    got = classwise_ece(probs, labels, n_bins=2, n_options=[3, 2])
    assert got == pytest.approx(expected, abs=1e-15)
    # without n_options the padding zero of row 1 counts as a class-2 prediction and changes it
    assert classwise_ece(probs, labels, n_bins=2) != pytest.approx(expected)


def test_classwise_two_class_example() -> None:
    # class 0: p=[.7,.4], hits [1,1]: gaps .3, .6 -> .45; class 1: p=[.3,.6], hits [0,0] -> .45
    assert classwise_ece([[0.7, 0.3], [0.4, 0.6]], [0, 0], n_bins=2) == pytest.approx(0.45)


def _kumar_reference(conf: np.ndarray, correct: np.ndarray, bins: np.ndarray, n_bins: int) -> float:
    """Transcription of unbiased_square_ce from Kumar et al.'s `calibration` package."""
    total = 0.0
    for b in range(n_bins):
        members = [(c, y) for c, y, k in zip(conf, correct, bins, strict=True) if k == b]
        if len(members) < 2:
            continue
        diff = np.mean([c for c, _ in members]) - np.mean([y for _, y in members])
        mean_label = np.mean([y for _, y in members])
        variance = mean_label * (1.0 - mean_label) / (len(members) - 1.0)
        total += len(members) / len(conf) * (diff**2 - variance)
    return total


def test_debiased_l2_hand_and_reference() -> None:
    # bins {0.6, 0.6} acc .5: gap^2 .01 - .25 = -.24; {0.8, 0.8} acc 1: .04 -> 0.5 * (-.2) = -0.1
    conf, y = [0.6, 0.6, 0.8, 0.8], [1, 0, 1, 1]
    assert debiased_l2_ece(conf, y, n_bins=2, squared=True) == pytest.approx(-0.1, abs=1e-15)
    assert debiased_l2_ece(conf, y, n_bins=2) == 0.0
    c, yy = _data(3, 400, power=2.0)
    for binning in ("mass", "width"):
        idx = mass_bin_index(c, 10) if binning == "mass" else width_bin_index(c, 10)
        ref = _kumar_reference(c, yy.astype(float), idx, 10)
        got = debiased_l2_ece(c, yy, n_bins=10, binning=binning, squared=True)
        assert got == pytest.approx(ref, abs=1e-14)
        assert debiased_l2_ece(c, yy, n_bins=10, binning=binning) == pytest.approx(
            math.sqrt(max(ref, 0.0)), abs=1e-14
        )
    # the debiased estimate is below the plug-in squared L2 (the variance term is subtracted)
    assert debiased_l2_ece(c, yy, 10, squared=True) < ece(c, yy, 10, "mass", "l2") ** 2


# -- torchmetrics --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_bins", [1, 4, 15, 37])
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_matches_torchmetrics_binary(n_bins: int, norm: str) -> None:
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import binary_calibration_error

    conf, correct = _data(n_bins, 3000, power=1.7)
    # continuous confidences never sit on an edge or at 1.0, where the conventions differ
    tm = binary_calibration_error(
        torch.tensor(conf, dtype=torch.float64),
        torch.tensor(correct.astype(np.int64)),
        n_bins=n_bins,
        norm=norm,
    )
    assert ece(conf, correct, n_bins=n_bins, norm=norm) == pytest.approx(float(tm), abs=1e-12)


def test_matches_torchmetrics_multiclass_within_float32() -> None:
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import multiclass_calibration_error

    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2000, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 4, size=2000)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    for norm in ("l1", "l2", "max"):
        # torchmetrics casts multiclass confidences to float32, so only ~1e-7 agreement
        tm = multiclass_calibration_error(
            torch.tensor(probs), torch.tensor(labels), num_classes=4, n_bins=15, norm=norm
        )
        assert ece(conf, correct, n_bins=15, norm=norm) == pytest.approx(float(tm), abs=2e-6)


def test_torchmetrics_edge_conventions_differ() -> None:
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import binary_calibration_error

    def tm(c: list[float], y: list[int], b: int) -> float:
        return float(
            binary_calibration_error(
                torch.tensor(c, dtype=torch.float64), torch.tensor(y), n_bins=b
            )
        )

    # a confidence on an interior edge: llmcal bins are closed on the right, torchmetrics' on
    # the left. 0.2 and 0.1 share bin 0 here (acc .5, conf .15 -> 0.35); torchmetrics puts 0.2
    # in bin 1 alone: (|1 - .2| + |0 - .1|) / 2 = 0.45
    assert ece([0.2, 0.1], [1, 0], n_bins=5) == pytest.approx(0.35, abs=1e-15)
    assert tm([0.2, 0.1], [1, 0], 5) == pytest.approx(0.45, abs=1e-15)
    # confidence exactly 1.0: llmcal puts it in the last bin with 0.95 (acc .5, conf .975 ->
    # 0.475); torchmetrics gives it a bin of its own: (|1 - .95| + |0 - 1|) / 2 = 0.525
    assert ece([1.0, 0.95], [0, 1], n_bins=10) == pytest.approx(0.475, abs=1e-15)
    assert tm([1.0, 0.95], [0, 1], 10) == pytest.approx(0.525, abs=1e-15)


# -- bin-edge rule ---------------------------------------------------------------------------------
def _reference_width_bins(conf: list[float], n_bins: int) -> list[int]:
    """The documented rule against the float edges: edges[b] < c <= edges[b+1], 0 -> bin 0."""
    edges = [float(Fraction(b, n_bins)) for b in range(n_bins + 1)]
    return [min(max(bisect.bisect_left(edges, c) - 1, 0), n_bins - 1) for c in conf]


def _around_edges(n_bins: int) -> list[float]:
    out = []
    for b in range(n_bins + 1):
        e = float(Fraction(b, n_bins))
        out += [e, *(float(x) for x in np.nextafter(e, [0.0, 1.0]))]
        out += [float(np.nextafter(np.nextafter(e, d), d)) for d in (0.0, 1.0)]
    return [min(max(c, 0.0), 1.0) for c in out]


@pytest.mark.parametrize("n_bins", [25, 29, 35, 3, 6, 10, 15])
def test_width_bins_where_c_times_b_rounds_across_an_edge(n_bins: int) -> None:
    # e.g. B = 25, c = 0.28 (= 7/25): c * 25 rounds up to 7.000000000000001, one bin too high
    conf = _around_edges(n_bins)
    assert width_bin_index(np.array(conf), n_bins).tolist() == _reference_width_bins(conf, n_bins)


@FAST
@given(st.integers(1, 400))
def test_width_bins_follow_the_edge_rule_at_and_around_edges(n_bins: int) -> None:
    conf = _around_edges(n_bins)
    assert width_bin_index(np.array(conf), n_bins).tolist() == _reference_width_bins(conf, n_bins)
    assert width_edges(n_bins)[n_bins] == 1.0


def test_zero_and_one_go_to_the_first_and_last_bin() -> None:
    rd = reliability_data([0.0, 1.0, 1.0], [0, 1, 0], n_bins=4)
    assert rd.count.tolist() == [1, 0, 0, 2]
    # 0 with wrong -> gap 0; two 1.0s with acc .5 -> gap .5 -> ECE = 2/3 * .5
    assert ece([0.0, 1.0, 1.0], [0, 1, 0], n_bins=4) == pytest.approx(1 / 3)


# -- properties ------------------------------------------------------------------------------------
confidences = st.lists(
    st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.25]), st.floats(0.0, 1.0)), min_size=1, max_size=60
)


@FAST
@given(confidences, st.data(), st.integers(1, 40), st.sampled_from(["width", "mass"]))
def test_ece_bounds_norm_order_and_permutation(
    conf: list[float], data: st.DataObject, n_bins: int, binning: str
) -> None:
    y = data.draw(st.lists(st.booleans(), min_size=len(conf), max_size=len(conf)))
    l1 = ece(conf, y, n_bins, binning)  # type: ignore[arg-type]
    l2 = ece(conf, y, n_bins, binning, "l2")  # type: ignore[arg-type]
    mx = mce(conf, y, n_bins, binning)  # type: ignore[arg-type]
    assert 0.0 <= l1 <= l2 + 1e-12 <= mx + 2e-12 <= 1.0 + 2e-12
    assert l1 <= float(np.mean(np.abs(np.array(y, float) - conf))) + 1e-12  # Jensen per bin
    perm = data.draw(st.permutations(range(len(conf))))
    c2, y2 = np.array(conf)[perm], np.array(y)[perm]
    assert ece(c2, y2, n_bins, binning) == pytest.approx(l1, abs=1e-12)  # type: ignore[arg-type]
    assert mce(c2, y2, n_bins, binning) == pytest.approx(mx, abs=1e-12)  # type: ignore[arg-type]


@FAST
@given(confidences, st.data(), st.integers(1, 20), st.sampled_from(["width", "mass"]))
def test_integer_weights_equal_repeated_samples(
    conf: list[float], data: st.DataObject, n_bins: int, binning: str
) -> None:
    n = len(conf)
    y = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    w = np.array(data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)))
    if w.sum() == 0:
        w[0] = 1
    rep_c, rep_y = np.repeat(conf, w), np.repeat(y, w)
    for norm in ("l1", "l2", "max"):
        got = ece(conf, y, n_bins, binning, norm, weights=w)  # type: ignore[arg-type]
        want = ece(rep_c, rep_y, n_bins, binning, norm)  # type: ignore[arg-type]
        assert got == pytest.approx(want, abs=1e-12)


def test_single_sample() -> None:
    for binning in ("width", "mass"):
        for n_bins in (1, 15):
            assert ece([0.7], [1], n_bins, binning) == pytest.approx(0.3)  # type: ignore[arg-type]
            assert ece([0.7], [0], n_bins, binning, "l2") == pytest.approx(0.7)  # type: ignore[arg-type]
            assert mce([0.7], [0], n_bins, binning) == pytest.approx(0.7)  # type: ignore[arg-type]


def test_exactly_calibrated_bins_give_zero_and_sampled_calibration_is_small() -> None:
    # per distinct confidence c, m samples with exactly c*m correct: every bin gap is 0
    conf = np.repeat([0.25, 0.5, 0.75, 1.0], 8)
    correct = np.concatenate(
        [np.arange(8) < 0.25 * 8, np.arange(8) < 4, np.arange(8) < 6, np.ones(8)]
    )
    for binning in ("width", "mass"):
        assert ece(conf, correct, 4, binning) == pytest.approx(0.0, abs=1e-15)  # type: ignore[arg-type]
    c, y = _data(11, 50_000)  # y ~ Bernoulli(c): calibrated in expectation
    assert ece(c, y) < 0.01
    assert ece(c, y, binning="mass") < 0.01
    assert smooth_ece(c, y) < 0.01
    c2, y2 = _data(11, 50_000, power=3.0)  # over-confident
    assert ece(c2, y2) > 0.1


# -- smooth ECE ------------------------------------------------------------------------------------
def _reflected_kernel(t: float, f: np.ndarray, sigma: float) -> np.ndarray:
    k = np.arange(-6, 7)[:, None]
    a = np.exp(-0.5 * ((t - f[None, :] - 2 * k) / sigma) ** 2)
    b = np.exp(-0.5 * ((t + f[None, :] - 2 * k) / sigma) ** 2)
    return np.asarray((a + b).sum(axis=0) / (sigma * math.sqrt(2 * math.pi)))


def _smece_quad(f: np.ndarray, y: np.ndarray, sigma: float) -> float:
    from scipy.integrate import quad

    r = (y - f) / f.shape[0]

    def integrand(t: float) -> float:
        return abs(float(r @ _reflected_kernel(t, f, sigma)))

    val, _ = quad(integrand, 0.0, 1.0, limit=400, epsabs=1e-13, epsrel=1e-10)
    return float(val)


def test_smooth_ece_matches_numerical_integration() -> None:
    f, y = _data(5, 40, power=2.0)
    f[0], f[1] = 0.0, 1.0  # boundary samples exercise the reflection
    y = y.astype(float)
    for sigma in (0.03, 0.1, 0.4):
        assert smooth_ece(f, y, bandwidth=sigma) == pytest.approx(
            _smece_quad(f, y, sigma), rel=2e-5
        )


def test_smooth_ece_fixed_point_matches_reference() -> None:
    from scipy.optimize import brentq

    f, y = _data(6, 30, power=2.5)
    y = y.astype(float)
    sigma_ref = brentq(lambda s: _smece_quad(f, y, s) - s, 1e-3, 1.0, xtol=1e-9)
    sigma = smooth_ece_bandwidth(f, y)
    assert sigma == pytest.approx(sigma_ref, rel=1e-4)
    assert smooth_ece(f, y) == pytest.approx(sigma_ref, rel=1e-4)


def test_smooth_ece_single_sign_residuals_is_mean_abs_residual() -> None:
    # the reflected kernel integrates to 1 on [0, 1], so with residuals of one sign smECE_σ is
    # the mean |y - f| for every σ
    assert smooth_ece([0.7], [1]) == pytest.approx(0.3, abs=1e-9)
    c, _ = _data(2, 300)
    assert smooth_ece(c, np.ones(300)) == pytest.approx(float(np.mean(1 - c)), abs=1e-9)
    assert smooth_ece(c, np.ones(300), bandwidth=0.01) == pytest.approx(
        float(np.mean(1 - c)), abs=1e-9
    )


def test_smooth_ece_decreases_with_bandwidth_and_is_bounded() -> None:
    c, y = _data(9, 500, power=0.5)
    values = [smooth_ece(c, y, bandwidth=s) for s in (0.005, 0.02, 0.08, 0.3, 1.0)]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(values))
    assert 0.0 <= smooth_ece(c, y) <= 1.0
    assert smooth_ece(c, y) <= ece(c, y, n_bins=len(c), binning="mass") + 1e-12


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("conf", "correct", "match"),
    [
        ([0.5, 0.6], [1], "correct has 1 entries"),
        ([], [], "confidence is empty"),
        ([0.5, float("nan")], [1, 0], "confidence contains NaN"),
        ([0.5, 1.2], [1, 0], "confidence must lie in \\[0, 1\\]; index 1"),
        ([0.5, -0.1], [1, 0], "index 1"),
        ([0.5, 0.6], [1, 2], "correct must be boolean or 0/1"),
        ([[0.5, 0.6]], [[1, 0]], "confidence must be 1-D"),
    ],
)
def test_data_errors_name_the_argument(conf: list, correct: list, match: str) -> None:
    with pytest.raises(DataError, match=match):
        ece(conf, correct)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bins": 0}, "n_bins must be >= 1"),
        ({"n_bins": 2.5}, "n_bins must be a positive integer"),
        ({"n_bins": True}, "n_bins"),
        ({"binning": "quantile"}, "binning must be one of"),
        ({"norm": "l3"}, "norm must be one of"),
    ],
)
def test_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ece([0.5], [1], **kwargs)


def test_weights_and_bandwidth_validation() -> None:
    with pytest.raises(DataError, match="weights must be finite and >= 0"):
        ece([0.5, 0.6], [1, 0], weights=[1, -1])
    with pytest.raises(DataError, match="weights sum to 0"):
        ece([0.5, 0.6], [1, 0], weights=[0, 0])
    with pytest.raises(DataError, match="weights has 1 entries"):
        ece([0.5, 0.6], [1, 0], weights=[1])
    with pytest.raises(ConfigError, match="bandwidth"):
        smooth_ece([0.5], [1], bandwidth=0.0)
    with pytest.raises(DataError, match="labels contain -1"):
        classwise_ece([[0.5, 0.5]], [-1])
    with pytest.raises(DataError, match="rows must sum to 1"):
        classwise_ece([[0.5, 0.6]], [0])
    with pytest.raises(DataError, match="row 1: label 2 is not one of its 2 options"):
        classwise_ece([[0.2, 0.3, 0.5], [0.5, 0.5, 0.0]], [0, 2], n_options=[3, 2])
