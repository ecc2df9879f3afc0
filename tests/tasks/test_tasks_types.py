"""Question validation and the deterministic Task operations (subset, shuffle, split)."""

from __future__ import annotations

import numpy as np
import pytest

from llmcal.errors import ConfigError, DataError
from llmcal.tasks import Question, Task


def make_task(n: int = 20, name: str = "t") -> Task:
    qs = [
        Question(f"q{i}", f"question {i}", ("a", "b", "c"), i % 3, subject=f"s{i % 2}")
        for i in range(n)
    ]
    return Task(name, tuple(qs))


class TestQuestion:
    def test_valid_question_normalises_choices_and_answer(self) -> None:
        q = Question("x", "Q?", ["a", "b"], np.int64(1))  # type: ignore[arg-type]
        assert q.choices == ("a", "b")
        assert q.answer == 1 and type(q.answer) is int
        assert q.letters == "AB"

    @pytest.mark.parametrize(
        ("kwargs", "needle"),
        [
            ({"id": ""}, "id"),
            ({"choices": ("only",)}, "at least 2"),
            ({"choices": ("a", 3)}, "string"),
            ({"answer": 2}, "outside 0..1"),
            ({"answer": -1}, "outside"),
            ({"answer": True}, "integer"),
            ({"answer": "1"}, "integer"),
            ({"choices": tuple("x" * 27)}, "at most 26"),
        ],
    )
    def test_invalid_question(self, kwargs: dict, needle: str) -> None:
        args = {"id": "x", "question": "Q?", "choices": ("a", "b"), "answer": 0, **kwargs}
        with pytest.raises(DataError, match=needle):
            Question(**args)

    def test_to_dict_omits_unset_optionals(self) -> None:
        d = Question("x", "Q?", ("a", "b")).to_dict()
        assert d == {"id": "x", "question": "Q?", "choices": ["a", "b"], "answer": None}
        d2 = Question("y", "Q?", ("a", "b"), 0, context="P", subject="s").to_dict()
        assert d2["context"] == "P" and d2["subject"] == "s"


class TestTask:
    def test_duplicate_ids_rejected(self) -> None:
        q = Question("same", "Q", ("a", "b"))
        with pytest.raises(DataError, match="duplicate question id 'same'"):
            Task("t", (q, q))

    def test_basic_properties(self) -> None:
        task = make_task(5)
        assert len(task) == 5 and task.ids == [f"q{i}" for i in range(5)]
        assert task.max_choices == 3 and task.labelled
        assert isinstance(task[1:3], Task) and task[1:3].ids == ["q1", "q2"]
        assert task[0].id == "q0"

    def test_select_and_filter(self) -> None:
        task = make_task(6)
        assert task.select(["q4", "q1"]).ids == ["q4", "q1"]
        with pytest.raises(ConfigError, match="nope"):
            task.select(["nope"])
        assert task.filter("s1").ids == ["q1", "q3", "q5"]

    def test_shuffle_is_a_seeded_permutation(self) -> None:
        task = make_task(50)
        a, b, c = task.shuffle(3), task.shuffle(3), task.shuffle(4)
        assert a.ids == b.ids
        assert a.ids != c.ids
        assert sorted(a.ids) == sorted(task.ids) and a.ids != task.ids

    def test_subset(self) -> None:
        task = make_task(30)
        assert task.subset(5).ids == task.ids[:5]
        seeded = task.subset(5, seed=1)
        assert seeded.ids == task.subset(5, seed=1).ids
        assert seeded.ids == task.shuffle(1).ids[:5]
        assert len(task.subset(None)) == 30 and len(task.subset(100)) == 30
        with pytest.raises(ConfigError):
            task.subset(0)

    def test_split_disjoint_covering_and_deterministic(self) -> None:
        task = make_task(101)
        parts = task.split({"train": 0.6, "cal": 0.2, "test": 0.2}, seed=5)
        ids = [set(p.ids) for p in parts.values()]
        assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
        assert set().union(*ids) == set(task.ids)
        assert len(parts["train"]) == 60 and len(parts["cal"]) == 20 and len(parts["test"]) == 21
        again = task.split({"train": 0.6, "cal": 0.2, "test": 0.2}, seed=5)
        assert all(parts[k].ids == again[k].ids for k in parts)
        other = task.split({"train": 0.6, "cal": 0.2, "test": 0.2}, seed=6)
        assert parts["train"].ids != other["train"].ids
        # each split keeps the task's original order
        order = {qid: i for i, qid in enumerate(task.ids)}
        assert all(
            [order[i] for i in p.ids] == sorted(order[i] for i in p.ids) for p in parts.values()
        )

    def test_partial_split_leaves_questions_out(self) -> None:
        parts = make_task(10).split({"a": 0.3, "b": 0.3})
        assert len(parts["a"]) == 3 and len(parts["b"]) == 3

    @pytest.mark.parametrize("fractions", [{}, {"a": 0.0}, {"a": 0.7, "b": 0.7}, {"a": -0.1}])
    def test_bad_split_fractions(self, fractions: dict[str, float]) -> None:
        with pytest.raises(ConfigError):
            make_task().split(fractions)
