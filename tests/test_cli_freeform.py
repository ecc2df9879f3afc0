"""The free-form CLI: generate → confidence → eval / fit / apply / report, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import assert_user_error, run
from llmcal.answers import Answers
from llmcal.scores import Scores


@pytest.mark.model
def test_generate_confidence_eval_fit_apply_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ans = tmp_path / "answers.parquet"
    code, out, err = run(
        capsys, "generate", "--model", "smollm2-135m-instruct", "--task", "synthetic-open",
        "--limit", "10", "--max-new-tokens", "5", "--matcher", "numeric", "--samples", "2",
        "--out", str(ans),
    )  # fmt: skip
    assert code == 0, err
    assert "generated 10 answers" in out and "judged 10 of 10 answers (matcher: numeric)" in out
    answers = Answers.load(ans)
    assert answers.n_samples == 2 and answers.meta["judge"]["matcher"] == "numeric"
    assert not Path(str(ans) + ".ckpt.jsonl").exists()

    paths = {}
    for method in ("seqlik", "seqlik-total", "consistency"):
        paths[method] = tmp_path / f"{method}.parquet"
        code, out, err = run(capsys, "confidence", str(ans), "--method", method,
                             "--out", str(paths[method]))  # fmt: skip
        assert code == 0, err
        assert Scores.load(paths[method]).view == "answer"
    paths["ptrue"] = tmp_path / "ptrue.parquet"
    code, out, err = run(capsys, "confidence", str(ans), "--method", "ptrue", "--model",
                         "smollm2-135m-instruct", "--out", str(paths["ptrue"]))  # fmt: skip
    assert code == 0, err
    ptrue = Scores.load(paths["ptrue"])
    assert ptrue.meta["confidence"]["method"] == "ptrue" and ptrue.meta["backend"] == "hf"

    metrics = tmp_path / "m.json"
    code, out, err = run(capsys, "eval", str(paths["seqlik"]), "--no-ci", "--json", str(metrics))
    assert code == 0, err
    result = json.loads(metrics.read_text())["metrics"]
    assert result["view"] == "answer"
    assert result["accuracy"] == pytest.approx(answers.accuracy())

    cal = tmp_path / "iso.json"
    code, out, err = run(capsys, "fit", "isotonic", str(paths["ptrue"]), "--out", str(cal))
    assert code == 0, err
    applied = tmp_path / "applied.parquet"
    code, out, err = run(capsys, "apply", str(cal), str(paths["ptrue"]), "--out", str(applied))
    assert code == 0, err
    assert Scores.load(applied).view == "answer"
    daca = tmp_path / "daca.json"
    code, out, err = run(capsys, "fit", "daca", "--target", str(paths["ptrue"]),
                         "--reference", str(paths["ptrue"]), "--out", str(daca))  # fmt: skip
    assert code == 0, err
    assert json.loads(daca.read_text())["params"]["temperature"] == pytest.approx(1.0, abs=1e-3)
    report = tmp_path / "r.md"
    code, out, err = run(capsys, "report", str(paths["seqlik"]), str(paths["ptrue"]),
                         "--calibrator", str(cal), "--resamples", "50", "--out", str(report))  # fmt: skip
    assert code == 0, err
    assert report.read_text().strip()


def test_freeform_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "q?", "answers": ["x"], "choices": ["x", "y"]}\n')
    code, _, err = run(capsys, "generate", "--model", "smollm2-135m-instruct", "--task",
                       str(bad), "--out", str(tmp_path / "a.parquet"))  # fmt: skip
    assert_user_error(code, err, f"{bad}, line 1", "both 'choices' and 'answers'")
    code, _, err = run(capsys, "generate", "--model", "m", "--task", "arc_easy",
                       "--out", str(tmp_path / "a.parquet"))  # fmt: skip
    assert_user_error(code, err, "multiple-choice task")
    code, _, err = run(capsys, "generate", "--model", "m", "--task", "synthetic-open",
                       "--matcher", "fuzzy", "--out", str(tmp_path / "a.csv"))  # fmt: skip
    assert_user_error(code, err, "expected a .parquet file")
    code, _, err = run(capsys, "confidence", str(tmp_path / "none.parquet"), "--method",
                       "seqlik", "--out", str(tmp_path / "c.parquet"))  # fmt: skip
    assert_user_error(code, err, "no such Answers file")
    code, _, err = run(capsys, "score", "--model", "m", "--task", "triviaqa",
                       "--out", str(tmp_path / "s.parquet"))  # fmt: skip
    assert_user_error(code, err, "open-ended task", "llmcal generate")
    assert not any(tmp_path.glob("*.parquet"))


def test_judge_command_with_a_label_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    answers = Answers(
        ids=("q0", "q1"), questions=("a?", "b?"), references=(("x",), ("y",)),
        prompts=("p", "p"), texts=("x", "z"), token_ids=((1,), (2,)),
        token_logprobs=((-0.5,), (-1.5,)), stop_reasons=("eos", "eos"),
        correct=np.array([-1, -1]),
    )  # fmt: skip
    src = answers.save(tmp_path / "a.parquet")
    labels = tmp_path / "grades.csv"
    labels.write_text("id,correct\nq0,0\nq1,1\n")
    out_path = tmp_path / "judged.parquet"
    code, out, err = run(capsys, "judge", str(src), "--labels", str(labels), "--out", str(out_path))
    assert code == 0, err
    assert "judged 2 of 2 answers (labels" in out
    assert Answers.load(out_path).correct.tolist() == [0, 1]
    code, out, err = run(capsys, "judge", str(src), "--matcher", "exact", "--out", str(out_path))
    assert code == 0 and Answers.load(out_path).correct.tolist() == [1, 0]
    labels.write_text("id,correct\nq0,0\n")
    code, _, err = run(capsys, "judge", str(src), "--labels", str(labels), "--out", str(out_path))
    assert_user_error(code, err, "1 answer id(s) have no label")
