"""The Scorer protocol and helpers shared by every backend."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from llmcal._version import __version__
from llmcal.errors import ConfigError
from llmcal.scores import Scores
from llmcal.tasks.templates import DEFAULT_TEMPLATE, Template, get_template
from llmcal.tasks.types import Question, Task

Mode = Literal["letter", "cloze"]
Normalization = Literal["sum", "mean", "char"]
MODES: tuple[str, ...] = ("letter", "cloze")
NORMALIZATIONS: tuple[str, ...] = ("sum", "mean", "char")


@runtime_checkable
class Scorer(Protocol):
    """Anything that turns a Task into Scores."""

    name: str

    def score(
        self,
        task: Task,
        *,
        mode: Mode = "letter",
        template: str | Template = DEFAULT_TEMPLATE,
        normalization: Normalization = "mean",
        shots: Sequence[Question] = (),
    ) -> Scores:
        """Score every question of ``task``."""
        ...


def check_mode(mode: str, normalization: str) -> None:
    """Validate the scoring mode and cloze normalisation names."""
    if mode not in MODES:
        raise ConfigError(f"unknown scoring mode {mode!r}; use one of {', '.join(MODES)}")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"unknown cloze normalization {normalization!r}; use one of {', '.join(NORMALIZATIONS)}"
        )


def check_request(
    task: Task,
    mode: str,
    template: str | Template,
    normalization: str,
    shots: Sequence[Question] = (),
) -> Template:
    """Validate the arguments every ``Scorer.score`` takes; return the Template."""
    check_mode(mode, normalization)
    tmpl = as_template(template)
    if len(task) == 0:
        raise ConfigError(f"task {task.name!r} has no questions to score")
    if {s.id for s in shots} & set(task.ids):
        raise ConfigError("few-shot examples must not be among the scored questions")
    return tmpl


def as_template(template: str | Template) -> Template:
    """A Template from a name or a Template."""
    return template if isinstance(template, Template) else get_template(template)


def build_scores(task: Task, rows: Sequence[Sequence[float]], meta: dict[str, Any]) -> Scores:
    """Scores for ``task`` from one row of option values per question (padded with -inf)."""
    k = task.max_choices
    logits = np.full((len(task), k), -np.inf)
    for i, row in enumerate(rows):
        logits[i, : len(row)] = row
    subjects = None
    if any(q.subject is not None for q in task):
        subjects = np.array([q.subject for q in task], dtype=object)
    full_meta = {
        "task": task.name,
        "llmcal_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    return Scores(
        ids=np.array(task.ids, dtype=object),
        logits=logits,
        labels=np.array([-1 if q.answer is None else q.answer for q in task], dtype=np.int64),
        meta=full_meta,
        subjects=subjects,
        n_options=np.array([len(q.choices) for q in task], dtype=np.int64),
    )
