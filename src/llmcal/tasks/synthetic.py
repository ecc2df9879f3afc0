"""A synthetic multiple-choice task whose answers the code computes: no data files needed.

Six families (arithmetic, comparison, sequence, ordering, units, calendar), three difficulty
levels, 2-5 options with the answer at a uniformly random position. Question ``i`` draws from
its own numpy PCG64 stream seeded by ``(seed, i)``, so a task is identical across runs and
platforms and a smaller ``n`` gives a prefix of a larger one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llmcal.errors import ConfigError
from llmcal.tasks.types import Question, Task

FAMILIES: tuple[str, ...] = (
    "arithmetic", "comparison", "sequence", "ordering", "units", "calendar"
)  # fmt: skip
DIFFICULTIES = (1, 2, 3)
GENERATOR_VERSION = 1

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip

#: (small unit plural, big unit singular, big unit plural, small units per big unit)
UNIT_FACTS: tuple[tuple[str, str, str, int], ...] = (
    ("minutes", "hour", "hours", 60),
    ("seconds", "minute", "minutes", 60),
    ("hours", "day", "days", 24),
    ("days", "week", "weeks", 7),
    ("months", "year", "years", 12),
    ("centimetres", "metre", "metres", 100),
    ("millimetres", "centimetre", "centimetres", 10),
    ("metres", "kilometre", "kilometres", 1000),
    ("grams", "kilogram", "kilograms", 1000),
    ("millilitres", "litre", "litres", 1000),
    ("years", "decade", "decades", 10),
    ("years", "century", "centuries", 100),
)
#: two-step conversions for difficulty 3: (small plural, big singular, big plural, factor)
UNIT_CHAINS: tuple[tuple[str, str, str, int], ...] = (
    ("seconds", "hour", "hours", 3600),
    ("hours", "week", "weeks", 168),
    ("minutes", "day", "days", 1440),
    ("centimetres", "kilometre", "kilometres", 100_000),
    ("months", "decade", "decades", 120),
)
#: factors a model might confuse with the right one
_CONFUSED: dict[int, tuple[int, ...]] = {
    7: (5, 10, 12),
    10: (100, 12, 1000),
    12: (10, 24, 52),
    24: (12, 60, 100),
    60: (100, 24, 30),
    100: (10, 1000, 60),
    1000: (100, 10, 60),
}

_Family = Callable[[np.random.Generator, int], tuple[str, str, list[str]]]


def synthetic_task(
    n: int = 500,
    seed: int = 0,
    families: Sequence[str] | None = None,
    difficulty: int | str = "mixed",
    n_choices: int = 4,
) -> Task:
    """Deterministic synthetic questions; ``difficulty`` is 1, 2, 3 or ``"mixed"`` (cycles 1-3)."""
    fams = _check_args(n, seed, families, difficulty, n_choices)
    questions = []
    for i in range(n):
        family = fams[i % len(fams)]
        level = 1 + (i // len(fams)) % 3 if difficulty == "mixed" else int(difficulty)
        rng = np.random.default_rng([seed, i])
        text, correct, pool = _GENERATORS[family](rng, level)
        distractors = _distinct(pool, exclude=correct)[: n_choices - 1]
        if len(distractors) < n_choices - 1:  # generators guarantee 4 distractors
            raise AssertionError(f"{family} generator gave too few distractors: {pool}")
        pos = int(rng.integers(n_choices))
        order = [distractors[j] for j in rng.permutation(n_choices - 1)]
        choices = (*order[:pos], correct, *order[pos:])
        questions.append(
            Question(f"synthetic-{family}-{seed}-{i}", text, choices, pos, subject=family)
        )
    name = "synthetic" if families is None else "synthetic:" + "+".join(fams)
    meta: dict[str, Any] = {
        "source": "synthetic",
        "n": int(n),
        "seed": int(seed),
        "families": list(fams),
        "difficulty": difficulty,
        "n_choices": n_choices,
        "generator_version": GENERATOR_VERSION,
    }
    return Task(name, tuple(questions), metadata=meta)


def parse_families(spec: str) -> list[str]:
    """``"arithmetic+units"`` → ``["arithmetic", "units"]`` (validated)."""
    fams = [f.strip() for f in spec.split("+")]
    _check_families(fams)
    return fams


def _check_families(fams: Sequence[str]) -> None:
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown or not fams:
        raise ConfigError(
            f"unknown synthetic family {unknown[0] if unknown else ''!r}; "
            f"choose from {', '.join(FAMILIES)} (join several with '+')"
        )
    if len(set(fams)) != len(fams):
        raise ConfigError(f"synthetic families must not repeat, got {list(fams)}")


def _check_args(
    n: int, seed: int, families: Sequence[str] | None, difficulty: int | str, n_choices: int
) -> tuple[str, ...]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"synthetic n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    if difficulty != "mixed" and difficulty not in DIFFICULTIES:
        raise ConfigError(f"synthetic difficulty must be 1, 2, 3 or 'mixed', got {difficulty!r}")
    if isinstance(n_choices, bool) or not isinstance(n_choices, int) or not 2 <= n_choices <= 5:
        raise ConfigError(f"synthetic n_choices must be between 2 and 5, got {n_choices!r}")
    fams = tuple(FAMILIES if families is None else families)
    _check_families(fams)
    return fams


def _distinct(pool: Sequence[str], exclude: str) -> list[str]:
    out: list[str] = []
    for item in pool:
        if item != exclude and item not in out:
            out.append(item)
    return out


def _int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A uniform integer in ``lo..hi`` inclusive."""
    return int(rng.integers(lo, hi + 1))


def _shuffled(rng: np.random.Generator, items: Sequence[Any]) -> list[Any]:
    return [items[j] for j in rng.permutation(len(items))]


def _numbers(values: Sequence[int]) -> list[str]:
    return [str(v) for v in values if v >= 0]


# -- families ---------------------------------------------------------------------------------


def _arithmetic(rng: np.random.Generator, level: int) -> tuple[str, str, list[str]]:
    op = ("+", "-", "×")[_int(rng, 0, 2)]
    lo, hi = {1: (2, 20), 2: (11, 99), 3: (101, 999)}[level]
    if op == "+":
        a, b = _int(rng, lo, hi), _int(rng, lo, hi)
        ans, slip = a + b, abs(a - b)
    elif op == "-":
        margin = max(1, lo // 2)  # keeps both b and a - b away from trivial values
        a = _int(rng, lo + 5, hi)
        b = _int(rng, margin, a - margin)
        ans, slip = a - b, a + b
    else:
        a = _int(rng, *{1: (2, 5), 2: (3, 9), 3: (11, 49)}[level])
        b = _int(rng, *{1: (2, 5), 2: (6, 15), 3: (3, 9)}[level])
        ans, slip = a * b, a + b
    if level == 1:  # far-off distractors
        offsets = _shuffled(rng, [-9, -7, -6, -5, -4, 4, 5, 6, 7, 9])
    else:  # close ones: off by one, carry slips
        offsets = _shuffled(rng, [-1, 1, -2, 2, -10, 10]) + _shuffled(rng, [-11, 11, 20, -20])
    pool = _numbers([ans + k for k in offsets[:4]] + [slip] + [ans + k for k in offsets[4:]])
    return f"What is {a} {op} {b}?", str(ans), pool


def _decimal(thousandths: int) -> str:
    whole, frac = divmod(thousandths, 1000)
    return f"{whole}.{frac:03d}".rstrip("0").rstrip(".")


def _comparison(rng: np.random.Generator, level: int) -> tuple[str, str, list[str]]:
    largest = bool(rng.integers(2))
    if level == 1:
        values = [int(v) for v in rng.choice(np.arange(1, 100), size=5, replace=False)]
        shown = [str(v) for v in values]
    elif level == 2:
        base = 100 * _int(rng, 1, 9)
        values = [base + int(v) for v in rng.choice(np.arange(0, 100), size=5, replace=False)]
        shown = [str(v) for v in values]
    else:  # decimals of different lengths, the classic 3.45 vs 3.5 trap (values in thousandths)
        whole = 1000 * _int(rng, 0, 9)
        fracs: list[int] = []
        while len(fracs) < 5:
            digits = _int(rng, 1, 3)
            f = _int(rng, 1, 10**digits - 1) * 10 ** (3 - digits)
            if f not in fracs:
                fracs.append(f)
        values = [whole + f for f in fracs]
        shown = [_decimal(v) for v in values]
    k = int(np.argmax(values) if largest else np.argmin(values))
    word = "largest" if largest else "smallest"
    return (
        f"Which of these numbers is the {word}?",
        shown[k],
        [s for j, s in enumerate(shown) if j != k],
    )


def _sequence(rng: np.random.Generator, level: int) -> tuple[str, str, list[str]]:
    if level == 1:
        step, start = _int(rng, 1, 5), _int(rng, 1, 20)
        terms = [start + step * j for j in range(5)]
    elif level == 2:
        step = _int(rng, 3, 12) * (1 if rng.integers(2) else -1)
        start = _int(rng, 1, 50) + (5 * -step if step < 0 else 0)
        terms = [start + step * j for j in range(5)]
    elif rng.integers(2):  # geometric
        ratio, start = _int(rng, 2, 3), _int(rng, 1, 5)
        terms = [start * ratio**j for j in range(5)]
    else:  # growing differences
        terms = [_int(rng, 1, 10)]
        diff = _int(rng, 1, 4)
        for _ in range(4):
            terms.append(terms[-1] + diff)
            diff += 1
    *shown, nxt = terms
    d = shown[-1] - shown[-2]
    pool = _numbers(
        _shuffled(rng, [nxt + 1, nxt - 1, nxt + d, shown[-1]])
        + _shuffled(rng, [nxt + 2, nxt - 2, nxt + 2 * d, nxt + 10])
    )
    seq = ", ".join(str(t) for t in shown)
    return f"What number comes next in the sequence {seq}, ...?", str(nxt), pool


def _ordering(rng: np.random.Generator, level: int) -> tuple[str, str, list[str]]:
    ascending = bool(rng.integers(2))
    if level == 1:
        values = sorted(int(v) for v in rng.choice(np.arange(1, 50), size=3, replace=False))
    elif level == 2:
        values = sorted(int(v) for v in rng.choice(np.arange(1, 100), size=4, replace=False))
    else:
        base = 10 * _int(rng, 10, 98)
        values = sorted(base + int(v) for v in rng.choice(np.arange(0, 30), size=4, replace=False))
    target = values if ascending else values[::-1]
    m = len(target)
    near: list[list[int]] = []  # one adjacent swap away: the most confusable lists
    for j in range(m - 1):
        swapped = list(target)
        swapped[j], swapped[j + 1] = swapped[j + 1], swapped[j]
        near.append(swapped)
    others = _shuffled(rng, [list(p) for p in itertools.permutations(target)])
    lists = (_shuffled(rng, near) if level == 3 else []) + others
    word = "ascending (smallest to largest)" if ascending else "descending (largest to smallest)"
    return (
        f"Which list is in {word} order?",
        ", ".join(map(str, target)),
        [", ".join(map(str, v)) for v in lists],
    )


def _units(rng: np.random.Generator, level: int) -> tuple[str, str, list[str]]:
    if level == 3 and rng.integers(2):
        small, _, bigs, factor = UNIT_CHAINS[_int(rng, 0, len(UNIT_CHAINS) - 1)]
        n = _int(rng, 2, 5)
        ans = n * factor
        pool = _numbers(_shuffled(rng, [ans // 10, ans * 10, (n + 1) * factor, (n - 1) * factor]))
        return f"How many {small} are in {n} {bigs}?", str(ans), pool
    small, _, bigs, factor = UNIT_FACTS[_int(rng, 0, len(UNIT_FACTS) - 1)]
    n = _int(rng, *{1: (2, 4), 2: (3, 12), 3: (3, 12)}[level])
    if level == 3:  # the reverse direction: divide
        total = n * factor
        near = [n + 1, n - 1, n + 2, n * 10] + [
            total // f for f in _CONFUSED[factor] if total % f == 0
        ]
        pool = _numbers(_shuffled(rng, near[:3]) + near[3:] + [n - 2, n + 3])
        return f"How many {bigs} are in {total} {small}?", str(n), [p for p in pool if p != "0"]
    ans = n * factor
    wrong = [n * f for f in _CONFUSED[factor]]
    pool = _numbers([*_shuffled(rng, [*wrong, (n + 1) * factor, (n - 1) * factor]), ans * 10])
    return f"How many {small} are in {n} {bigs}?", str(ans), pool


def _calendar(rng: np.random.Generator, level: int) -> tuple[str, str, list[str]]:
    days = bool(rng.integers(2))
    items, unit = (DAYS, "day") if days else (MONTHS, "month")
    start = _int(rng, 0, len(items) - 1)
    after = bool(rng.integers(2))
    if level == 1:
        k = 1
    elif level == 2:
        k = _int(rng, 2, 5)
    else:
        k = _int(rng, 8, 20) if days else _int(rng, 5, 11)
    target = (start + (k if after else -k)) % len(items)
    word = "after" if after else "before"
    if k == 1:
        text = f"Which {unit} comes right {word} {items[start]}?"
    else:
        text = f"Which {unit} is {k} {unit}s {word} {items[start]}?"
    near = _shuffled(rng, [target - 1, target + 1]) + _shuffled(
        rng, [start, target - 2, target + 2]
    )
    pool = [items[j % len(items)] for j in [*near, target + 3, target - 3]]
    return text, items[target], pool


_GENERATORS: dict[str, _Family] = {
    "arithmetic": _arithmetic,
    "comparison": _comparison,
    "sequence": _sequence,
    "ordering": _ordering,
    "units": _units,
    "calendar": _calendar,
}


# -- open-ended variant -----------------------------------------------------------------------

_NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
OPEN_GENERATOR_VERSION = 1


def _number_spellings(text: str) -> list[str]:
    """``"12"`` → ``["12", "twelve"]``; ``"1000"`` → ``["1000", "1,000"]``."""
    out = [text]
    if text.lstrip("-").isdigit():
        v = int(text)
        if 0 <= v < len(_NUMBER_WORDS):
            out.append(_NUMBER_WORDS[v])
        if abs(v) >= 1000:
            out.append(f"{v:,}")
    elif text.startswith("0."):
        out.append(text[1:])  # ".5"
    return out


def _open_form(
    family: str, rng: np.random.Generator, text: str, correct: str, pool: list[str]
) -> tuple[str, list[str]]:
    """The question asked without options, and the accepted spellings of its answer."""
    if family == "comparison":
        shown = _shuffled(rng, [correct, *_distinct(pool, exclude=correct)[:4]])
        word = "largest" if "largest" in text else "smallest"
        return f"Which number is the {word}: {', '.join(shown)}?", _number_spellings(correct)
    if family == "ordering":
        values = correct.split(", ")
        shown = _shuffled(rng, values)
        if shown == values:
            shown = shown[1:] + shown[:1]
        word = "ascending (smallest to largest)" if "ascending" in text else "descending"
        question = f"Write the numbers {', '.join(shown)} in {word} order."
        return question, [correct, " ".join(values), ",".join(values)]
    if family == "calendar":
        return text, [correct, correct[:3]]
    return text, _number_spellings(correct)


def synthetic_open_task(
    n: int = 200,
    seed: int = 0,
    families: Sequence[str] | None = None,
    difficulty: int | str = "mixed",
) -> Any:
    """The synthetic families asked without options: an OpenTask with computed answers.

    Question ``i`` uses the same PCG64 stream ``(seed, i)`` as :func:`synthetic_task`, so the
    computed answer of question ``i`` is the same in both; answers list its accepted spellings
    (digits and words for small numbers, ``1,000`` for large ones, ``3 5 9`` for lists, ``Mon``
    for ``Monday``).
    """
    from llmcal.tasks.openended import OpenQuestion, OpenTask

    fams = _check_args(n, seed, families, difficulty, 4)
    questions = []
    for i in range(n):
        family = fams[i % len(fams)]
        level = 1 + (i // len(fams)) % 3 if difficulty == "mixed" else int(difficulty)
        rng = np.random.default_rng([seed, i])
        text, correct, pool = _GENERATORS[family](rng, level)
        question, answers = _open_form(family, rng, text, correct, pool)
        questions.append(
            OpenQuestion(
                f"synthetic-open-{family}-{seed}-{i}",
                question,
                tuple(dict.fromkeys(answers)),
                subject=family,
            )
        )
    name = "synthetic-open" if families is None else "synthetic-open:" + "+".join(fams)
    meta: dict[str, Any] = {
        "source": "synthetic",
        "n": int(n),
        "seed": int(seed),
        "families": list(fams),
        "difficulty": difficulty,
        "generator_version": GENERATOR_VERSION,
        "open_generator_version": OPEN_GENERATOR_VERSION,
    }
    return OpenTask(name, tuple(questions), metadata=meta)
