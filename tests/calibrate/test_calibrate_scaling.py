"""Temperature, vector and matrix scaling: exactness against brute force, and their errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from llmcal.calibrate import MatrixScaling, TemperatureScaling, VectorScaling
from llmcal.calibrate._solvers import affine_objective
from llmcal.errors import CalibrationError, LLMCalError
from llmcal.scores import Scores


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood, computed independently of llmcal."""
    z = np.where(np.isfinite(logits), logits, -np.inf)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(z)), labels]))


def nll_grid(logits: np.ndarray, labels: np.ndarray, taus: np.ndarray) -> np.ndarray:
    return np.array([nll(logits / t, labels) for t in taus])


def make_scores(logits: np.ndarray, labels: np.ndarray, prefix: str = "q") -> Scores:
    return Scores(
        ids=np.array([f"{prefix}{i}" for i in range(len(logits))], dtype=object),
        logits=logits,
        labels=labels,
        meta={"task": "synthetic", "model": "m"},
    )


def sample(rng: np.random.Generator, n: int, k: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from softmax(true logits)."""
    z = rng.normal(size=(n, k)) * scale
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    return z, y


@pytest.fixture(scope="module")
def overconfident() -> tuple[Scores, np.ndarray]:
    rng = np.random.default_rng(11)
    z, y = sample(rng, 1500, 4, 1.2)
    return make_scores(2.5 * z, y), z


def test_ts_matches_dense_grid_search(overconfident: tuple[Scores, np.ndarray]) -> None:
    scores, _ = overconfident
    ts = TemperatureScaling().fit(scores)
    coarse = np.linspace(0.2, 8.0, 781)
    t0 = coarse[np.argmin(nll_grid(scores.logits, scores.labels, coarse))]
    fine = np.linspace(t0 - 0.02, t0 + 0.02, 4001)  # step 1e-5
    grid_nll = nll_grid(scores.logits, scores.labels, fine)
    t_grid = fine[np.argmin(grid_nll)]
    assert abs(ts.temperature - t_grid) < 1e-4
    assert 2.0 < ts.temperature < 3.0  # the data were made over-confident by 2.5
    assert nll(scores.logits / ts.temperature, scores.labels) <= grid_nll.min() + 1e-12


def test_ts_optimum_beats_tau1_and_has_zero_gradient(
    overconfident: tuple[Scores, np.ndarray],
) -> None:
    scores, _ = overconfident
    ts = TemperatureScaling().fit(scores)
    tau = ts.temperature
    f = lambda t: nll(scores.logits / t, scores.labels)  # noqa: E731
    assert f(tau) < f(1.0)
    h = 1e-4
    assert abs((f(tau + h) - f(tau - h)) / (2 * h)) < 1e-7
    assert ts.fit_info_ is not None and ts.fit_info_["converged"] and not ts.fit_info_["diverged"]
    assert ts.fit_info_["nll"] == pytest.approx(f(tau), abs=1e-12)


def test_ts_keeps_argmax_and_divides_logits(overconfident: tuple[Scores, np.ndarray]) -> None:
    scores, _ = overconfident
    ts = TemperatureScaling().fit(scores)
    out = ts.transform(scores)
    np.testing.assert_array_equal(out.predictions(), scores.predictions())
    np.testing.assert_array_equal(out.logits, scores.logits / ts.temperature)
    assert out.meta["calibration"][-1]["kind"] == "temperature"
    assert out.meta["calibration"][-1]["params"]["temperature"] == ts.temperature
    assert out.meta["task"] == "synthetic"


def test_ts_rows_with_different_option_counts() -> None:
    rng = np.random.default_rng(5)
    z, y = sample(rng, 800, 5, 1.0)
    k = np.where(np.arange(800) % 2 == 0, 3, 5)
    y = np.minimum(y, k - 1)  # labels valid for the row's options
    logits = 3.0 * z
    logits[k == 3, 3:] = -np.inf
    scores = make_scores(logits, y)
    ts = TemperatureScaling().fit(scores)
    taus = np.linspace(0.5, 6.0, 551)
    t0 = taus[np.argmin(nll_grid(logits, y, taus))]
    fine = np.linspace(t0 - 0.01, t0 + 0.01, 2001)
    t_grid = fine[np.argmin(nll_grid(logits, y, fine))]
    assert abs(ts.temperature - t_grid) < 1e-4
    out = ts.transform(scores)
    assert np.isneginf(out.logits[k == 3, 3:]).all()
    np.testing.assert_array_equal(out.predictions(), scores.predictions())


def test_ts_all_correct_diverges_with_warning() -> None:
    logits = np.array([[3.0, 0.0, -1.0], [0.0, 2.0, 1.0], [1.0, 0.5, 4.0]])
    scores = make_scores(logits, np.array([0, 1, 2]))
    with pytest.warns(UserWarning, match="diverged=True"):
        ts = TemperatureScaling(tau_range=(1e-3, 1e3)).fit(scores)
    assert ts.fit_info_ is not None and ts.fit_info_["diverged"]
    assert ts.temperature == pytest.approx(1e-3)


def test_supervised_fits_need_labels() -> None:
    rng = np.random.default_rng(0)
    z, y = sample(rng, 50, 4, 1.0)
    y[7] = -1
    scores = make_scores(z, y)
    for cal in (TemperatureScaling(), VectorScaling(), MatrixScaling()):
        with pytest.raises(LLMCalError, match="unlabelled"):
            cal.fit(scores)


def test_empty_scores_rejected() -> None:
    empty = make_scores(np.zeros((0, 4)), np.zeros(0, dtype=int))
    for cal in (TemperatureScaling(), VectorScaling(), MatrixScaling()):
        with pytest.raises(CalibrationError, match="at least one question"):
            cal.fit(empty)


def test_unfitted_transform_fails() -> None:
    rng = np.random.default_rng(0)
    z, y = sample(rng, 10, 4, 1.0)
    for cal in (TemperatureScaling(), VectorScaling(), MatrixScaling()):
        with pytest.raises(CalibrationError, match="not fitted"):
            cal.transform(make_scores(z, y))


@pytest.fixture(scope="module")
def classwise() -> tuple[Scores, Scores]:
    """Logits distorted per class (scale and bias), which one temperature cannot undo."""
    rng = np.random.default_rng(3)
    z, y = sample(rng, 6000, 4, 1.5)
    s = np.array([3.0, 0.6, 1.0, 2.0])
    b = np.array([0.8, -0.6, 0.0, 0.3])
    obs = z * s + b
    return make_scores(obs[:3000], y[:3000], "a"), make_scores(obs[3000:], y[3000:], "b")


def test_vector_and_matrix_beat_temperature_on_classwise_distortion(
    classwise: tuple[Scores, Scores],
) -> None:
    train, test = classwise
    ts = TemperatureScaling().fit(train)
    vs = VectorScaling().fit(train)
    ms = MatrixScaling().fit(train)
    for split in (train, test):
        base = nll(ts.transform(split).logits, split.labels)
        assert nll(vs.transform(split).logits, split.labels) < base - 0.01
        assert nll(ms.transform(split).logits, split.labels) < base - 0.01
    # vector scaling nests temperature scaling, so on its own training data it cannot be worse
    assert nll(vs.transform(train).logits, train.labels) <= nll(
        ts.transform(train).logits, train.labels
    )
    # the fitted scales undo the distortion up to a common factor
    ratio = vs.w * np.array([3.0, 0.6, 1.0, 2.0])
    assert np.ptp(ratio) / ratio.mean() < 0.15
    assert vs.fit_info_ is not None and vs.fit_info_["gradient_norm"] < 1e-6


def test_affine_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(40, 3))
    p = rng.dirichlet(np.ones(3), size=40)
    w = rng.random(40)
    for kind, n_par in (("vector", 6), ("matrix", 12)):
        theta = rng.normal(size=n_par)
        _, g = affine_objective(theta, z, p, w, kind, off_diag_l2=0.7, bias_l2=0.3)
        num = np.zeros(n_par)
        for i in range(n_par):
            e = np.zeros(n_par)
            e[i] = 1e-6
            num[i] = (
                affine_objective(theta + e, z, p, w, kind, 0.7, 0.3)[0]
                - affine_objective(theta - e, z, p, w, kind, 0.7, 0.3)[0]
            ) / 2e-6
        np.testing.assert_allclose(g, num, atol=1e-7)


def test_matrix_odir_shrinks_off_diagonal(classwise: tuple[Scores, Scores]) -> None:
    train, _ = classwise
    small = train.select(np.arange(200))
    free = MatrixScaling().fit(small)
    reg = MatrixScaling(off_diag_l2=50.0, bias_l2=50.0).fit(small)
    off = ~np.eye(4, dtype=bool)
    assert np.abs(reg.W[off]).sum() < 0.5 * np.abs(free.W[off]).sum()
    assert np.abs(reg.b).sum() < np.abs(free.b).sum()


def test_vector_matrix_need_equal_option_counts(classwise: tuple[Scores, Scores]) -> None:
    train, _ = classwise
    logits = np.array(train.logits[:20])
    logits[3, 3] = -np.inf
    labels = np.minimum(train.labels[:20], 2)
    ragged = make_scores(logits, labels)
    for cal in (VectorScaling(), MatrixScaling()):
        with pytest.raises(CalibrationError, match="same number of options"):
            cal.fit(ragged)
    vs = VectorScaling().fit(train)
    five = make_scores(np.zeros((3, 5)) + np.arange(5), np.array([0, 1, 2]))
    with pytest.raises(CalibrationError, match="fitted on 4 options"):
        vs.transform(five)
    with pytest.raises(CalibrationError, match="same number of options"):
        vs.transform(ragged)


def test_bad_options_rejected() -> None:
    with pytest.raises(CalibrationError, match="tau_range"):
        TemperatureScaling(tau_range=(2.0, 1.0))
    with pytest.raises(CalibrationError, match="≥ 0"):
        MatrixScaling(off_diag_l2=-1.0)


def test_class_bias_maps_refuse_a_single_class() -> None:
    from llmcal.calibrate import DACA, PlattScaling

    rng = np.random.default_rng(0)
    z = rng.normal(size=(30, 4))
    one = Scores(ids=[f"q{i}" for i in range(30)], logits=z, labels=np.zeros(30, dtype=int))
    for cal in (VectorScaling(), MatrixScaling()):
        with pytest.raises(CalibrationError, match="all 30 calibration labels are option A"):
            cal.fit(one)
    with warnings.catch_warnings():  # random logits: τ may run to its bound, with a warning
        warnings.simplefilter("ignore")
        assert TemperatureScaling().fit(one).is_fitted  # no single-class error for one τ
    binary = Scores(ids=one.ids, logits=z[:, :2], labels=np.ones(30, dtype=int))
    with pytest.raises(CalibrationError, match="option B"):
        PlattScaling().fit(binary)
    ref = Scores(ids=one.ids, logits=z + np.array([9.0, 0, 0, 0]), labels=np.full(30, -1))
    tgt = ref.replace(logits=2 * ref.logits)
    with pytest.raises(CalibrationError, match="reference predictions are option A"):
        DACA(scaler="vector").fit(tgt, ref)
    assert DACA().fit(tgt, ref).temperature == pytest.approx(2.0, rel=1e-9)
