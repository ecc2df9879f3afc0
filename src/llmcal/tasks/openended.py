"""Open-ended (free-form answer) questions: OpenQuestion, OpenTask and their JSONL loader.

The canonical open-ended row has no ``choices``; ``answers`` lists the accepted answers, the
first being the main reference and the rest aliases::

    {"id": "triviaqa-00001", "question": "What type of animal is a dik-dik?",
     "answers": ["Antelope", "Antelopes"], "context": "optional", "subject": "optional"}

A row holding both ``choices`` and ``answers``, an empty ``answers`` list or an empty answer
string is a :class:`~llmcal.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, overload

import numpy as np

from llmcal._io import atomic_write_text
from llmcal.errors import ConfigError, DataError

OPEN_FIELDS = ("id", "question", "answers", "context", "subject")


@dataclass(frozen=True)
class OpenQuestion:
    """One open-ended question; ``answers[0]`` is the main reference, the rest aliases."""

    id: str
    question: str
    answers: tuple[str, ...]
    context: str | None = None
    subject: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise DataError(f"question id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.question, str) or not self.question.strip():
            raise DataError(f"question {self.id!r}: 'question' must be a non-empty string")
        answers = tuple(self.answers)
        object.__setattr__(self, "answers", answers)
        if not answers:
            raise DataError(f"question {self.id!r}: 'answers' must list at least one answer")
        if not all(isinstance(a, str) and a.strip() for a in answers):
            raise DataError(f"question {self.id!r}: every answer must be a non-empty string")

    @property
    def reference(self) -> str:
        """The main reference answer."""
        return self.answers[0]

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSONL record (optional fields omitted when unset)."""
        out: dict[str, Any] = {"id": self.id, "question": self.question}
        out["answers"] = list(self.answers)
        if self.context is not None:
            out["context"] = self.context
        if self.subject is not None:
            out["subject"] = self.subject
        return out


@dataclass(frozen=True)
class OpenTask:
    """A named, ordered collection of OpenQuestions with free-form metadata."""

    name: str
    questions: Sequence[OpenQuestion]
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

    def __iter__(self) -> Iterator[OpenQuestion]:
        return iter(self.questions)

    @overload
    def __getitem__(self, i: int) -> OpenQuestion: ...
    @overload
    def __getitem__(self, i: slice) -> OpenTask: ...
    def __getitem__(self, i: int | slice) -> OpenQuestion | OpenTask:
        if isinstance(i, slice):
            return self._derive(self.questions[i])
        return self.questions[i]

    @property
    def ids(self) -> list[str]:
        """Question ids in order."""
        return [q.id for q in self.questions]

    def _derive(self, questions: Iterable[OpenQuestion], **meta: Any) -> OpenTask:
        return replace(self, questions=tuple(questions), metadata={**self.metadata, **meta})

    def select(self, ids: Sequence[str]) -> OpenTask:
        """The questions with these ids, in the given order."""
        by_id = {q.id: q for q in self.questions}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ConfigError(f"task {self.name!r} has no question with id {missing[0]!r}")
        return self._derive(by_id[i] for i in ids)

    def subset(self, limit: int | None, seed: int | None = None) -> OpenTask:
        """The first ``limit`` questions, after a seeded shuffle when ``seed`` is given."""
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit must be a positive integer, got {limit}")
        task = self
        if seed is not None:
            order = np.random.default_rng(seed).permutation(len(self.questions))
            task = self._derive((self.questions[i] for i in order), shuffle_seed=seed)
        if limit is None or limit >= len(task):
            return task
        return task._derive(task.questions[:limit], limit=limit)

    def shots_split(self, n_shots: int, seed: int = 0) -> tuple[list[OpenQuestion], OpenTask]:
        """``n_shots`` seeded examples for few-shot prompts and the task without them."""
        if n_shots < 1 or n_shots >= len(self):
            raise ConfigError(
                f"--shots {n_shots}: needs 1 <= shots < {len(self)} (the task's question count)"
            )
        order = np.random.default_rng([seed, 7919]).permutation(len(self))
        picked = {int(i) for i in order[:n_shots]}
        shots = [self.questions[i] for i in sorted(picked)]
        rest = self._derive(
            (q for j, q in enumerate(self.questions) if j not in picked),
            shot_ids=[s.id for s in shots],
        )
        return shots, rest


def load_open_jsonl(path: str | os.PathLike[str], name: str | None = None) -> OpenTask:
    """Read an open-ended canonical JSONL file (see the module docstring)."""
    from llmcal.tasks.loaders import _json_lines, _read_text

    path = Path(path)
    name = name or path.stem
    questions: list[OpenQuestion] = []
    first_seen: dict[str, int] = {}
    for lineno, rec in _json_lines(path, _read_text(path)):
        where = f"{path}, line {lineno}"
        q = open_question(rec, where, default_id=f"{name}-{lineno:05d}")
        if q.id in first_seen:
            raise DataError(
                f"{where}: field 'id': duplicate id {q.id!r} (first used on line "
                f"{first_seen[q.id]}); give every question a unique id"
            )
        first_seen[q.id] = lineno
        questions.append(q)
    if not questions:
        raise DataError(f"{path}: contains no questions; expected one JSON object per line")
    return OpenTask(name, tuple(questions), metadata={"source": "file", "path": str(path)})


def save_open_jsonl(task: OpenTask, path: str | os.PathLike[str]) -> Path:
    """Write an OpenTask as canonical JSONL atomically."""
    text = "".join(json.dumps(q.to_dict(), ensure_ascii=False) + "\n" for q in task)
    return atomic_write_text(path, text)


def is_open_record(rec: Any) -> bool:
    """True for a record shaped like an open-ended row (``answers``, no ``choices``)."""
    return isinstance(rec, dict) and "answers" in rec and "choices" not in rec


def open_question(rec: Any, where: str, default_id: str) -> OpenQuestion:
    """Validate one open-ended record; errors name ``where`` (file and line) and the field."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "choices" in rec and "answers" in rec:
        raise DataError(
            f"{where}: the row has both 'choices' and 'answers'; a multiple-choice row has "
            "'choices' + 'answer' (index), an open-ended row 'answers' (accepted texts) only"
        )
    if "choices" in rec:
        raise DataError(
            f"{where}: the row has 'choices', so it is multiple-choice; score it with "
            "`llmcal score`, or give open-ended rows an 'answers' list and no 'choices'"
        )
    unknown = sorted(set(rec) - set(OPEN_FIELDS))
    if unknown:
        raise DataError(
            f"{where}: field {unknown[0]!r} is not part of the open-ended schema; rename or "
            f"remove it (allowed fields: {', '.join(OPEN_FIELDS)})"
        )
    qid = rec.get("id", default_id)
    if not isinstance(qid, str) or not qid:
        raise DataError(f"{where}: field 'id' must be a non-empty string, got {qid!r}; quote it")
    question = rec.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: field 'question' must be a non-empty string, got {question!r}")
    if "answers" not in rec:
        raise DataError(f"{where}: field 'answers' is missing; add a list of accepted answers")
    answers = rec["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: field 'answers' must be a list of strings, got {answers!r}")
    if not answers:
        raise DataError(f"{where}: field 'answers' is empty; list at least the reference answer")
    blank = [i for i, a in enumerate(answers) if not a.strip()]
    if blank:
        raise DataError(
            f"{where}: field 'answers' item {blank[0]} is an empty string; every accepted "
            "answer must have text"
        )
    for key in ("context", "subject"):
        value = rec.get(key)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: field {key!r} must be a string or null, got {value!r}")
    return OpenQuestion(
        id=qid,
        question=question,
        answers=tuple(answers),
        context=rec.get("context") or None,
        subject=rec.get("subject") or None,
    )
