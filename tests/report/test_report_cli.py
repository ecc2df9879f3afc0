"""``llmcal report``: formats, calibrators, labels, and the error contract (exit 2, no output)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from synthetic_runs import make_scores, perturbed

from cli_helpers import assert_user_error, run
from llmcal.calibrate import TemperatureScaling, VectorScaling
from llmcal.metrics import evaluate
from llmcal.report.tables import SUMMARY_ROWS, report_cell

FAST = ("--resamples", "100")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    base = make_scores(0, n=120)
    aligned = perturbed(base, seed=1).replace(meta={"model": "aligned-model"})
    paths = {
        "base": tmp_path / "base.parquet",
        "aligned": tmp_path / "aligned.parquet",
        "ts": tmp_path / "ts.json",
        "vs": tmp_path / "vs.json",
    }
    base.save(paths["base"])
    aligned.save(paths["aligned"])
    TemperatureScaling().fit(aligned).save(paths["ts"])
    VectorScaling().fit(aligned).save(paths["vs"])
    return paths


def eval_numbers(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> dict[str, str]:
    """``llmcal eval``'s summary table as {evaluate key: printed text}."""
    code, out, err = run(capsys, "eval", str(path), *extra)
    assert code == 0, err
    by_label = {label: key for key, label, _ in SUMMARY_ROWS}
    numbers = {}
    for line in out.splitlines():
        parts = re.split(r"\s{2,}", line.strip())
        if len(parts) != 2:
            continue
        label, value = parts
        key = "ece" if label.startswith("ECE (") else by_label.get(label)
        if key:
            numbers[key] = value
    assert len(numbers) == len(SUMMARY_ROWS), out
    return numbers


def test_json_report_with_calibrators_and_labels(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    code, stdout, err = run(
        capsys, "report", str(files["base"]), str(files["aligned"]),
        "--calibrator", str(files["ts"]), "--calibrator", str(files["vs"]),
        "--labels", "base,aligned,TS,VS", *FAST, "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "report of 4 run(s), 3 drift comparison(s)" in stdout and f"wrote {out}" in stdout
    data = json.loads(out.read_text())
    assert [r["name"] for r in data["runs"]] == ["base", "aligned", "TS", "VS"]
    # both calibrators go to the last RUN; each calibrated run is compared with it
    assert [(d["before"], d["after"]) for d in data["drift"]] == [
        ("base", "aligned"),
        ("aligned", "TS"),
        ("aligned", "VS"),
    ]
    from llmcal.calibrate import load_calibrator
    from llmcal.scores import Scores

    aligned = Scores.load(files["aligned"])
    for name, cal in (("TS", "ts"), ("VS", "vs")):
        r = next(r for r in data["runs"] if r["name"] == name)
        expected = evaluate(load_calibrator(files[cal]).transform(aligned), n_resamples=100)
        assert r["metrics"]["ece"] == expected["ece"]
        assert r["metrics"]["ece_ci"] == expected["ece_ci"]
        assert r["provenance"]["calibrator_file"] == str(files[cal])
        assert r["provenance"]["calibrated_from"] == "aligned"
        assert r["provenance"]["file"] == str(files["aligned"])
    assert data["runs"][0]["provenance"]["calibrator_file"] is None


def test_default_names_and_formats(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md = tmp_path / "r.md"
    code, _, err = run(
        capsys, "report", str(files["aligned"]), "--calibrator", str(files["ts"]), *FAST,
        "--title", "PR 42", "--out", str(md),
    )  # fmt: skip
    assert code == 0, err
    text = md.read_text()
    assert text.startswith("## PR 42") and "| aligned → aligned + ts | 120 |" in text
    # the same Scores file twice gets distinct names; --format overrides nothing but must match
    html = tmp_path / "same.html"
    code, _, err = run(
        capsys, "report", str(files["base"]), str(files["base"]), *FAST, "--format", "html",
        "--out", str(html),
    )  # fmt: skip
    assert code == 0, err
    page = html.read_text()
    assert "base (2)" in page and page.startswith("<!DOCTYPE html>")


def test_report_numbers_equal_eval(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = eval_numbers(capsys, files["aligned"], "--bins", "10", "--seed", "4")
    out = tmp_path / "r.json"
    code, _, err = run(
        capsys, "report", str(files["aligned"]), "--bins", "10", "--seed", "4", "--out", str(out)
    )
    assert code == 0, err
    metrics = json.loads(out.read_text())["runs"][0]["metrics"]
    for key, _, spec in SUMMARY_ROWS:
        assert report_cell(metrics, key, spec) == printed[key], key


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["{missing}"], ["missing.parquet", "no such Scores file"]),
        (["{unlabelled}"], ["unlabelled.parquet", "needs labelled Scores", "2 of 30"]),
        (["{base}", "--labels", "a,b"], ["--labels gives 2 name(s) for 1 run(s)"]),
        (["{base}", "{aligned}", "--labels", "a,a"], ["unique", "'a'"]),
        (["{base}", "--calibrator", "{ts}", "--labels", "a"], ["1 name(s) for 2 run(s)"]),
        (["{base}", "--labels", " "], ["non-empty"]),
        (["{base}", "--calibrator", "{missing_cal}"], ["nope.json", "no such calibrator"]),
        (["{small}", "--calibrator", "{vs}"], ["vs.json: cannot apply it to", "small.parquet"]),
        (["{base}", "--tolerance", "1.5"], ["tolerance"]),
    ],
)
def test_errors_exit_2_and_write_nothing(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    fragments: list[str],
) -> None:
    s = make_scores(2, n=30)
    s.replace(labels=np.where(np.arange(30) < 2, -1, s.labels)).save(
        tmp_path / "unlabelled.parquet"
    )
    make_scores(3, n=30, k=3).save(tmp_path / "small.parquet")
    paths = {
        **{k: str(v) for k, v in files.items()},
        "missing": str(tmp_path / "missing.parquet"),
        "missing_cal": str(tmp_path / "nope.json"),
        "unlabelled": str(tmp_path / "unlabelled.parquet"),
        "small": str(tmp_path / "small.parquet"),
    }
    out = tmp_path / "out" / "report.html"
    argv = ["report", *(a.format(**paths) for a in args), *FAST, "--out", str(out)]
    code, _, err = run(capsys, *argv)
    assert_user_error(code, err, *fragments)
    assert not out.exists() and not out.parent.exists()


@pytest.mark.parametrize(
    ("out_name", "extra", "fragment"),
    [
        ("report.pdf", [], "cannot tell the report format"),
        ("report.html", ["--format", "json"], "expected a .json file"),
        ("report.json", ["--format", "md"], "expected a .md or .markdown file"),
    ],
)
def test_output_path_checked_first(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    out_name: str,
    extra: list[str],
    fragment: str,
) -> None:
    # the output is checked before any input is read: the RUN file here does not exist
    code, _, err = run(
        capsys, "report", str(tmp_path / "nope.parquet"), *extra, "--out", str(tmp_path / out_name)
    )
    assert_user_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_output_is_written_atomically(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reports" / "r.json"
    out.parent.mkdir()
    out.write_text("old")
    code, _, err = run(
        capsys, "report", str(files["base"]), *FAST, "--labels", "x,y", "--out", str(out)
    )
    assert_user_error(code, err, "--labels")
    assert out.read_text() == "old"
    code, _, err = run(capsys, "report", str(files["base"]), *FAST, "--out", str(out))
    assert code == 0, err
    assert json.loads(out.read_text())["runs"][0]["name"] == "base"
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # no temp file left
