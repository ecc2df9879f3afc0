"""balance_letters: answer letters evenly spread over the training questions, content intact."""

from __future__ import annotations

from collections import Counter

from llmcal import Question, Task
from llmcal.finetune.data import balance_letters


def _task() -> Task:
    qs = [Question(f"a{i}", f"q{i}", ("w", "x", "y", "z"), answer=0) for i in range(21)]
    qs += [Question(f"b{i}", f"p{i}", ("r", "s", "t"), answer=2) for i in range(7)]
    qs.append(Question("u", "unlabelled", ("m", "n")))
    return Task("t", qs)


def test_answer_letters_are_balanced_and_the_content_kept() -> None:
    task = _task()
    out = balance_letters(task, seed=3)
    assert out.ids == task.ids
    four = Counter(q.answer for q in out if len(q.choices) == 4)
    three = Counter(q.answer for q in out if len(q.choices) == 3)
    assert sorted(four.values()) == [5, 5, 5, 6] and sorted(three.values()) == [2, 2, 3]
    for before, after in zip(task, out, strict=True):
        assert sorted(after.choices) == sorted(before.choices)
        assert after.question == before.question
        if before.answer is None:
            assert after == before
        else:
            assert after.choices[after.answer] == before.choices[before.answer]  # type: ignore[index]
            # the wrong options keep their relative order
            assert [c for c in after.choices if c != after.choices[after.answer]] == [  # type: ignore[index]
                c
                for c in before.choices
                if c != before.choices[before.answer]  # type: ignore[index]
            ]


def test_balancing_is_seeded() -> None:
    task = _task()
    assert list(balance_letters(task, seed=1)) == list(balance_letters(task, seed=1))
    assert list(balance_letters(task, seed=1)) != list(balance_letters(task, seed=2))
