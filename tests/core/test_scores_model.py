"""The Scores data model: explicit option counts, the answer view, array/table constructors and
a loader that names the file and row of every malformed cell."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from llmcal import Scores, ScoresError
from llmcal.metrics import evaluate
from llmcal.scores import ScoresWarning

NEG = -np.inf


def _write(path: Path, columns: dict, header: object) -> Path:
    table = pa.table(columns)
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    pq.write_table(table.replace_schema_metadata({b"llmcal": raw}), path)
    return path


# -- probability exactly 0 is a value, not padding ----------------------------------------------
def test_zero_probability_in_last_column_can_be_the_label(tmp_path: Path) -> None:
    # the correct option has probability 0: a legal (if terrible) prediction
    s = Scores(ids=["a", "b"], logits=[[0.0, NEG], [1.0, 0.0]], labels=[1, 0], n_options=[2, 2])
    assert s.n_options.tolist() == [2, 2]
    assert s.correct().tolist() == [False, True]
    back = Scores.load(s.save(tmp_path / "z.parquet"))
    assert back.equals(s) and back.n_options.tolist() == [2, 2]
    assert evaluate(back, ci=False)["nll"] == np.inf


def test_minus_inf_inside_a_row_is_legal_and_padding_is_explicit() -> None:
    s = Scores(
        ids=["a", "b"], logits=[[NEG, 1.0, 2.0], [0.5, 1.0, NEG]], labels=[0, 1], n_options=[3, 2]
    )
    np.testing.assert_allclose(s.probs()[0], [0.0, 1 / (1 + np.e), np.e / (1 + np.e)])
    # row b has two options; its third column is padding and a label 2 would be out of range
    with pytest.raises(ScoresError, match=r"label 2 is outside -1\.\.1"):
        s.replace(labels=np.array([0, 2]))
    # derived counts: trailing -inf is padding, inner -inf is a value
    d = Scores(ids=["a"], logits=[[1.0, NEG, 0.0, NEG]], labels=[2])
    assert d.n_options.tolist() == [3] and d.k == 4
    assert d.select([0]).k == 3  # the padding column is trimmed


def test_select_concat_and_replace_keep_option_counts() -> None:
    a = Scores(ids=["a"], logits=[[0.0, NEG]], labels=[0], n_options=[2])
    b = Scores(ids=["b"], logits=[[0.0, 1.0, 2.0]], labels=[2])
    both = Scores.concat([a, b])
    assert both.n_options.tolist() == [2, 3] and both.k == 3
    assert both.select([0]).n_options.tolist() == [2] and both.select([0]).k == 2
    assert both.by_ids(["b", "a"]).n_options.tolist() == [3, 2]
    assert not a.equals(a.replace(n_options=np.array([2])).replace(logits=np.array([[0.0, -1.0]])))


def test_format_1_files_are_still_read(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "v1.parquet",
        {"id": ["a", "b"], "logits": [[0.0, 1.0, NEG], [1.0, 2.0, 3.0]], "label": [1, 2]},
        {"format": 1, "meta": {"model": "m"}},
    )
    s = Scores.load(path)
    assert s.n_options.tolist() == [2, 3] and s.meta["model"] == "m" and s.view == "options"


# -- the answer view ----------------------------------------------------------------------------
def test_answer_view_reads_p_right_against_correctness() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(0.01, 0.99, 400)
    y = (rng.uniform(size=400) < p**1.5).astype(int)
    s = Scores.from_confidence(p, y, meta={"model": "m"})
    assert s.view == "answer" and s.k == 2
    np.testing.assert_allclose(s.confidences(), p, rtol=1e-12)
    assert s.correct().tolist() == (y == 1).tolist()
    r = evaluate(s, ci=False)
    assert r["view"] == "answer"
    assert r["accuracy"] == pytest.approx(y.mean())
    assert r["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-12)
    assert r["nll"] == pytest.approx(log_loss(y, p), rel=1e-10)
    assert r["auroc"] == pytest.approx(roc_auc_score(y, p), rel=1e-12)
    # ECE of p against y by hand, 15 equal-width bins over [0, 1]
    idx = np.minimum((p * 15).astype(int), 14)
    hand = sum(
        abs(p[idx == b].mean() - y[idx == b].mean()) * (idx == b).mean()
        for b in range(15)
        if (idx == b).any()
    )
    assert r["ece"] == pytest.approx(hand, abs=1e-12)
    # the binary top-label view is a different quantity, and says so
    top = s.as_options()
    assert top.view == "options" and top.meta["view_from"] == "answer"
    np.testing.assert_allclose(top.confidences(), np.maximum(p, 1 - p))
    assert evaluate(top, ci=False)["ece"] != pytest.approx(r["ece"])


def test_answer_view_survives_save_and_load(tmp_path: Path) -> None:
    s = Scores.from_confidence([0.0, 0.3, 1.0], [0, 1, 1], ids=["x", "y", "z"])
    back = Scores.load(s.save(tmp_path / "a.parquet"))
    assert back.view == "answer" and back.equals(s)
    np.testing.assert_allclose(back.confidences(), [0.0, 0.3, 1.0])
    with pytest.raises(ScoresError, match="0/1"):
        Scores.from_confidence([0.2], [2])


# -- constructors from arrays and tables -------------------------------------------------------
def test_from_probs_and_logits_generate_ids_and_accept_binary_probs() -> None:
    s = Scores.from_probs([0.2, 0.9], [0, 1])
    assert s.ids.tolist() == ["0", "1"] and s.k == 2
    np.testing.assert_allclose(s.probs(), [[0.8, 0.2], [0.1, 0.9]])
    assert s.correct().tolist() == [True, True]
    t = Scores.from_logits([[1.0, 2.0, 3.0]], [2], ids=[17])
    assert t.ids.tolist() == ["17"]
    with pytest.raises(ScoresError, match="sum to"):
        Scores.from_probs([[0.5, 0.6]])
    with pytest.raises(ScoresError, match=r"\[0, 1\]"):
        Scores.from_probs([[1.5, -0.5]])
    with pytest.raises(ScoresError, match="integers"):
        Scores.from_probs([0.5], ["yes"])


def test_pandas_round_trip() -> None:
    pd = pytest.importorskip("pandas")
    s = Scores(
        ids=["a", "b"],
        logits=[[0.0, NEG, NEG], [1.0, 2.0, 0.5]],
        labels=[0, -1],
        n_options=[2, 3],
        subjects=["x", None],
        meta={"model": "m"},
    )
    df = s.to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df["n_options"]) == [2, 3]
    np.testing.assert_allclose(df[["prob_0", "prob_1", "prob_2"]].to_numpy(), s.probs())
    back = Scores.from_pandas(df)
    assert back.equals(s) and back.meta["model"] == "m"


def test_read_table_csv_with_probabilities_warns_what_is_unknown(tmp_path: Path) -> None:
    csv = tmp_path / "probs.csv"
    csv.write_text("id,prob_0,prob_1,prob_2,label\nq1,0.2,0.5,0.3,1\nq2,0.6,0.4,,0\n")
    with pytest.warns(ScoresWarning, match="model, task, template unknown"):
        s = Scores.read_table(csv)
    assert s.ids.tolist() == ["q1", "q2"] and s.n_options.tolist() == [3, 2]
    np.testing.assert_allclose(s.probs()[1], [0.6, 0.4, 0.0])
    lists = tmp_path / "lists.csv"
    lists.write_text('id,probs,label\nq1,"[0.1, 0.9]",1\n')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScoresWarning)
        assert Scores.read_table(lists).correct().tolist() == [True]
        conf = tmp_path / "conf.csv"
        conf.write_text("id,confidence,correct\na,0.7,1\nb,0.2,0\n")
        c = Scores.read_table(conf)
    assert c.view == "answer"
    np.testing.assert_allclose(c.confidences(), [0.7, 0.2])
    bad = tmp_path / "bad.csv"
    bad.write_text("id,prob_0,prob_1,label\nq1,0.2,abc,1\n")
    with pytest.raises(ScoresError, match=r"row 0.*'abc', not a number"):
        Scores.read_table(bad)


# -- the loader names what is wrong ------------------------------------------------------------
GOOD = {"id": ["a", "b"], "logits": [[0.0, 1.0], [1.0, 0.0]], "label": [1, 0]}
HEADER = {"format": 2, "meta": {}}


@pytest.mark.parametrize(
    ("columns", "header", "message"),
    [
        ({**GOOD, "label": ["1", "0"]}, HEADER, "row 0.*label must be an integer, got '1'"),
        ({**GOOD, "label": [1, None]}, HEADER, "row 1.*label must be an integer, got None"),
        ({**GOOD, "logits": ["x", "y"]}, HEADER, "row 0.*logits must be a list"),
        ({**GOOD, "logits": [[0.0, None], [1.0, 0.0]]}, HEADER, "row 0.*None, not a number"),
        ({**GOOD, "logits": [None, [1.0, 0.0]]}, HEADER, "row 0.*logits must be a list"),
        ({**GOOD, "id": [1, 2]}, HEADER, "row 0: id must be text"),
        ({**GOOD, "n_options": [2, 3]}, HEADER, "row 1.*n_options is 3"),
        (GOOD, [1, 2], "JSON object"),
        (GOOD, {"format": 2, "meta": [1]}, "JSON object"),
        (GOOD, {"format": True}, "format True"),
        (GOOD, b"[" * 200_000, "nested too deeply|not valid JSON"),
        (GOOD, b"\xff\xfe", "not valid JSON"),
        (GOOD, {"format": 2, "meta": {"view": "maybe"}}, "view"),
    ],
)
def test_load_rejects_malformed_cells_naming_file_and_row(
    tmp_path: Path, columns: dict, header: object, message: str
) -> None:
    path = _write(tmp_path / "bad.parquet", columns, header)
    with pytest.raises(ScoresError, match=message) as info:
        Scores.load(path)
    assert str(path) in str(info.value) and len(str(info.value)) < 400
