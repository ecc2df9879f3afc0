"""Answers: validation, Parquet round trip, atomic writes and clear errors on foreign files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmcal.answers import Answers
from llmcal.errors import OutputError, ScoresError
from llmcal.scores import Scores


def make(n: int = 3, **changes: object) -> Answers:
    fields: dict[str, object] = {
        "ids": tuple(f"q{i}" for i in range(n)),
        "questions": tuple(f"question {i}?" for i in range(n)),
        "references": tuple(("Paris", "paris city") for _ in range(n)),
        "prompts": tuple(f"Question: question {i}?\nAnswer:" for i in range(n)),
        "texts": tuple(["Paris", "Lyon", ""][i % 3] for i in range(n)),
        "token_ids": tuple((5, 6, 2)[: 1 + i % 3] for i in range(n)),
        "token_logprobs": tuple((-0.1, -0.5, -0.25)[: 1 + i % 3] for i in range(n)),
        "stop_reasons": tuple(("newline", "eos", "length")[i % 3] for i in range(n)),
        "correct": np.array([1, 0, -1] * n)[:n],
        "samples": tuple(("Paris", "Rome") for _ in range(n)),
        "sample_logprobs": tuple((-1.0, -2.0) for _ in range(n)),
        "meta": {"model": "m", "task": "t"},
    }
    fields.update(changes)
    return Answers(**fields)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    a = make(3, subjects=("x", None, "y"))
    b = Answers.load(a.save(tmp_path / "a.parquet"))
    for name in ("ids", "questions", "references", "prompts", "texts", "token_ids",
                 "token_logprobs", "stop_reasons", "samples", "sample_logprobs", "subjects"):  # fmt: skip
        assert getattr(b, name) == getattr(a, name), name
    assert np.array_equal(a.correct, b.correct)
    assert b.meta["model"] == "m" and "llmcal_version" in b.meta
    assert b.n_samples == 2 and a.accuracy() == pytest.approx(0.5)


def test_derived_quantities() -> None:
    a = make(3)
    assert np.allclose(a.total_logprobs(), [-0.1, -0.6, -0.85])
    assert np.allclose(a.mean_logprobs(), [-0.1, -0.3, -0.85 / 3])
    sub = a.by_ids(["q2", "q0"])
    assert sub.ids == ("q2", "q0") and sub.texts == ("", "Paris")
    assert sub.correct.tolist() == [-1, 1]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"texts": ("a", "b")}, "texts has 2 rows"),
        ({"ids": ("q0", "q0", "q2")}, "appears more than once"),
        ({"token_logprobs": ((-0.1,), (0.5, -0.1), (-0.1, -0.1, -0.1))}, "must be <= 0"),
        ({"token_logprobs": ((-0.1,), (-0.1,), (-0.1, -0.1, -0.1))}, "2 token ids but 1"),
        ({"stop_reasons": ("newline", "eos", "tired")}, "'tired' is not one of"),
        ({"correct": np.array([2, 0, 1])}, "correct must be 1"),
        ({"meta": {"x": object()}}, "JSON-serialisable"),
    ],
)
def test_validation(changes: dict, fragment: str) -> None:
    with pytest.raises(ScoresError, match=fragment):
        make(3, **changes)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ScoresError, match="no such Answers file"):
        Answers.load(tmp_path / "missing.parquet")
    scores = Scores.from_confidence([0.2, 0.9], [0, 1])
    path = scores.save(tmp_path / "s.parquet")
    with pytest.raises(ScoresError, match="it is a Scores file"):
        Answers.load(path)
    with pytest.raises(ScoresError, match=r"use a \.parquet path"):
        make().save(tmp_path / "a.csv")


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OutputError, match="disk full"):
        make().save(tmp_path / "a.parquet")
    assert list(tmp_path.iterdir()) == []
