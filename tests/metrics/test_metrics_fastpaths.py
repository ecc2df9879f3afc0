"""The fast paths of the binned errors agree bit for bit with the general code and a hand reference."""

from __future__ import annotations

import bisect
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcal.errors import DataError
from llmcal.metrics import ece, mce
from llmcal.metrics._validate import as_confidence, as_correct
from llmcal.metrics.calibration import (
    _width_bin_index_exact,
    bin_residuals,
    bin_stats,
    ce_from_sums,
    mass_bin_index,
    width_bin_index,
)


def reference_bins(conf: np.ndarray, n_bins: int) -> list[int]:
    """edges[b] < c <= edges[b+1] against the float edges fl(b/B), 0 -> bin 0 (by bisection)."""
    edges = [float(Fraction(b, n_bins)) for b in range(n_bins + 1)]
    return [min(max(bisect.bisect_left(edges, c) - 1, 0), n_bins - 1) for c in conf.tolist()]


def near_edges(n_bins: int) -> np.ndarray:
    """Every edge, its float neighbours up to 3 ulps away, 0, 1 and the c·B round-off cases."""
    edges = np.arange(n_bins + 1) / n_bins
    out = [edges]
    lo, hi = edges.copy(), edges.copy()
    for _ in range(3):
        lo, hi = np.nextafter(lo, -1.0), np.nextafter(hi, 2.0)
        out += [lo, hi]
    # values whose product with B rounds onto (or across) an integer
    k = np.arange(1, n_bins)
    out.append(np.nextafter(k / n_bins, 0.0))
    out.append((k - 1e-12) / n_bins)
    out.append((k + 1e-12) / n_bins)
    c = np.concatenate(out)
    return np.unique(c[(c >= 0.0) & (c <= 1.0)])


@pytest.mark.parametrize("n_bins", [1, 2, 3, 7, 10, 15, 49, 100, 1000, 4097])
def test_width_bins_fast_path_matches_the_rule_at_edges(n_bins: int) -> None:
    c = near_edges(n_bins)
    ref = reference_bins(c, n_bins)
    assert width_bin_index(c, n_bins).tolist() == ref
    assert _width_bin_index_exact(c, n_bins).tolist() == ref


@pytest.mark.parametrize("n_bins", [15, (1 << 20) + 1])
def test_width_bins_fast_and_fallback_agree_on_random_and_rounded_data(n_bins: int) -> None:
    rng = np.random.default_rng(n_bins)
    c = np.concatenate(
        [rng.random(20_000), np.round(rng.random(5_000), 2), rng.random(500) ** 20, [0.0, 1.0]]
    )
    fast = width_bin_index(c, n_bins)
    assert np.array_equal(fast, _width_bin_index_exact(c, n_bins))
    assert fast.tolist()[:2000] == reference_bins(c[:2000], n_bins)
    assert fast.tolist()[-5000:] == reference_bins(c[-5000:], n_bins)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=200),
    st.integers(1, 64),
)
def test_width_bins_property(conf: list[float], n_bins: int) -> None:
    c = np.asarray(conf)
    assert width_bin_index(c, n_bins).tolist() == reference_bins(c, n_bins)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("binning", ["width", "mass"])
def test_ece_path_is_bit_identical_to_the_full_bin_sums(weighted: bool, binning: str) -> None:
    rng = np.random.default_rng(3)
    c = np.concatenate([rng.random(30_000), np.round(rng.random(3_000), 2), [0.0, 1.0]])
    y = (rng.random(c.shape[0]) < c).astype(np.float64)
    w = rng.integers(0, 4, size=c.shape[0]).astype(np.float64) if weighted else None
    idx = width_bin_index(c, 15) if binning == "width" else mass_bin_index(c, 15, w)
    stats = bin_stats(idx, 15, c, y, w)
    weight, resid = bin_residuals(idx, 15, c, y, w)
    assert np.array_equal(weight, stats.weight) and np.array_equal(resid, stats.resid_sum)
    for norm in ("l1", "l2", "max"):
        full = ce_from_sums(stats.weight, stats.resid_sum, norm, stats.total)
        assert ece(c, y == 1.0, 15, binning, norm, w) == full  # type: ignore[arg-type]


def test_ece_and_mce_by_hand() -> None:
    # 3 bins: [0.1, 0.3] -> bin 0 (acc 1/2, conf .2), {0.5} -> bin 1, {0.9, 1.0} -> bin 2
    c = np.array([0.1, 0.3, 0.5, 0.9, 1.0])
    y = np.array([True, False, True, True, True])
    gaps = np.array([0.5 - 0.2, 1.0 - 0.5, 1.0 - 0.95])
    assert ece(c, y, 3) == pytest.approx((2 * gaps[0] + gaps[1] + 2 * gaps[2]) / 5, abs=1e-15)
    assert mce(c, y, 3) == pytest.approx(gaps.max(), abs=1e-15)


def test_ece_matches_torchmetrics_at_scale() -> None:
    torch = pytest.importorskip("torch")
    from torchmetrics.functional.classification import binary_calibration_error

    rng = np.random.default_rng(11)
    c = 0.25 + 0.75 * rng.beta(5.0, 2.0, size=200_000)
    y = rng.random(c.shape[0]) < c**1.4
    for norm, fn in (("l1", ece), ("max", mce)):
        tm = binary_calibration_error(
            torch.from_numpy(c), torch.from_numpy(y.astype(np.int64)), n_bins=15, norm=norm
        )
        assert fn(c, y, 15) == pytest.approx(float(tm), abs=1e-12)


def test_validation_fast_paths_keep_the_errors_and_values() -> None:
    c = np.array([0.2, -0.0, 1.0])
    assert as_confidence(c) is c
    assert np.array_equal(as_confidence(c.astype(np.float32)), c.astype(np.float32))
    with pytest.raises(DataError, match="contains NaN \\(first at index 1\\)"):
        as_confidence(np.array([0.2, np.nan, 2.0]))
    with pytest.raises(DataError, match="index 2 is"):
        as_confidence(np.array([0.2, 0.3, 1.5]))
    with pytest.raises(DataError, match="must lie in \\[0, 1\\]"):
        as_confidence(np.array([0.2, -np.inf]))
    flags = np.array([True, False, True])
    assert as_correct(flags, 3).tolist() == [1.0, 0.0, 1.0]
    assert as_correct(flags, 3).dtype == np.float64
    with pytest.raises(DataError, match="has 3 entries but confidence has 4"):
        as_correct(flags, 4)
    with pytest.raises(DataError, match="must be 1-D"):
        as_correct(np.array([[True]]), 1)
