"""Bootstrap: determinism, interval sanity, and that the fast paths resample like the slow one."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import pytest

from llmcal.errors import ConfigError, DataError
from llmcal.metrics import (
    accuracy,
    auroc,
    bootstrap,
    bootstrap_ci,
    bootstrap_distribution,
    brier,
    debiased_l2_ece,
    ece,
    mce,
    nll,
)
from llmcal.metrics.bootstrap import mass_bin_sums, resampled_means
from llmcal.metrics.calibration import ce_from_sums
from llmcal.scores import softmax


def _data(seed: int, n: int, power: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 1.0, size=n)
    return conf, rng.random(n) < conf**power


def test_same_seed_same_result_different_seed_differs() -> None:
    c, y = _data(0, 500)
    a = bootstrap_ci(ece, c, y, n_resamples=200, seed=3)
    assert a == bootstrap_ci(ece, c, y, n_resamples=200, seed=3)
    assert a != bootstrap_ci(ece, c, y, n_resamples=200, seed=4)
    assert a[0] == ece(c, y)
    d1 = bootstrap_distribution(ece, c, y, n_resamples=50, seed=1, binning="mass")
    np.testing.assert_array_equal(
        d1, bootstrap_distribution(ece, c, y, n_resamples=50, seed=1, binning="mass")
    )


def test_interval_covers_the_estimate_and_widens_with_confidence() -> None:
    c, y = _data(1, 2000)  # strongly over-confident: ECE ~0.2, far from its small-sample bias
    est, low, high = bootstrap_ci(ece, c, y, n_resamples=400)
    assert low < est < high
    assert high - low < 0.1
    _, low99, high99 = bootstrap_ci(ece, c, y, n_resamples=400, alpha=0.01)
    assert low99 <= low and high99 >= high


def _compare(fast: np.ndarray, slow: np.ndarray) -> None:
    # the two paths draw different resamples; their distributions must agree
    se = math.sqrt(fast.var() / fast.size + slow.var() / slow.size)
    assert abs(fast.mean() - slow.mean()) < 5 * se
    assert fast.std() == pytest.approx(slow.std(), rel=0.15)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"norm": "l2"},
        {"norm": "max", "n_bins": 5},
        {"binning": "mass"},
        {"binning": "mass", "norm": "l2", "n_bins": 7},
    ],
)
def test_binned_fast_paths_match_generic_resampling(kwargs: dict) -> None:
    c, y = _data(2, 400)
    c[:60] = 1.0  # saturated confidences: a cell with one distinct value
    fast = bootstrap_distribution(ece, c, y, n_resamples=1500, seed=5, **kwargs)
    slow = bootstrap_distribution(lambda a, b: ece(a, b, **kwargs), c, y, n_resamples=1500, seed=6)
    _compare(fast, slow)


def test_width_fast_path_with_few_distinct_confidences() -> None:
    c, y = _data(10, 3000)
    c = np.round(c, 2)
    fast = bootstrap_distribution(ece, c, y, n_resamples=1500, seed=5)
    slow = bootstrap_distribution(lambda a, b: ece(a, b), c, y, n_resamples=1500, seed=6)
    _compare(fast, slow)


def test_mce_and_debiased_fast_paths() -> None:
    c, y = _data(3, 300)
    for metric, kw in ((mce, {}), (debiased_l2_ece, {}), (debiased_l2_ece, {"squared": True})):
        fast = bootstrap_distribution(metric, c, y, n_resamples=1000, seed=1, **kw)
        slow = bootstrap_distribution(
            lambda a, b, m=metric, k=kw: m(a, b, **k), c, y, n_resamples=1000, seed=2
        )
        _compare(fast, slow)


def test_mean_metric_fast_paths() -> None:
    rng = np.random.default_rng(4)
    p = softmax(rng.normal(size=(300, 4)) * 2)
    y = rng.integers(0, 4, size=300)
    for metric in (accuracy, brier, nll):
        fast = bootstrap_distribution(metric, p, y, n_resamples=1000, seed=1)
        slow = bootstrap_distribution(
            lambda a, b, m=metric: m(a, b), p, y, n_resamples=1000, seed=2
        )
        _compare(fast, slow)


def test_resampled_means_exact_for_two_values() -> None:
    # resampled accuracy is Binomial(n, acc) / n: mean acc, variance acc (1 - acc) / n
    values = np.array([1.0] * 30 + [0.0] * 70)
    means = resampled_means(values, np.random.default_rng(0), 20000)
    assert means.mean() == pytest.approx(0.3, abs=0.002)
    assert means.var() == pytest.approx(0.3 * 0.7 / 100, rel=0.05)
    assert set(np.round(means * 100, 9)) <= set(range(101))


def test_mass_bin_sums_equal_weighted_ece_row_by_row() -> None:
    c, y = _data(5, 60)
    c[10:20] = 0.8  # ties across a bin cut
    order = np.argsort(c)
    cs, ys = c[order], y[order].astype(float)
    rng = np.random.default_rng(0)
    counts = np.stack([np.bincount(rng.integers(0, 60, 60), minlength=60) for _ in range(25)])
    weight, _, resid = mass_bin_sums(cs, ys, 7, counts)
    for row in range(25):
        got = ce_from_sums(weight[row], resid[row], "l1", 60.0)
        assert got == pytest.approx(ece(cs, ys, 7, "mass", weights=counts[row]), abs=1e-13)


def test_partial_and_kwargs_are_equivalent() -> None:
    c, y = _data(6, 300)
    a = bootstrap_ci(functools.partial(ece, n_bins=10, binning="mass"), c, y, n_resamples=100)
    b = bootstrap_ci(ece, c, y, n_resamples=100, n_bins=10, binning="mass")
    assert a == b


def test_generic_metric_and_nan_resamples() -> None:
    c, _ = _data(7, 200)
    est, low, high = bootstrap_ci(lambda a: float(np.mean(a)), c, n_resamples=300)
    se = c.std() / math.sqrt(200)
    assert est == pytest.approx(c.mean())
    assert low == pytest.approx(est - 1.96 * se, abs=0.6 * se)
    assert high == pytest.approx(est + 1.96 * se, abs=0.6 * se)
    # 3 samples, one wrong: some resamples hold one class and AUROC is NaN there; they are dropped
    est, low, high = bootstrap_ci(auroc, [0.9, 0.8, 0.3], [1, 1, 0], n_resamples=200)
    assert est == 1.0 and low == 1.0 and high == 1.0
    est, low, high = bootstrap_ci(auroc, [0.9, 0.8], [1, 1], n_resamples=20)
    assert math.isnan(est) and math.isnan(low) and math.isnan(high)


def test_errors() -> None:
    c, y = _data(8, 10)
    with pytest.raises(ConfigError, match="n_resamples"):
        bootstrap_ci(ece, c, y, n_resamples=0)
    with pytest.raises(ConfigError, match="alpha"):
        bootstrap_ci(ece, c, y, alpha=1.5)
    with pytest.raises(ConfigError, match="weights"):
        bootstrap_ci(ece, c, y, weights=np.ones(10))
    with pytest.raises(ConfigError, match="as keywords"):
        bootstrap_ci(ece, c, y, 10)
    with pytest.raises(DataError, match="different lengths"):
        bootstrap_ci(lambda a, b: 0.0, c, y[:5])
    with pytest.raises(DataError, match="confidence must lie"):
        bootstrap_ci(ece, c + 1, y)
    with pytest.raises(ConfigError, match="binning must be one of"):
        bootstrap_distribution(ece, c, y, binning="quantile")
    with pytest.raises(ConfigError, match="weights"):
        bootstrap_distribution(functools.partial(ece, weights=np.ones(10)), c, y)
    with pytest.raises(DataError, match="labels must lie"):
        bootstrap_distribution(accuracy, [[0.5, 0.5]], [3])


@pytest.mark.parametrize("decimals", [None, 2])
def test_width_path_resamples_confidences_within_cells(decimals: int | None) -> None:
    # all correct and one bin: ECE = 1 - mean confidence, so every bit of its bootstrap spread
    # comes from which confidences are drawn inside the (bin, correct) cell; rounding makes
    # the cell resample value counts (few distinct values) instead of single draws
    c, _ = _data(9, 2000)
    if decimals is not None:
        c = np.round(c, decimals)
    y = np.ones(2000, dtype=bool)
    fast = bootstrap_distribution(ece, c, y, n_resamples=2000, seed=1, n_bins=1)
    assert fast.std() == pytest.approx(c.std() / math.sqrt(2000), rel=0.1)
    _compare(fast, 1.0 - resampled_means(c, np.random.default_rng(2), 2000))


@pytest.mark.parametrize(
    ("metric", "kwargs"),
    [(ece, {}), (ece, {"binning": "mass", "norm": "l2"}), (mce, {}), (accuracy, None), (nll, None)],
)
def test_result_does_not_depend_on_the_thread_count(
    metric: Callable[..., float], kwargs: dict | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small chunks: 300 resamples of 500 rows are spread over 75 chunks, each with its own
    # spawned generator, so 1, 3 and 8 threads must give bit-identical distributions
    monkeypatch.setattr(bootstrap, "CHUNK_ELEMENTS", 2000)
    if kwargs is None:
        rng = np.random.default_rng(8)
        p = softmax(rng.normal(size=(500, 3)) * 2)
        args: tuple = (p, rng.integers(0, 3, size=500))
        kwargs = {}
    else:
        args = _data(8, 500)
    runs = [
        bootstrap_distribution(metric, *args, n_resamples=300, seed=11, workers=w, **kwargs)
        for w in (1, 3, 8)
    ]
    assert len(bootstrap.chunk_plan(500, 300, 11)) == 75
    assert runs[0].shape == (300,) and np.unique(runs[0]).size > 50
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])
    assert bootstrap_ci(metric, *args, n_resamples=300, seed=11, workers=2, **kwargs) == (
        bootstrap_ci(metric, *args, n_resamples=300, seed=11, workers=1, **kwargs)
    )


def test_workers_must_be_a_positive_integer() -> None:
    c, y = _data(1, 50)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="workers"):
            bootstrap_distribution(ece, c, y, workers=bad)
