"""Array-level calibrator API (fit(logits, labels) / predict_proba), scikit-learn naming, and
cross-fitting, cross-checked against scikit-learn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from llmcal.calibrate import (
    CALIBRATORS,
    DACA,
    Calibrator,
    CrossFitted,
    HistogramBinning,
    IsotonicCalibration,
    MatrixScaling,
    PlattScaling,
    TemperatureScaling,
    VectorScaling,
    as_scores,
    load_calibrator,
    stratified_folds,
)
from llmcal.errors import CalibrationError, ScoresError
from llmcal.scores import Scores, softmax


def sample(k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident logits: labels drawn from softmax(z), logits are 2.5 z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 1.3
    p = softmax(z)
    y = (p.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    return 2.5 * z, y


Z4, Y4 = sample(4, 400, 0)
Z4T, Y4T = sample(4, 200, 1)
Z2, Y2 = sample(2, 400, 2)
Z2T, Y2T = sample(2, 200, 3)

SUPERVISED: dict[str, Callable[[], Calibrator]] = {
    "temperature": TemperatureScaling,
    "vector": VectorScaling,
    "matrix": lambda: MatrixScaling(off_diag_l2=0.1),
    "histogram": lambda: HistogramBinning(10, "mass"),
    "isotonic": IsotonicCalibration,
    "platt": PlattScaling,
}


def _data(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (Z2, Y2, Z2T) if name == "platt" else (Z4, Y4, Z4T)


def _scores(z: np.ndarray, y: np.ndarray | None = None) -> Scores:
    labels = np.full(len(z), -1) if y is None else y
    return Scores(ids=np.array([f"q{i}" for i in range(len(z))], dtype=object), logits=z,
                  labels=labels, meta={"task": "t", "model": "m"})  # fmt: skip


@pytest.mark.parametrize("name", list(SUPERVISED))
def test_array_fit_and_predict_proba_equal_the_scores_api(name: str) -> None:
    z, y, zt = _data(name)
    on_arrays = SUPERVISED[name]().fit(z, y)
    on_scores = SUPERVISED[name]().fit(_scores(z, y))
    assert on_arrays.get_fitted_params() == on_scores.get_fitted_params()
    p = on_arrays.predict_proba(zt)
    assert p.shape == zt.shape
    np.testing.assert_array_equal(p, on_scores.transform(_scores(zt)).probs())
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(on_arrays.predict(zt), np.argmax(p, axis=1))


def test_daca_takes_target_and_reference_arrays() -> None:
    ref = Z4 / 2.0
    a = DACA().fit(Z4, ref)
    b = DACA().fit(_scores(Z4), _scores(ref))
    assert a.temperature_ == b.temperature_
    assert a.temperature_ == pytest.approx(2.0, rel=1e-6)  # the reference is the target at τ = 2
    np.testing.assert_allclose(a.predict_proba(Z4T), softmax(Z4T / 2.0), atol=1e-9)
    vs = DACA("vector").fit(Z4, ref)
    np.testing.assert_allclose(vs.w_, 0.5, atol=1e-5)
    np.testing.assert_allclose(vs.b_, 0.0, atol=1e-5)


def test_one_dimensional_binary_logits() -> None:
    d = Z2[:, 1] - Z2[:, 0]
    a = PlattScaling().fit(d, Y2)
    b = PlattScaling().fit(Z2, Y2)
    assert a.a_ == pytest.approx(b.a_, abs=1e-9) and a.b_ == pytest.approx(b.b_, abs=1e-9)
    ts = TemperatureScaling().fit(d, Y2)
    p = ts.predict_proba(d)
    assert p.shape == (len(d), 2)
    np.testing.assert_allclose(p[:, 1], 1.0 / (1.0 + np.exp(-d / ts.temperature_)), atol=1e-12)


def test_get_params_are_constructor_options_and_fitted_values_end_in_underscore() -> None:
    for make in SUPERVISED.values():
        cal = make()
        params = cal.get_params()
        assert params == cal.get_config()
        assert type(cal)(**params).get_params() == params  # rebuilds it unfitted
        assert not cal.clone().is_fitted
    assert HistogramBinning(7, "mass").get_params() == {"n_bins": 7, "binning": "mass"}
    ts = TemperatureScaling().fit(Z4, Y4)
    assert ts.get_params() == {"tau_range": [1e-4, 1e4]}
    assert ts.get_fitted_params() == {"temperature": ts.temperature_}
    vs = VectorScaling().fit(Z4, Y4)
    assert vs.get_fitted_params() == {"w": vs.w_.tolist(), "b": vs.b_.tolist()}
    ms = MatrixScaling().fit(Z4, Y4)
    assert ms.W_.shape == (4, 4) and ms.b_.shape == (4,)
    iso = IsotonicCalibration().fit(Z4, Y4)
    assert iso.get_fitted_params() == {"x": iso.x_.tolist(), "y": iso.y_.tolist()}
    hb = HistogramBinning(5).fit(Z4, Y4)
    assert len(hb.edges_) == 6 and len(hb.values_) == 5


def test_set_params_validates_like_the_constructor() -> None:
    hb = HistogramBinning()
    assert hb.set_params(n_bins=4) is hb and hb.n_bins == 4
    with pytest.raises(CalibrationError, match="n_bins must be a positive integer"):
        hb.set_params(n_bins=0)
    with pytest.raises(CalibrationError, match=r"has no option\(s\) \['bins'\]"):
        hb.set_params(bins=3)
    ts = TemperatureScaling().set_params(tau_range=[0.5, 2.0])
    assert ts.tau_range == (0.5, 2.0)


def test_array_input_errors_are_clear() -> None:
    with pytest.raises(CalibrationError, match="labels are read from the Scores"):
        TemperatureScaling().fit(_scores(Z4, Y4), Y4)
    with pytest.raises(CalibrationError, match=r"labels must have shape \(400,\)"):
        TemperatureScaling().fit(Z4, Y4[:10])
    with pytest.raises(CalibrationError, match="n × K array"):
        TemperatureScaling().fit(np.zeros((2, 2, 2)), [0, 1])
    with pytest.raises(CalibrationError, match="integer option indices"):
        TemperatureScaling().fit(Z4[:2], [0.5, 1])
    with pytest.raises(ScoresError, match="needs labels"):
        TemperatureScaling().fit(Z4)
    assert as_scores(Z4).ids.tolist()[:3] == ["0", "1", "2"]


# -- scikit-learn cross-checks ---------------------------------------------------------------
def test_isotonic_matches_sklearn_isotonic_regression() -> None:
    sk = pytest.importorskip("sklearn.isotonic")
    iso = IsotonicCalibration().fit(Z4, Y4)
    conf = softmax(Z4).max(axis=1)
    correct = (Z4.argmax(axis=1) == Y4).astype(float)
    ref = sk.IsotonicRegression(out_of_bounds="clip").fit(conf, correct)
    conf_t = softmax(Z4T).max(axis=1)
    np.testing.assert_allclose(iso.calibrated_confidence(Z4T), ref.predict(conf_t), atol=1e-12)


def test_platt_matches_unpenalised_logistic_regression() -> None:
    lm = pytest.importorskip("sklearn.linear_model")
    d = Z2[:, 1] - Z2[:, 0]
    ours = PlattScaling().fit(Z2, Y2)
    ref = lm.LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(d[:, None], Y2)
    assert ours.a_ == pytest.approx(float(ref.coef_[0, 0]), rel=1e-5)
    assert ours.b_ == pytest.approx(float(ref.intercept_[0]), abs=1e-5)
    dt = Z2T[:, 1] - Z2T[:, 0]
    np.testing.assert_allclose(ours.predict_proba(Z2T), ref.predict_proba(dt[:, None]), atol=1e-6)


def test_stratified_folds_are_balanced_and_seeded() -> None:
    sel = pytest.importorskip("sklearn.model_selection")
    folds = stratified_folds(Y4, 5, seed=0)
    assert np.array_equal(folds, stratified_folds(Y4, 5, seed=0))
    assert not np.array_equal(folds, stratified_folds(Y4, 5, seed=1))
    sizes = np.bincount(folds, minlength=5)
    assert sizes.max() - sizes.min() <= 1
    for c in np.unique(Y4):  # per-class counts per fold differ by ≤ 1, as StratifiedKFold's
        per = np.bincount(folds[c == Y4], minlength=5)
        assert per.max() - per.min() <= 1
    sk_sizes = [len(t) for _, t in sel.StratifiedKFold(5).split(Z4, Y4)]
    assert sorted(sizes.tolist()) == sorted(sk_sizes)


def test_cross_fitted_platt_equals_sklearn_cross_val_predict() -> None:
    sel = pytest.importorskip("sklearn.model_selection")
    lm = pytest.importorskip("sklearn.linear_model")
    cf = CrossFitted(PlattScaling(), n_splits=4, seed=3)
    oof = cf.fit_transform(Z2, Y2)
    d = (Z2[:, 1] - Z2[:, 0])[:, None]
    ref = sel.cross_val_predict(
        lm.LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000),
        d, Y2, cv=sel.PredefinedSplit(cf.folds_), method="predict_proba",
    )  # fmt: skip
    np.testing.assert_allclose(oof.probs(), ref, atol=1e-6)


# -- cross-fitting ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["temperature", "vector", "histogram", "isotonic"])
def test_out_of_fold_rows_come_from_a_calibrator_that_never_saw_them(name: str) -> None:
    cf = CrossFitted(SUPERVISED[name](), n_splits=5, seed=0).fit(_scores(Z4, Y4))
    assert cf.oof_ is not None and cf.folds_ is not None and cf.members_ is not None
    assert len(cf.members_) == 5
    for f in range(5):
        held = cf.folds_ == f
        alone = SUPERVISED[name]().fit(_scores(Z4, Y4).select(~held))
        np.testing.assert_allclose(
            cf.oof_.probs()[held], alone.transform(_scores(Z4[held])).probs(), atol=1e-12
        )
    assert cf.oof_.ids.tolist() == [f"q{i}" for i in range(len(Z4))]
    assert cf.oof_.meta["calibration"][-1]["out_of_fold"] is True
    # ensemble: new questions get the mean of the fold calibrators' probabilities
    mean = np.mean([m.predict_proba(Z4T) for m in cf.members_], axis=0)
    np.testing.assert_allclose(cf.predict_proba(Z4T), mean, atol=1e-12)


def test_out_of_fold_confidences_are_not_the_optimistic_in_sample_ones() -> None:
    # histogram binning fitted and measured on the same questions looks better calibrated than
    # it is; its out-of-fold ECE is not flattered that way
    from llmcal.metrics import ece

    in_sample = HistogramBinning(15).fit(Z4, Y4).transform(_scores(Z4, Y4))
    oof = CrossFitted(HistogramBinning(15), n_splits=5).fit_transform(_scores(Z4, Y4))
    assert np.array_equal(oof.predictions(), in_sample.predictions())  # top-label: argmax kept
    e_in = ece(in_sample.confidences(), in_sample.correct(), n_bins=15)
    e_oof = ece(oof.confidences(), oof.correct(), n_bins=15)
    assert e_in < 0.04 < e_oof


def test_ensemble_false_uses_one_calibrator_fitted_on_everything() -> None:
    cf = CrossFitted(TemperatureScaling(), n_splits=3, ensemble=False).fit(Z4, Y4)
    full = TemperatureScaling().fit(Z4, Y4)
    assert cf.members_ is not None and len(cf.members_) == 1
    assert cf.members_[0].temperature_ == full.temperature_
    np.testing.assert_array_equal(cf.predict_proba(Z4T), full.predict_proba(Z4T))
    assert cf.transform(_scores(Z4T)).meta["logit_kind"] == "logits"


def test_cross_fitted_round_trips_through_json(tmp_path: Path) -> None:
    cf = CrossFitted("vector", n_splits=3, seed=7).fit(Z4, Y4)
    path = cf.save(tmp_path / "cf.json")
    loaded = load_calibrator(path)
    assert isinstance(loaded, CrossFitted)
    assert loaded.get_params() == cf.get_params() == {
        "calibrator": {"kind": "vector", "config": {}}, "n_splits": 3, "ensemble": True, "seed": 7,
    }  # fmt: skip
    np.testing.assert_array_equal(loaded.predict_proba(Z4T), cf.predict_proba(Z4T))
    assert "cross_fitted" not in CALIBRATORS  # a wrapper, not an `llmcal fit` kind


def test_cross_fitting_errors() -> None:
    with pytest.raises(CalibrationError, match="DACA never uses labels"):
        CrossFitted(DACA())
    with pytest.raises(CalibrationError, match="n_splits must be an integer ≥ 2"):
        CrossFitted(n_splits=1)
    with pytest.raises(CalibrationError, match="cannot be split into n_splits=5"):
        CrossFitted().fit(Z4[:3], Y4[:3])
    with pytest.raises(CalibrationError, match="kinds:"):
        CrossFitted("nope")
    with pytest.raises(CalibrationError, match="not fitted"):
        CrossFitted().predict_proba(Z4)


def test_cli_fit_cross_fit_writes_the_artefact_and_out_of_fold_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmcal.cli import main

    run = tmp_path / "run.parquet"
    _scores(Z4, Y4).save(run)
    cal, oof = tmp_path / "cf.json", tmp_path / "oof.parquet"
    args = ["fit", "temperature", str(run), "--cross-fit", "4", "--seed", "2"]
    assert main([*args, "--oof", str(oof), "--out", str(cal)]) == 0
    text = capsys.readouterr().out
    assert "cross-fitted temperature in 4 folds on 400 questions" in text
    loaded = load_calibrator(cal)
    assert isinstance(loaded, CrossFitted) and loaded.get_params()["n_splits"] == 4
    ref = CrossFitted(TemperatureScaling(), n_splits=4, seed=2).fit_transform(_scores(Z4, Y4))
    np.testing.assert_array_equal(Scores.load(oof).logits, ref.logits)
    assert main(["apply", str(cal), str(run), "--out", str(tmp_path / "a.parquet")]) == 0
    bad = ["fit", "daca", "--target", str(run), "--reference", str(run), "--cross-fit", "3"]
    assert main([*bad, "--out", str(tmp_path / "d.json")]) == 2
    assert "--cross-fit / --oof are for supervised calibrators" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()
