"""Scores: validation, derived quantities, slicing, alignment and Parquet round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from llmcal import Scores, ScoresError, align
from llmcal.scores import log_softmax, softmax

NEG = -np.inf


def make(n_opts: tuple[int, ...] = (4, 2, 3), labels: tuple[int, ...] = (1, 0, -1)) -> Scores:
    k = max(n_opts)
    z = np.full((len(n_opts), k), NEG)
    rng = np.random.default_rng(0)
    for i, m in enumerate(n_opts):
        z[i, :m] = rng.normal(size=m)
    return Scores(
        ids=[f"q{i}" for i in range(len(n_opts))],
        logits=z,
        labels=list(labels),
        meta={"model": "m", "task": "t"},
        subjects=["a", "b", None],
    )


def test_probabilities_by_hand() -> None:
    s = Scores(ids=["x", "y"], logits=[[0.0, np.log(3.0), NEG], [2.0, 2.0, 2.0]], labels=[1, 0])
    np.testing.assert_allclose(s.probs(), [[0.25, 0.75, 0.0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-15)
    assert s.predictions().tolist() == [1, 0]  # first index on ties
    assert s.correct().tolist() == [True, True]
    assert s.n_options.tolist() == [2, 3] and s.k == 3
    np.testing.assert_allclose(s.confidences(), [0.75, 1 / 3])


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (5, 4), elements=st.floats(-1e4, 1e4)))
def test_softmax_is_stable_and_normalised(z: np.ndarray) -> None:
    p = softmax(z)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(softmax(z + 1e6), p, atol=1e-9)  # shift invariance, no overflow
    assert np.isfinite(log_softmax(z)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"logits": [[1.0, np.nan], [0.0, 1.0]]}, "NaN"),
        ({"logits": [[1.0, np.inf], [0.0, 1.0]]}, r"\+inf"),
        ({"logits": [[1.0, 0.0, 2.0], [0.0, 1.0, 2.0]], "n_options": [2, 3]}, "padding columns"),
        ({"logits": [[1.0, NEG], [0.0, 1.0]]}, "n_options is 1"),
        ({"logits": [[NEG, NEG], [0.0, 1.0]], "n_options": [2, 2]}, "every option logit is -inf"),
        ({"n_options": [2.0, 2.0]}, "n_options must be integers"),
        ({"meta": {"view": "sideways"}}, "view"),
        ({"meta": {"view": "answer"}, "logits": [[0.0, 1.0, 2.0]] * 2}, "two columns"),
        ({"labels": [2, 0]}, "label 2 is outside"),
        ({"labels": [-2, 0]}, "outside"),
        ({"ids": ["a", "a"]}, "unique"),
        ({"ids": ["a", ""]}, "non-empty"),
        ({"meta": {"x": object()}}, "JSON"),
        ({"labels": [0]}, "shape"),
    ],
)
def test_validation_errors(kwargs: dict, message: str) -> None:
    base = {"ids": ["a", "b"], "logits": [[1.0, 0.0], [0.0, 1.0]], "labels": [0, 1]}
    with pytest.raises(ScoresError, match=message):
        Scores(**{**base, **kwargs})


def test_arrays_are_read_only_copies() -> None:
    z = np.zeros((2, 2))
    s = Scores(ids=["a", "b"], logits=z, labels=[0, 1])
    z[0, 0] = 5.0
    assert s.logits[0, 0] == 0.0
    with pytest.raises(ValueError):
        s.logits[0, 0] = 1.0


def test_select_slices_and_trims_padding() -> None:
    s = make()
    sub = s.select([1, 2])
    assert sub.ids.tolist() == ["q1", "q2"] and sub.k == 3  # the 4th column was padding only
    assert sub.subjects is not None and sub.subjects.tolist() == ["b", None]
    assert s[1:].ids.tolist() == ["q1", "q2"]
    assert s.select(np.array([True, False, True])).ids.tolist() == ["q0", "q2"]
    assert s.labelled_only().ids.tolist() == ["q0", "q1"]
    assert s.by_ids(["q2", "q0"]).ids.tolist() == ["q2", "q0"]
    with pytest.raises(ScoresError, match="not in these Scores"):
        s.by_ids(["zz"])
    with pytest.raises(ScoresError, match="unlabelled"):
        s.correct()


def test_parquet_round_trip(tmp_path: Path) -> None:
    s = make()
    path = s.save(tmp_path / "run.parquet")
    back = Scores.load(path)
    assert back.equals(s) and np.array_equal(back.logits, s.logits)
    assert back.meta["model"] == "m" and back.meta["llmcal_version"]
    assert back.subjects is not None and back.subjects.tolist() == ["a", "b", None]
    with pytest.raises(ScoresError, match=r"\.parquet"):
        s.save(tmp_path / "run.csv")


def test_load_rejects_foreign_and_corrupt_files(tmp_path: Path) -> None:
    foreign = tmp_path / "f.parquet"
    pq.write_table(pa.table({"id": ["a"]}), foreign)
    with pytest.raises(ScoresError, match="not written by llmcal"):
        Scores.load(foreign)
    junk = tmp_path / "j.parquet"
    junk.write_bytes(b"not parquet")
    with pytest.raises(ScoresError, match="not a readable Parquet"):
        Scores.load(junk)
    future = tmp_path / "v.parquet"
    table = pa.table({"id": ["a"], "logits": [[0.0, 1.0]], "label": [0]})
    pq.write_table(
        table.replace_schema_metadata({b"llmcal": json.dumps({"format": 99}).encode()}), future
    )
    with pytest.raises(ScoresError, match="format 99"):
        Scores.load(future)
    bad = tmp_path / "b.parquet"
    table = pa.table({"id": ["a"], "logits": [[0.0, 1.0]], "label": [5]})
    pq.write_table(
        table.replace_schema_metadata({b"llmcal": json.dumps({"format": 1}).encode()}), bad
    )
    with pytest.raises(ScoresError, match=f"{bad}.*label 5"):
        Scores.load(bad)


def test_align_by_id() -> None:
    a = make()
    b = Scores(ids=["q2", "q0", "zz"], logits=np.zeros((3, 2)), labels=[-1, 1, 0])
    a2, b2 = align(a, b)
    assert a2.ids.tolist() == b2.ids.tolist() == ["q0", "q2"]
    with pytest.raises(ScoresError, match="do not cover the same questions"):
        align(a, b, how="exact")
    c = Scores(ids=["q0"], logits=np.zeros((1, 2)), labels=[0])
    with pytest.raises(ScoresError, match="labels disagree for id 'q0'"):
        align(a, c)
    with pytest.raises(ScoresError, match="share no question id"):
        align(a, Scores(ids=["x"], logits=np.zeros((1, 2)), labels=[0]))


def test_concat_pads_columns() -> None:
    a = Scores(ids=["a"], logits=[[0.0, 1.0]], labels=[1], meta={"m": 1})
    b = Scores(ids=["b"], logits=[[0.0, 1.0, 2.0]], labels=[2])
    c = Scores.concat([a, b])
    assert c.k == 3 and np.isneginf(c.logits[0, 2]) and c.meta == {"m": 1}
    with pytest.raises(ScoresError, match="unique"):
        Scores.concat([a, a])
