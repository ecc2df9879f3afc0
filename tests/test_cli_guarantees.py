"""`llmcal fit conformal|selective`, `apply` and `eval` of their outputs, and the error contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cli_helpers import assert_user_error, run
from llmcal.calibrate import ConformalPredictor, PredictionSets, SelectiveDecisions, SelectiveRisk
from llmcal.calibrate.conformal import set_coverage
from llmcal.scores import Scores


def _mc(n: int, seed: int, prefix: str) -> Scores:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)) * 3.0
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    return Scores(
        ids=np.array([f"{prefix}{i}" for i in range(n)], dtype=object),
        logits=1.3 * z,
        labels=y,
        meta={"task": "synthetic-mc", "model": "toy-instruct"},
        subjects=np.array(
            [("algebra", "biology", "history")[i % 3] for i in range(n)], dtype=object
        ),
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guarantees")
    paths = {"cal": root / "cal.parquet", "test": root / "test.parquet"}
    _mc(600, 1, "c").save(paths["cal"])
    _mc(1500, 2, "t").save(paths["test"])
    paths["unlabelled"] = root / "unlabelled.parquet"
    _mc(40, 3, "u").replace(labels=np.full(40, -1)).save(paths["unlabelled"])
    return paths


def test_conformal_round_trip(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cp, sets = tmp_path / "cp.json", tmp_path / "sets.parquet"
    # options before the positional Scores file, as in the documented usage
    code, out, err = run(capsys, "fit", "conformal", "--alpha", "0.1", "--score", "aps",
                         "--randomized", str(files["cal"]), "--out", str(cp))  # fmt: skip
    assert code == 0, err
    assert "fitted conformal (aps, randomised, alpha 0.1) on 600 questions" in out
    lib = ConformalPredictor(0.1, "aps", randomized=True).fit(Scores.load(files["cal"]))
    assert json.loads(cp.read_text())["params"]["qhat"] == lib.qhat

    code, out, err = run(capsys, "apply", str(cp), str(files["test"]), "--out", str(sets))
    assert code == 0, err
    table = pq.read_table(sets)
    assert table.column_names == ["id", "set", "label", "n_options", "subject"]
    expected = lib.predict_sets(Scores.load(files["test"]))
    assert table.column("set").to_pylist() == expected.sets()

    js = tmp_path / "sets.json"
    code, out, err = run(capsys, "eval", str(sets), "--json", str(js))
    assert code == 0, err
    r = set_coverage(PredictionSets.load(sets))
    lo, hi = r["coverage_ci"]
    assert f"coverage {r['coverage']:.4f} [{lo:.4f}, {hi:.4f}] (Clopper–Pearson" in out
    assert f"mean set size {r['mean_size']:.3f}" in out
    assert "set size" in out and "history" in out  # size-stratified and per-subject tables
    assert json.loads(js.read_text())["metrics"]["coverage"] == r["coverage"]


def test_selective_round_trip(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sel, dec = tmp_path / "sel.json", tmp_path / "dec.parquet"
    code, out, err = run(capsys, "fit", "selective", "--risk", "0.1", "--delta", "0.05",
                         str(files["cal"]), "--out", str(sel))  # fmt: skip
    assert code == 0, err
    lib = SelectiveRisk(0.1, 0.05).fit(Scores.load(files["cal"]))
    assert f"answer when confidence >= {lib.threshold:.6g}" in out
    code, out, err = run(capsys, "apply", str(sel), str(files["test"]), "--out", str(dec))
    assert code == 0, err
    test = Scores.load(files["test"])
    answered = test.confidences() >= lib.threshold
    risk = 1 - test.correct()[answered].mean()
    assert f"answered {answered.sum()} of 1500 questions" in out
    assert f"realised error rate among answered {risk:.4f}" in out
    code, out, err = run(capsys, "eval", str(dec))
    assert code == 0, err
    assert "guarantee: with probability >= 0.95" in out and f"{risk:.4f}" in out
    assert SelectiveDecisions.load(dec).answered.tolist() == answered.tolist()


def test_selective_that_answers_nothing_says_so(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sel, dec = tmp_path / "sel0.json", tmp_path / "dec0.parquet"
    code, out, err = run(capsys, "fit", "selective", "--risk", "0.001", str(files["cal"]),
                         "--out", str(sel))  # fmt: skip
    assert code == 0, err
    assert "llmcal: warning:" in err and "answers nothing" in err  # one line, no traceback
    assert "NO confidence threshold meets the bound" in out
    code, out, err = run(capsys, "apply", str(sel), str(files["test"]), "--out", str(dec))
    assert code == 0, err
    assert "the rule answers nothing" in out and "answered 0 of 1500" in out


def test_answer_view_scores_work_with_selective(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    c = rng.uniform(0.5, 1.0, 3000)
    cal = Scores.from_confidence(c, correct=rng.random(3000) >= 1.2 * (1 - c))
    cal.save(tmp_path / "free.parquet")
    code, out, err = run(capsys, "fit", "selective", "--risk", "0.15", str(tmp_path / "free.parquet"),
                         "--out", str(tmp_path / "s.json"))  # fmt: skip
    assert code == 0, err
    assert "answer when confidence >=" in out
    code, _, err = run(capsys, "fit", "conformal", str(tmp_path / "free.parquet"),
                       "--out", str(tmp_path / "c.json"))  # fmt: skip
    assert_user_error(code, err, "for multiple-choice")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["conformal", "--alpha", "1.5"],
            "alpha (--alpha) must be a number strictly between 0 and 1",
        ),
        (["conformal", "--alpha", "0"], "alpha (--alpha)"),
        (["selective", "--risk", "0"], "risk (--risk)"),
        (["selective", "--risk", "1"], "risk (--risk)"),
        (["selective", "--delta", "1.2"], "delta (--delta)"),
        (["temperature", "--alpha", "0.1"], "--alpha is an option of `llmcal fit conformal`"),
        (["conformal", "--risk", "0.1"], "--risk is an option of `llmcal fit selective`"),
        (["conformal", "--score", "lac", "--randomized"], "applies to the aps and raps"),
    ],
)
def test_bad_options_are_one_line_errors(
    argv: list[str], fragment: str, files: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    out = tmp_path / "x.json"
    code, _, err = run(capsys, "fit", *argv, str(files["cal"]), "--out", str(out))
    assert_user_error(code, err, fragment)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["conformal", "selective"])
def test_unlabelled_calibration_is_a_one_line_error(
    kind: str, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.json"
    code, _, err = run(capsys, "fit", kind, str(files["unlabelled"]), "--out", str(out))
    assert_user_error(code, err, "needs labelled calibration Scores", "40 of 40 rows")
    assert not out.exists()


def test_unlabelled_test_split_gets_sets_without_coverage(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cp, sets = tmp_path / "cp.json", tmp_path / "u.parquet"
    assert run(capsys, "fit", "conformal", str(files["cal"]), "--out", str(cp))[0] == 0
    code, out, err = run(capsys, "apply", str(cp), str(files["unlabelled"]), "--out", str(sets))
    assert code == 0, err
    assert "unlabelled: no coverage" in out
    code, _, err = run(capsys, "eval", str(sets), "--plot", str(tmp_path / "p.png"))
    assert_user_error(code, err, "--plot draws a reliability diagram")
