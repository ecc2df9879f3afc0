"""Few-shot examples carved deterministically out of a task."""

from __future__ import annotations

import numpy as np

from llmcal.errors import ConfigError
from llmcal.tasks.types import Question, Task


def fewshot_split(task: Task, k: int, seed: int = 0) -> tuple[list[Question], Task]:
    """Pick ``k`` labelled questions as shots (seeded) and return them with the rest of the task."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(
            f"the number of few-shot examples must be a non-negative integer, got {k!r}"
        )
    if k == 0:
        return [], task
    labelled = [i for i, q in enumerate(task.questions) if q.answer is not None]
    if len(labelled) < k:
        raise ConfigError(
            f"task {task.name!r} has {len(labelled)} labelled question(s); {k} few-shot examples "
            "need at least that many (use fewer shots or a labelled task)"
        )
    if len(task) - k < 1:
        raise ConfigError(
            f"task {task.name!r} has {len(task)} questions; none left after {k} shots"
        )
    order = np.random.default_rng(seed).permutation(len(labelled))[:k]
    picked = [labelled[j] for j in order]
    chosen = set(picked)
    rest = Task(
        task.name,
        tuple(q for i, q in enumerate(task.questions) if i not in chosen),
        metadata={
            **task.metadata,
            "fewshot_k": k,
            "fewshot_seed": seed,
            "fewshot_ids": [task.questions[i].id for i in picked],
        },
    )
    return [task.questions[i] for i in picked], rest


def subject_shots(dev: Task, k: int = 5) -> dict[str, list[Question]]:
    """The first ``k`` labelled questions of each subject of ``dev``, in file order.

    This is MMLU's five-shot protocol (the dev set's five questions per subject) and the order
    lm-evaluation-harness's ``first_n`` few-shot sampler uses, so prompts match it exactly.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"the number of few-shot examples must be a positive integer, got {k!r}")
    by_subject: dict[str, list[Question]] = {}
    for q in dev:
        if q.subject is None:
            raise ConfigError(
                f"few-shot source {dev.name!r} has question {q.id!r} without a subject; "
                "per-subject shots need the subject field (e.g. mmlu_dev)"
            )
        if q.answer is not None:
            by_subject.setdefault(q.subject, [])
            if len(by_subject[q.subject]) < k:
                by_subject[q.subject].append(q)
    short = sorted(s for s, qs in by_subject.items() if len(qs) < k)
    if short:
        raise ConfigError(
            f"few-shot source {dev.name!r} has fewer than {k} labelled questions for subject(s) "
            f"{', '.join(short)}; use fewer shots"
        )
    return by_subject
