"""The synthetic generator: determinism, verifiably correct answers, balance, distinct choices."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
from collections import Counter
from decimal import Decimal

import pytest

from llmcal.errors import ConfigError
from llmcal.tasks import FAMILIES, Question, Task, synthetic_task


def digest(task: Task) -> str:
    blob = json.dumps([q.to_dict() for q in task], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def test_same_seed_same_task_and_prefix_stability() -> None:
    a, b = synthetic_task(n=120, seed=7), synthetic_task(n=120, seed=7)
    assert a.questions == b.questions and a.name == "synthetic"
    assert synthetic_task(n=40, seed=7).questions == a.questions[:40]
    c = synthetic_task(n=120, seed=8)
    assert (
        sum(x.question != y.question or x.choices != y.choices for x, y in zip(a, c, strict=True))
        > 60
    )


def test_identical_in_a_fresh_interpreter() -> None:
    """No dependence on hash randomisation or other per-process state."""
    code = (
        "import hashlib, json; from llmcal.tasks import synthetic_task; "
        "t = synthetic_task(n=300, seed=11, difficulty='mixed'); "
        "print(hashlib.sha256(json.dumps([q.to_dict() for q in t], sort_keys=True).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert out.stdout.strip() == digest(synthetic_task(n=300, seed=11, difficulty="mixed"))


def test_ids_subjects_and_family_balance() -> None:
    task = synthetic_task(n=60, seed=2)
    assert [q.subject for q in task] == [FAMILIES[i % len(FAMILIES)] for i in range(60)]
    assert all(q.id == f"synthetic-{q.subject}-2-{i}" for i, q in enumerate(task))
    assert task.metadata["source"] == "synthetic" and task.metadata["seed"] == 2
    one = synthetic_task(n=9, families=["units"])
    assert one.name == "synthetic:units" and {q.subject for q in one} == {"units"}


# -- independent answer checks --------------------------------------------------------------------

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]  # fmt: skip
# every unit expressed in a base unit (seconds, millimetres, grams, millilitres, months)
BASE = {
    "second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800,
    "millimetre": 1, "centimetre": 10, "metre": 1000, "kilometre": 1_000_000,
    "gram": 1, "kilogram": 1000, "millilitre": 1, "litre": 1000,
    "month": 1, "year": 12, "decade": 120, "century": 1200,
}  # fmt: skip


def singular(unit: str) -> str:
    return "century" if unit == "centuries" else unit.removesuffix("s")


def is_correct(q: Question, choice: str) -> bool:
    """Judge one option from the question text alone, without the generator's code."""
    text = q.question
    if m := re.fullmatch(r"What is (\d+) ([+\-×]) (\d+)\?", text):
        a, op, b = int(m[1]), m[2], int(m[3])
        return int(choice) == {"+": a + b, "-": a - b, "×": a * b}[op]
    if m := re.fullmatch(r"Which of these numbers is the (largest|smallest)\?", text):
        values = [Decimal(c) for c in q.choices]
        best = max(values) if m[1] == "largest" else min(values)
        return Decimal(choice) == best
    if m := re.fullmatch(r"What number comes next in the sequence ([\d, ]+), \.\.\.\?", text):
        t = [int(x) for x in m[1].split(", ")]
        d = [y - x for x, y in itertools.pairwise(t)]
        if len(set(d)) == 1:  # arithmetic
            nxt = t[-1] + d[-1]
        elif all(x and y % x == 0 and y // x == t[1] // t[0] for x, y in itertools.pairwise(t)):
            nxt = t[-1] * (t[1] // t[0])  # geometric
        else:  # differences grow by a constant
            dd = {y - x for x, y in itertools.pairwise(d)}
            assert len(dd) == 1, text
            nxt = t[-1] + d[-1] + dd.pop()
        return int(choice) == nxt
    if m := re.fullmatch(r"Which list is in (ascending|descending) .* order\?", text):
        listed = [int(x) for x in choice.split(", ")]
        return listed == sorted(listed, reverse=m[1] == "descending")
    if m := re.fullmatch(r"How many (\w+) are in (\d+) (\w+)\?", text):
        small, n, big = BASE[singular(m[1])], int(m[2]), BASE[singular(m[3])]
        return int(choice) * small == n * big
    if m := re.fullmatch(
        r"Which (day|month) (?:comes right|is (\d+) \w+) (after|before) (\w+)\?", text
    ):
        items = DAYS if m[1] == "day" else MONTHS
        k = int(m[2] or 1) * (1 if m[3] == "after" else -1)
        return choice == items[(items.index(m[4]) + k) % len(items)]
    raise AssertionError(f"unrecognised question: {text}")


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_exactly_the_marked_choice_is_correct(difficulty: int) -> None:
    task = synthetic_task(n=600, seed=difficulty, difficulty=difficulty, n_choices=5)
    for q in task:
        verdicts = [is_correct(q, c) for c in q.choices]
        assert verdicts.count(True) == 1 and verdicts[q.answer or 0], (
            q.question,
            q.choices,
            q.answer,
        )


@pytest.mark.parametrize("n_choices", [2, 3, 4, 5])
def test_choices_distinct_and_counted(n_choices: int) -> None:
    task = synthetic_task(n=900, seed=5, n_choices=n_choices)
    for q in task:
        assert len(q.choices) == n_choices and len(set(q.choices)) == n_choices, q
        assert all(c.strip() for c in q.choices)


@pytest.mark.parametrize("n_choices", [4, 5])
def test_answer_positions_are_balanced(n_choices: int) -> None:
    n = 3000
    counts = Counter(q.answer for q in synthetic_task(n=n, seed=1, n_choices=n_choices))
    expected = n / n_choices
    chi2 = sum((counts[k] - expected) ** 2 / expected for k in range(n_choices))
    # 99.9th percentile of chi-square with 3 / 4 degrees of freedom is 16.3 / 18.5
    assert set(counts) == set(range(n_choices)) and chi2 < 18.5, counts
    per_family = Counter((q.subject, q.answer) for q in synthetic_task(n=n, seed=1))
    assert all(per_family[(f, k)] > 0.15 * n / len(FAMILIES) for f in FAMILIES for k in range(4))


def test_difficulty_changes_questions() -> None:
    easy = synthetic_task(n=60, difficulty=1, families=["arithmetic"])
    hard = synthetic_task(n=60, difficulty=3, families=["arithmetic"])

    def largest_operand(task: Task) -> list[int]:
        return [max(int(x) for x in re.findall(r"\d+", q.question)) for q in task]

    assert max(largest_operand(easy)) <= 20
    assert sum(b > 100 for b in largest_operand(hard)) > 30
    mixed = synthetic_task(n=36, families=["arithmetic", "units"])
    assert mixed.metadata["difficulty"] == "mixed"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 0},
        {"seed": -1},
        {"difficulty": 4},
        {"difficulty": "hard"},
        {"n_choices": 1},
        {"n_choices": 6},
        {"families": ["arithmetic", "arithmetic"]},
        {"families": []},
        {"families": ["physics"]},
    ],
)
def test_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        synthetic_task(**{"n": 10, **kwargs})
