"""The Scorer protocol and helpers shared by every backend."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
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


def score_by_subject(
    scorer: Scorer,
    task: Task,
    shots: Mapping[str, Sequence[Question]],
    **kwargs: Any,
) -> Scores:
    """Score each subject of ``task`` with that subject's few-shot examples (MMLU five-shot).

    One ``scorer.score`` call per subject, so a scorer that shares prompt prefixes (HFScorer)
    runs a subject's instruction and examples once and reuses their KV cache for every question
    of the subject. Rows come back in task order; ``meta["shot_ids"]`` maps subject → shot ids.
    ``kwargs`` go to ``score``; the template defaults to ``fewshot-K``.
    """
    order: list[str] = []
    for q in task:
        if q.subject is None:
            raise ConfigError(
                f"question {q.id!r} of task {task.name!r} has no subject; per-subject few-shot "
                "scoring needs the subject field (e.g. MMLU)"
            )
        if q.subject not in order:
            order.append(q.subject)
    missing = [s for s in order if s not in shots]
    if missing:
        raise ConfigError(
            f"no few-shot examples for subject(s) {', '.join(missing)} of task {task.name!r}"
        )
    sizes = {len(shots[s]) for s in order}
    if len(sizes) != 1:
        raise ConfigError(f"every subject needs the same number of few-shot examples, got {sizes}")
    k = sizes.pop()
    kwargs.setdefault("template", f"fewshot-{k}")
    parts = [scorer.score(task.filter(s), shots=shots[s], **kwargs) for s in order]
    meta = {
        **parts[0].meta,
        "n_shots": k,
        "shot_ids": {s: [q.id for q in shots[s]] for s in order},
        "fewshot": "per-subject",
    }
    return Scores.concat(parts, meta=meta).by_ids(task.ids)
