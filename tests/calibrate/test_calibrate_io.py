"""Calibrator artefacts: JSON layout, bit-identical round trips, loading errors, transform meta."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import llmcal
from llmcal.calibrate import (
    CALIBRATORS,
    DACA,
    Calibrator,
    HistogramBinning,
    IsotonicCalibration,
    MatrixScaling,
    PlattScaling,
    TemperatureScaling,
    VectorScaling,
    load_calibrator,
)
from llmcal.errors import CalibrationError
from llmcal.scores import Scores


def make_scores(logits: np.ndarray, labels: np.ndarray, prefix: str, **meta: object) -> Scores:
    return Scores(
        ids=np.array([f"{prefix}{i}" for i in range(len(logits))], dtype=object),
        logits=logits,
        labels=labels,
        meta={"task": "synthetic", "model": "m-instruct", "template": "t1", **meta},
    )


def labelled(k: int, n: int, seed: int, prefix: str) -> Scores:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 1.3
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    return make_scores(2.5 * z + rng.normal(size=(n, k)) * 0.2, y, prefix)


TRAIN4, TEST4 = labelled(4, 400, 0, "a"), labelled(4, 300, 1, "b")
TRAIN2, TEST2 = labelled(2, 400, 2, "c"), labelled(2, 300, 3, "d")
REF4 = make_scores(TRAIN4.logits / 2.2, np.full(400, -1), "a", model="m-base")

FITTERS: dict[str, tuple[Callable[[], Calibrator], Callable[[Calibrator], Calibrator], Scores]] = {
    "temperature": (TemperatureScaling, lambda c: c.fit(TRAIN4), TEST4),
    "vector": (VectorScaling, lambda c: c.fit(TRAIN4), TEST4),
    "matrix": (
        lambda: MatrixScaling(off_diag_l2=0.1, bias_l2=0.01),
        lambda c: c.fit(TRAIN4),
        TEST4,
    ),
    "histogram": (lambda: HistogramBinning(12, "mass"), lambda c: c.fit(TRAIN4), TEST4),
    "isotonic": (IsotonicCalibration, lambda c: c.fit(TRAIN4), TEST4),
    "platt": (PlattScaling, lambda c: c.fit(TRAIN2), TEST2),
    "daca": (DACA, lambda c: c.fit(TRAIN4, REF4), TEST4),
    "daca-vector": (lambda: DACA("vector"), lambda c: c.fit(TRAIN4, REF4), TEST4),
    "daca-matrix": (lambda: DACA("matrix", "none"), lambda c: c.fit(TRAIN4, REF4), TEST4),
    "daca-parity": (lambda: DACA(parity=True, epochs=5), lambda c: c.fit(TRAIN4, REF4), TEST4),
}


def test_registry_names() -> None:
    assert sorted(CALIBRATORS) == sorted(
        [
            "temperature",
            "vector",
            "matrix",
            "histogram",
            "isotonic",
            "platt",
            "daca",
            "daca-subject",
        ]
    )
    for kind, cls in CALIBRATORS.items():
        assert cls.kind == kind


@pytest.mark.parametrize("name", list(FITTERS))
def test_json_round_trip_is_bit_identical(name: str, tmp_path: Path) -> None:
    make, fit, test = FITTERS[name]
    cal = fit(make())
    path = cal.save(tmp_path / "cal.json")
    assert [p.name for p in tmp_path.iterdir()] == ["cal.json"]  # no temp file left behind
    raw = json.loads(path.read_text())  # plain JSON, no pickle
    assert raw["format"] == "llmcal-calibrator" and raw["format_version"] == 1
    assert raw["kind"] == cal.kind and raw["llmcal_version"] == llmcal.__version__
    assert set(raw) == {
        "format",
        "format_version",
        "kind",
        "llmcal_version",
        "config",
        "params",
        "fit",
    }
    for loaded in (
        load_calibrator(path),
        type(cal).load(path),
        Calibrator.from_dict(cal.to_dict()),
    ):
        assert type(loaded) is type(cal)
        assert loaded.get_config() == cal.get_config()
        a, b = cal.transform(test), loaded.transform(test)
        assert np.array_equal(a.logits, b.logits)
        assert a.meta == b.meta


def test_artefact_records_what_daca_was_fitted_on(tmp_path: Path) -> None:
    d = DACA().fit(TRAIN4, REF4)
    raw = json.loads(d.save(tmp_path / "daca.json").read_text())
    fit = raw["fit"]
    assert raw["params"] == {"temperature": d.temperature}
    assert raw["config"]["scaler"] == "temperature" and raw["config"]["mask"] == "agree"
    assert fit["n_total"] == 400 and 0 < fit["n_used"] <= 400
    assert fit["n_used"] == fit["n_agree"] and fit["mask"] == "agree"
    assert fit["model"] == "m-instruct" and fit["reference"]["model"] == "m-base"
    assert fit["task"] == "synthetic" and fit["template"] == "t1"
    assert "newton" in fit["solver"] and fit["diverged"] is False


def test_transform_meta_is_chained_and_topk_marker_dropped() -> None:
    ts = TemperatureScaling().fit(TRAIN4)
    hb = HistogramBinning().fit(TRAIN4)
    src = TEST4.replace(meta={"topk": {"k": 2, "floor": -50.0}, "logit_kind": "topk_logprobs"})
    out = hb.transform(ts.transform(src))
    kinds = [e["kind"] for e in out.meta["calibration"]]
    assert kinds == ["temperature", "histogram"]
    assert "topk" not in out.meta and out.meta["calibration"][0]["input_topk"]["floor"] == -50.0
    assert out.meta["logit_kind"] == "probs_log"
    assert out.meta["model"] == "m-instruct"
    assert src.meta["topk"] == {"k": 2, "floor": -50.0}  # the input is untouched
    np.testing.assert_array_equal(out.labels, TEST4.labels)
    assert out.ids.tolist() == TEST4.ids.tolist()


def saved(tmp_path: Path, cal: Calibrator, edit: Callable[[dict], None] | None = None) -> Path:
    d = cal.to_dict()
    if edit is not None:
        edit(d)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(d))
    return path


def test_loading_another_kind_fails_with_the_fix(tmp_path: Path) -> None:
    path = DACA().fit(TRAIN4, REF4).save(tmp_path / "daca.json")
    with pytest.raises(
        CalibrationError, match=r"daca\.json holds a 'daca' calibrator.*load_calibrator"
    ):
        TemperatureScaling.load(path)
    with pytest.raises(CalibrationError, match="not a 'temperature'"):
        TemperatureScaling.from_dict(json.loads(path.read_text()))


def test_future_version_fails(tmp_path: Path) -> None:
    path = saved(tmp_path, TemperatureScaling().fit(TRAIN4), lambda d: d.update(format_version=2))
    with pytest.raises(CalibrationError, match=r"c\.json.*newer llmcal.*Upgrade"):
        load_calibrator(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json {", "not valid JSON"),
        ('{"foo": 1}', "not an llmcal calibrator"),
        ("[1, 2]", "not an llmcal calibrator"),
        ("\x00\xff", "not"),
    ],
)
def test_garbage_files_fail(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "junk.json"
    path.write_text(text, encoding="latin-1")
    with pytest.raises(CalibrationError, match=message) as err:
        load_calibrator(path)
    assert "junk.json" in str(err.value)


def test_corrupt_artefacts_fail(tmp_path: Path) -> None:
    ts = TemperatureScaling().fit(TRAIN4)
    cases: list[tuple[Callable[[dict], None], str]] = [
        (lambda d: d.update(kind="bogus"), "unknown calibrator kind"),
        (lambda d: d["params"].update(temperature="hot"), "not numeric"),
        (lambda d: d["params"].update(temperature=-1.0), "must be > 0"),
        (lambda d: d.pop("params"), "must be JSON objects"),
        (lambda d: d["params"].pop("temperature"), "missing or malformed"),
        (lambda d: d["config"].update(colour="red"), "invalid 'temperature' options"),
        (lambda d: d.update(format_version="1"), "invalid format_version"),
    ]
    for edit, message in cases:
        with pytest.raises(CalibrationError, match=message):
            load_calibrator(saved(tmp_path, ts, edit))
    vs = VectorScaling().fit(TRAIN4)
    with pytest.raises(CalibrationError, match="shape"):
        load_calibrator(saved(tmp_path, vs, lambda d: d["params"].update(b=[0.0, 1.0])))
    nan = saved(tmp_path, ts).read_text().replace(str(ts.temperature), "NaN")
    (tmp_path / "nan.json").write_text(nan)
    with pytest.raises(CalibrationError, match="not valid JSON"):
        load_calibrator(tmp_path / "nan.json")
    with pytest.raises(CalibrationError, match="no such calibrator file"):
        load_calibrator(tmp_path / "missing.json")


def test_unfitted_calibrators_cannot_be_saved(tmp_path: Path) -> None:
    for cls in CALIBRATORS.values():
        with pytest.raises(CalibrationError, match="not fitted"):
            cls().save(tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []


def test_lazy_top_level_import() -> None:
    assert llmcal.load_calibrator is load_calibrator


def test_import_is_light() -> None:
    code = (
        "import sys, llmcal.calibrate; "
        "heavy = [m for m in ('torch', 'sklearn', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
