"""DACA's MMLU protocol: one τ per subject, the τ = 1 fallback, and mean ± std over templates.

daca.md §2: "MMLU | τ per subject (57) … Metrics averaged over subjects; mean ± std over the
5 templates"; §8.10: "nothing specified for a subject with zero agreements | τ = 1 fallback
(what [code] does); count the affected subjects".
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_user_error, run
from llmcal.calibrate import (
    DACA,
    CalibrationWarning,
    SubjectDACA,
    load_calibrator,
    mean_std,
    template_protocol,
)
from llmcal.errors import CalibrationError
from llmcal.scores import Scores

SCALES = {"algebra": 2.0, "biology": 0.5, "chemistry": 3.0}


def _scores(z: np.ndarray, subjects: list[str], labels: np.ndarray | None = None) -> Scores:
    n = len(z)
    return Scores(
        ids=np.array([f"q{i}" for i in range(n)], dtype=object),
        logits=z,
        labels=np.full(n, -1) if labels is None else labels,
        meta={"task": "mmlu"},
        subjects=np.array(subjects, dtype=object),
    )


def _swapped(z: np.ndarray) -> np.ndarray:
    out = z.copy()
    rows = np.arange(len(z))
    top, bottom = z.argmax(axis=1), z.argmin(axis=1)
    out[rows, top], out[rows, bottom] = z[rows, bottom], z[rows, top]
    return out


@pytest.fixture
def pair() -> tuple[Scores, Scores]:
    """Target = scale_s × reference within subject s; subject "dead" never agrees."""
    rng = np.random.default_rng(0)
    zr, zt, subj = [], [], []
    for s, c in SCALES.items():
        z = rng.normal(size=(40, 4)) * 1.5
        zr.append(z)
        zt.append(c * z)
        subj += [s] * 40
    z = rng.normal(size=(10, 4))
    zr.append(z)
    zt.append(_swapped(z) * 2.0)
    subj += ["dead"] * 10
    return _scores(np.vstack(zt), subj), _scores(np.vstack(zr), subj)


def test_one_temperature_per_subject_and_the_fallback(pair: tuple[Scores, Scores]) -> None:
    target, reference = pair
    with pytest.warns(CalibrationWarning, match="1 of 4 subjects"):
        cal = SubjectDACA().fit(target=target, reference=reference)
    temps = cal.get_fitted_params()["temperatures"]
    for s, c in SCALES.items():
        assert temps[s] == pytest.approx(c, rel=1e-6)  # z_g = c·z_f ⇒ τ = c (daca.md §6)
    assert temps["dead"] == 1.0
    info = cal.fit_info_
    assert info is not None and info["n_fallback"] == 1 and info["n_subjects"] == 4
    assert info["subjects"]["dead"]["fallback"] and info["subjects"]["dead"]["n_agree"] == 0
    assert cal.get_fitted_params()["fallback_subjects"] == ["dead"]
    with pytest.raises(CalibrationError, match="nothing to fit on"):
        SubjectDACA(no_agreement="error").fit(target=target, reference=reference)


def test_transform_applies_each_subjects_tau(pair: tuple[Scores, Scores]) -> None:
    target, reference = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        cal = SubjectDACA().fit(target=target, reference=reference)
        pooled = DACA(no_agreement="fallback").fit(target=target, reference=reference)
    out = cal.transform(target)
    assert target.subjects is not None
    for i in (0, 45, 90, 125):
        tau = cal.get_fitted_params()["temperatures"][str(target.subjects[i])]
        np.testing.assert_array_equal(out.logits[i], target.logits[i] / tau)
    assert (out.predictions() == target.predictions()).all()
    # unseen subjects: the pooled DACA τ, 1, or an error
    new = _scores(target.logits[:3], ["astronomy"] * 3)
    assert cal.get_fitted_params()["unseen_temperature"] == pytest.approx(pooled.temperature)
    np.testing.assert_allclose(cal.transform(new).logits, new.logits / pooled.temperature)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        ident = SubjectDACA(unseen="identity").fit(target=target, reference=reference)
        strict = SubjectDACA(unseen="error").fit(target=target, reference=reference)
    np.testing.assert_array_equal(ident.transform(new).logits, new.logits)
    with pytest.raises(CalibrationError, match="not seen in the fit"):
        strict.transform(new)


def test_artefact_round_trip(pair: tuple[Scores, Scores], tmp_path: Path) -> None:
    target, reference = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        cal = SubjectDACA().fit(target=target, reference=reference)
    path = cal.save(tmp_path / "cal.json")
    raw = json.loads(path.read_text())
    assert raw["kind"] == "daca-subject" and set(raw["params"]["temperatures"]) == {*SCALES, "dead"}
    loaded = load_calibrator(path)
    assert isinstance(loaded, SubjectDACA)
    np.testing.assert_array_equal(loaded.transform(target).logits, cal.transform(target).logits)


def test_subjects_are_required(pair: tuple[Scores, Scores]) -> None:
    target, reference = pair
    bare = target.replace(subjects=None)
    with pytest.raises(CalibrationError, match="needs subjects"):
        SubjectDACA().fit(target=bare, reference=reference.replace(subjects=None))


def test_pooled_daca_fallback_option() -> None:
    z = np.random.default_rng(1).normal(size=(20, 4))
    target, reference = _scores(_swapped(z), ["x"] * 20), _scores(z, ["x"] * 20)
    with pytest.raises(CalibrationError, match="nothing to fit on"):
        DACA().fit(target=target, reference=reference)
    with pytest.warns(CalibrationWarning, match="keeps τ = 1"):
        cal = DACA(no_agreement="fallback").fit(target=target, reference=reference)
    assert cal.temperature == 1.0 and cal.fit_info_ is not None and cal.fit_info_["fallback"]
    assert cal.fit_info_["n_used"] == 0 and cal.fit_info_["n_agree"] == 0


def _mean_conf(s: Scores) -> float:
    return float(s.confidences().mean())


def test_template_protocol_mean_std_and_fallbacks(pair: tuple[Scores, Scores]) -> None:
    target, reference = pair
    runs = {}
    for j, name in enumerate(("daca1", "daca2", "daca3")):
        noise = np.random.default_rng(j).normal(scale=0.05, size=target.logits.shape)
        t = target.with_logits(target.logits * (1 + 0.1 * j) + noise)
        runs[name] = (t, reference, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        res = template_protocol(runs, _mean_conf)
        # by hand: per template, a SubjectDACA fit, the metric per subject, their mean
        by_hand_v, by_hand_d = [], []
        for t, r, test in runs.values():
            cal = SubjectDACA().fit(target=t, reference=r)
            out = cal.transform(test)
            subj = np.array([str(s) for s in test.subjects])  # type: ignore[union-attr]
            groups = sorted(set(subj))
            by_hand_v.append(
                np.mean([_mean_conf(test.select(np.flatnonzero(subj == g))) for g in groups])
            )
            by_hand_d.append(
                np.mean([_mean_conf(out.select(np.flatnonzero(subj == g))) for g in groups])
            )
    assert [res["templates"][k]["vanilla"] for k in runs] == pytest.approx(by_hand_v)
    assert [res["templates"][k]["daca"] for k in runs] == pytest.approx(by_hand_d)
    assert res["vanilla"] == pytest.approx((np.mean(by_hand_v), np.std(by_hand_v, ddof=1)))
    assert res["daca"] == pytest.approx((np.mean(by_hand_d), np.std(by_hand_d, ddof=1)))
    assert res["n_fallback"] == {"daca1": 1, "daca2": 1, "daca3": 1}  # "dead", still averaged
    assert mean_std([2.0]) == (2.0, 0.0)


def test_cli_fit_daca_per_subject(
    capsys: pytest.CaptureFixture[str], pair: tuple[Scores, Scores], tmp_path: Path
) -> None:
    target, reference = pair
    target.save(tmp_path / "t.parquet")
    reference.save(tmp_path / "r.parquet")
    args = ["fit", "daca", "--target", str(tmp_path / "t.parquet")]
    args += ["--reference", str(tmp_path / "r.parquet")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        code, out, err = run(capsys, *args, "--per-subject", "--out", str(tmp_path / "c.json"))
    assert code == 0, err
    assert "4 subjects" in out and "1 with no agreeing question kept τ = 1 (dead)" in out
    assert load_calibrator(tmp_path / "c.json").kind == "daca-subject"
    code, _, err = run(
        capsys, *args, "--per-subject", "--no-agreement", "error", "--out", str(tmp_path / "e.json")
    )
    assert_user_error(code, err, "nothing to fit on")
    assert not (tmp_path / "e.json").exists()
