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
