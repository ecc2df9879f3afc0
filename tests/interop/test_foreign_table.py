"""``llmcal eval --foreign``: a CSV / Parquet table of probabilities, read as it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmcal.cli import main
from llmcal.errors import ConfigError, ScoresError
from llmcal.interop.table import parse_table_mapping, read_foreign_table

CSV = (
    "qid,p_a,p_b,p_c,gold\nx1,0.7,0.2,0.1,0\nx2,0.5,0.3,0.2,1\nx3,0.1,0.8,0.1,1\nx4,0.3,0.3,0.4,2\n"
)
MAP = "id=qid,label=gold,probs=p_a|p_b|p_c"
P = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
Y = np.array([0, 1, 1, 2])


def test_mapped_csv_gives_the_probabilities_and_metrics_by_hand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "mine.csv"
    f.write_text(CSV)
    scores, unknown = read_foreign_table(f, MAP)
    assert scores.ids.tolist() == ["x1", "x2", "x3", "x4"]
    np.testing.assert_allclose(scores.probs(), P, atol=1e-15)
    assert scores.labels.tolist() == Y.tolist() and unknown == ["model", "task", "template"]
    out = tmp_path / "m.json"
    args = ["eval", str(f), "--foreign", "--columns", MAP, "--no-ci", "--json", str(out)]
    assert main([*args, "--model", "my-api-model"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        f"llmcal: warning: {f} has no llmcal metadata: task, template unknown (give --model / "
        "--task to record them); the scores are taken as they are\n"
    )
    metrics = json.loads(out.read_text())
    assert metrics["meta"]["model"] == "my-api-model"
    m = metrics["metrics"]
    # by hand: each confidence in its own 15-width bin; Brier = mean squared error to one-hot
    conf, correct = P.max(axis=1), (P.argmax(axis=1) == Y).astype(float)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["ece"] == pytest.approx(np.mean(np.abs(conf - correct)))  # 0.4
    assert m["brier"] == pytest.approx(np.mean(((P - np.eye(3)[Y]) ** 2).sum(axis=1)))  # 0.38
    assert m["nll"] == pytest.approx(-np.mean(np.log(P[np.arange(4), Y])))


def test_parquet_without_llmcal_metadata_needs_foreign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "probs.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "probs": [[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]],
                             "label": [0, 0, 1]}), f)  # fmt: skip
    assert main(["eval", str(f), "--no-ci"]) == 2
    err = capsys.readouterr().err
    assert "no llmcal metadata" in err and "pass --foreign" in err and err.count("\n") == 1
    assert main(["eval", str(f), "--foreign", "--no-ci"]) == 0
    captured = capsys.readouterr()
    assert "model, task, template unknown" in captured.err
    assert "questions                  3" in captured.out
    csv = tmp_path / "p.csv"
    csv.write_text(CSV)
    assert main(["eval", str(csv), "--no-ci"]) == 2
    assert "is a table, not a Scores file; pass --foreign" in capsys.readouterr().err


def test_bad_mappings_and_columns_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown field 'prob'"):
        parse_table_mapping("prob=a|b")
    with pytest.raises(ConfigError, match="only probs / logits take several columns"):
        parse_table_mapping("id=a|b,probs=x|y")
    with pytest.raises(ConfigError, match="map probs, logits or confidence"):
        parse_table_mapping("id=qid,label=gold")
    with pytest.raises(ConfigError, match="given twice"):
        parse_table_mapping("probs=a|b,probs=c|d")
    f = tmp_path / "mine.csv"
    f.write_text(CSV)
    with pytest.raises(ScoresError, match="no column 'p_d' \\(for probs\\)"):
        read_foreign_table(f, "id=qid,probs=p_a|p_d")
    g = tmp_path / "bad.csv"
    g.write_text("qid,p_a,p_b\nx1,0.7,0.7\n")
    with pytest.raises(ScoresError, match=r"sum to 1\.4"):
        read_foreign_table(g, "id=qid,probs=p_a|p_b")


def test_confidence_tables_give_the_answer_view(tmp_path: Path) -> None:
    f = tmp_path / "conf.csv"
    f.write_text("q,p_true,ok\na,0.9,1\nb,0.2,0\nc,0.6,0\n")
    scores, _ = read_foreign_table(f, "id=q,confidence=p_true,correct=ok")
    assert scores.view == "answer"
    np.testing.assert_allclose(scores.confidences(), [0.9, 0.2, 0.6])
    assert scores.correct().tolist() == [True, False, False]
