"""The llmcal CLI end to end with the real bundled models, and its error contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli_helpers import assert_user_error, run
from llmcal.cli import main
from llmcal.scores import Scores


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """arc_easy (12 questions) scored by both bundled models through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    paths = {}
    for model in ("smollm2-135m-instruct", "gemma3-270m"):
        out = root / f"{model}.parquet"
        code = main(
            ["score", "--model", model, "--task", "arc_easy", "--data-dir", str(data_dir),
             "--limit", "12", "--mode", "cloze", "--normalization", "sum", "--out", str(out)]
        )  # fmt: skip
        assert code == 0 and out.is_file()
        paths[model] = out
    return paths


@pytest.mark.model
def test_score_then_eval_matches_a_hand_computation(
    scored: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = scored["smollm2-135m-instruct"]
    table = pq.read_table(path)
    logits = np.array(table.column("logits").to_pylist())
    labels = np.array(table.column("label").to_pylist())
    assert len(labels) == 12 and (labels >= 0).all()
    hand_acc = float(np.mean(logits.argmax(axis=1) == labels))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    hand_conf = float(p.max(axis=1).mean())

    out_json, out_png = tmp_path / "m.json", tmp_path / "m.png"
    code, out, err = run(capsys, "eval", str(path), "--json", str(out_json), "--plot", str(out_png))
    assert code == 0, err
    metrics = json.loads(out_json.read_text())["metrics"]
    assert metrics["accuracy"] == pytest.approx(hand_acc, abs=1e-12)
    assert metrics["mean_confidence"] == pytest.approx(hand_conf, abs=1e-12)
    assert f"{hand_acc:.4f}" in out and "ECE (15 bins, width) [95% CI]" in out
    assert out_png.stat().st_size > 1000
    meta = json.loads(table.schema.metadata[b"llmcal"])["meta"]
    assert meta["model"] == "smollm2-135m-instruct" and meta["mode"] == "cloze"


@pytest.mark.model
def test_fit_apply_and_daca(
    scored: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    polm, plm = scored["smollm2-135m-instruct"], scored["gemma3-270m"]
    cal, out = tmp_path / "ts.json", tmp_path / "cal.parquet"
    code, _, err = run(capsys, "fit", "temperature", str(polm), "--out", str(cal))
    assert code == 0, err
    code, text, err = run(capsys, "apply", str(cal), str(polm), "--out", str(out))
    assert code == 0, err and "applied temperature" in text
    before, after = Scores.load(polm), Scores.load(out)
    tau = json.loads(cal.read_text())["params"]["temperature"]
    np.testing.assert_allclose(after.logits, before.logits / tau, rtol=1e-15)
    assert np.array_equal(after.predictions(), before.predictions())

    daca = tmp_path / "daca.json"
    code, text, err = run(
        capsys, "fit", "daca", "--target", str(polm), "--reference", str(plm), "--out", str(daca)
    )
    assert code == 0, err
    art = json.loads(daca.read_text())
    assert art["kind"] == "daca" and art["fit"]["n_total"] == 12
    assert art["fit"]["n_used"] == art["fit"]["n_agree"] <= 12


def test_list_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0 and "arc_easy" in out and "smollm2-135m-instruct" in out and "daca3" in out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and "llmcal" in capsys.readouterr().out


def test_user_errors_exit_2_without_output(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.parquet"
    code, _, err = run(
        capsys, "score", "--model", "smollm2-135m-instruct", "--task", "nope", "--out", str(out)
    )
    assert_user_error(code, err, "unknown task 'nope'")
    code, _, err = run(
        capsys, "score", "--model", "x", "--task", "arc_easy", "--out", str(tmp_path / "r.csv")
    )
    assert_user_error(code, err, "--out", ".parquet")

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "question": "q", "choices": ["x", "y"], "answer": 0}\n{"id": "b", "question": "q", "choices": ["x"], "answer": 0}\n'
    )
    code, _, err = run(
        capsys, "score", "--model", "smollm2-135m-instruct", "--task", str(bad), "--out", str(out)
    )
    assert_user_error(code, err, str(bad), "line 2")

    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), foreign)
    code, _, err = run(capsys, "eval", str(foreign))
    assert_user_error(code, err, "not written by llmcal")
    code, _, err = run(capsys, "eval", str(tmp_path / "missing.parquet"))
    assert_user_error(code, err, "no such Scores file")

    code, _, err = run(
        capsys, "fit", "daca", "--target", str(foreign), "--out", str(tmp_path / "d.json")
    )
    assert_user_error(code, err, "--reference")
    not_cal = tmp_path / "x.json"
    not_cal.write_text('{"hello": 1}')
    code, _, err = run(capsys, "apply", str(not_cal), str(foreign), "--out", str(out))
    assert_user_error(code, err, "not an llmcal calibrator")
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_unlabelled_scores_refuse_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = Scores(ids=["a", "b"], logits=[[1.0, 0.0], [0.0, 2.0]], labels=[-1, -1]).save(
        tmp_path / "u.parquet"
    )
    code, _, err = run(capsys, "eval", str(path), "--json", str(tmp_path / "u.json"))
    assert_user_error(code, err, "unlabelled")
    assert not (tmp_path / "u.json").exists()


@pytest.mark.model
def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "demo", "--n", "40", "--freeform-n", "12", "--out-dir", str(tmp_path)
    )
    assert code == 0, err
    assert "Free-form answers: 12 synthetic questions" in out and "P(True) aligned" in out
    for name in (
        "answers.parquet",
        "ptrue-aligned.parquet",
        "ptrue-base.parquet",
        "smollm2-135m-instruct.parquet",
        "gemma3-270m.parquet",
        "daca.json",
        "temperature.json",
        "reliability.png",
    ):
        assert (tmp_path / name).is_file(), name
    assert (
        "+ DACA (no labels)" in out
        and "+ TS (labels)" in out
        and "Test split (28 questions)" in out
    )
    art = json.loads((tmp_path / "daca.json").read_text())
    assert art["fit"]["n_total"] == 12  # 30 % of 40, fitted without labels
