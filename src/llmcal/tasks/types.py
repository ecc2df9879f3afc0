"""Question and Task: the multiple-choice data every scorer consumes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

import numpy as np

from llmcal.errors import ConfigError, DataError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; ``answer`` is the 0-based correct index or None (unlabelled).

    ``extra`` keeps a data file's own fields beyond the schema (metadata columns such as
    ``source`` or ``difficulty``); it is written back by :meth:`to_dict` and ignored by scoring.
    """

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int | None = None
    context: str | None = None
    subject: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise DataError(f"question id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.question, str):
            raise DataError(f"question {self.id!r}: 'question' must be a string")
        choices = tuple(self.choices) if not isinstance(self.choices, tuple) else self.choices
        object.__setattr__(self, "choices", choices)
        if len(choices) < 2:
            raise DataError(f"question {self.id!r}: needs at least 2 choices, got {len(choices)}")
        if len(choices) > len(LETTERS):
            raise DataError(f"question {self.id!r}: at most {len(LETTERS)} choices are supported")
        if not all(isinstance(c, str) for c in choices):
            raise DataError(f"question {self.id!r}: every choice must be a string")
        if self.answer is not None:
            if isinstance(self.answer, bool) or not isinstance(self.answer, (int, np.integer)):
                raise DataError(f"question {self.id!r}: 'answer' must be an integer index or null")
            if not 0 <= int(self.answer) < len(choices):
                raise DataError(
                    f"question {self.id!r}: answer index {self.answer} is outside 0..{len(choices) - 1}"
                )
            object.__setattr__(self, "answer", int(self.answer))

    @property
    def letters(self) -> str:
        """The option letters of this question (``"ABCD"`` for four choices)."""
        return LETTERS[: len(self.choices)]

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSONL record (optional fields omitted when unset)."""
        out: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "choices": list(self.choices),
        }
        out["answer"] = self.answer
        if self.context is not None:
            out["context"] = self.context
        if self.subject is not None:
            out["subject"] = self.subject
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


@dataclass(frozen=True)
class Task:
    """A named, ordered collection of Questions with free-form metadata."""

    name: str
    questions: Sequence[Question]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        qs = tuple(self.questions)
        object.__setattr__(self, "questions", qs)
        seen: set[str] = set()
        for q in qs:
            if q.id in seen:
                raise DataError(f"task {self.name!r}: duplicate question id {q.id!r}")
            seen.add(q.id)

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self) -> Iterator[Question]:
        return iter(self.questions)

    @overload
    def __getitem__(self, i: int) -> Question: ...
    @overload
    def __getitem__(self, i: slice) -> Task: ...
    def __getitem__(self, i: int | slice) -> Question | Task:
        if isinstance(i, slice):
            return self._derive(self.questions[i])
        return self.questions[i]

    @property
    def ids(self) -> list[str]:
        """Question ids in order."""
        return [q.id for q in self.questions]

    @property
    def max_choices(self) -> int:
        """The largest number of options of any question (the K of the Scores)."""
        return max((len(q.choices) for q in self.questions), default=0)

    @property
    def labelled(self) -> bool:
        """True when every question has an answer."""
        return all(q.answer is not None for q in self.questions)

    def _derive(self, questions: Iterable[Question], **meta: Any) -> Task:
        return replace(self, questions=tuple(questions), metadata={**self.metadata, **meta})

    def select(self, ids: Sequence[str]) -> Task:
        """The questions with these ids, in the given order."""
        by_id = {q.id: q for q in self.questions}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ConfigError(f"task {self.name!r} has no question with id {missing[0]!r}")
        return self._derive(by_id[i] for i in ids)

    def filter(self, subject: str | Sequence[str]) -> Task:
        """The questions of one subject (or any of several)."""
        wanted = {subject} if isinstance(subject, str) else set(subject)
        return self._derive(
            (q for q in self.questions if q.subject in wanted), subject=sorted(wanted)
        )

    def shuffle(self, seed: int) -> Task:
        """A seeded permutation of the questions (numpy PCG64, stable across platforms)."""
        order = np.random.default_rng(seed).permutation(len(self.questions))
        return self._derive((self.questions[i] for i in order), shuffle_seed=seed)

    def subset(self, limit: int | None, seed: int | None = None) -> Task:
        """The first ``limit`` questions, after a seeded shuffle when ``seed`` is given."""
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit must be a positive integer, got {limit}")
        task = self.shuffle(seed) if seed is not None else self
        if limit is None or limit >= len(task):
            return task
        return task._derive(task.questions[:limit], limit=limit)

    def split(self, fractions: dict[str, float], seed: int = 0) -> dict[str, Task]:
        """Deterministic disjoint splits, e.g. ``{"train": .6, "cal": .2, "test": .2}``.

        Sizes are floor(fraction * n) with the remainder going to the last split, so the
        splits cover every question when the fractions sum to 1.
        """
        if not fractions:
            raise ConfigError("split needs at least one named fraction")
        if any(f <= 0 for f in fractions.values()) or sum(fractions.values()) > 1 + 1e-9:
            raise ConfigError(
                f"split fractions must be positive and sum to at most 1, got {fractions}"
            )
        n = len(self.questions)
        order = np.random.default_rng(seed).permutation(n)
        total = sum(fractions.values())
        out: dict[str, Task] = {}
        start = 0
        names = list(fractions)
        for j, name in enumerate(names):
            if j == len(names) - 1 and abs(total - 1.0) < 1e-9:
                stop = n
            else:
                stop = start + int(np.floor(fractions[name] * n))
            idx = order[start:stop]
            out[name] = self._derive(
                (self.questions[i] for i in sorted(idx)), split=name, split_seed=seed
            )
            start = stop
        return out
