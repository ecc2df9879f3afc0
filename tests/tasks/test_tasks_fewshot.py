"""fewshot_split: deterministic labelled shots, removed from the task."""

from __future__ import annotations

import pytest

from llmcal.errors import ConfigError
from llmcal.tasks import Question, Task, fewshot_split, get_template


def task_with_unlabelled(n: int = 30) -> Task:
    qs = [Question(f"q{i}", f"Q{i}?", ("a", "b"), None if i % 3 == 0 else i % 2) for i in range(n)]
    return Task("t", tuple(qs), metadata={"origin": "test"})


def test_shots_are_labelled_disjoint_and_deterministic() -> None:
    task = task_with_unlabelled()
    shots, rest = fewshot_split(task, 5, seed=1)
    assert len(shots) == 5 and all(s.answer is not None for s in shots)
    shot_ids = {s.id for s in shots}
    assert shot_ids.isdisjoint(rest.ids)
    assert sorted(shot_ids | set(rest.ids)) == sorted(task.ids)
    assert rest.ids == [i for i in task.ids if i not in shot_ids]  # order kept
    again, _ = fewshot_split(task, 5, seed=1)
    assert [s.id for s in again] == [s.id for s in shots]
    assert any([s.id for s in fewshot_split(task, 5, seed=s)[0]] != [x.id for x in shots]
               for s in range(2, 6))  # fmt: skip
    assert rest.metadata["origin"] == "test" and rest.metadata["fewshot_ids"] == [
        s.id for s in shots
    ]
    # the shots fit the matching few-shot template
    assert get_template("fewshot").letter_prompt(rest[0], shots).count("Answer:") == 6


def test_zero_and_too_many_shots() -> None:
    task = task_with_unlabelled(6)  # 4 labelled
    assert fewshot_split(task, 0) == ([], task)
    with pytest.raises(ConfigError, match="4 labelled"):
        fewshot_split(task, 5)
    with pytest.raises(ConfigError):
        fewshot_split(task, -1)
    tiny = Task("tiny", (Question("a", "?", ("x", "y"), 0),))
    with pytest.raises(ConfigError, match="none left"):
        fewshot_split(tiny, 1)
