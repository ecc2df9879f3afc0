"""CAPE: option-permutation ensembles that remove letter/position bias (Jiang et al. 2023).

Each question is scored under several orderings of its options (the K cyclic shifts by
default, or every permutation up to a cap), each result is mapped back to the original
options, and the probabilities are averaged. The result is one Scores whose logits are the
log of the averaged probabilities (``meta["logit_kind"] = "probs_log"``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from llmcal.errors import ConfigError
from llmcal.models.base import Scorer, build_scores
from llmcal.scores import Scores
from llmcal.tasks.types import Question, Task

PermutationSet = Literal["cyclic", "all"]


def option_permutations(
    k: int, how: PermutationSet = "cyclic", cap: int = 24, seed: int = 0
) -> list[tuple[int, ...]]:
    """Orderings of ``k`` options; ``perm[j]`` is the original option shown at position j.

    ``cyclic`` gives the k shifts; ``all`` gives every permutation, or a seeded sample of
    ``cap`` of them (always including the identity) when there are more.
    """
    if how == "cyclic":
        return [tuple((j + s) % k for j in range(k)) for s in range(k)]
    if how != "all":
        raise ConfigError(f"unknown permutation set {how!r}; use 'cyclic' or 'all'")
    if cap < 1:
        raise ConfigError(f"permutation cap must be >= 1, got {cap}")
    perms = list(itertools.permutations(range(k)))
    if len(perms) <= cap:
        return perms
    rng = np.random.default_rng(seed)
    picked = rng.choice(np.arange(1, len(perms)), size=cap - 1, replace=False)
    return [perms[0], *(perms[i] for i in sorted(picked))]


def permute_question(q: Question, perm: Sequence[int]) -> Question:
    """``q`` with its options shown in the order ``perm`` (answer index remapped)."""
    answer = None if q.answer is None else list(perm).index(q.answer)
    return Question(
        q.id, q.question, tuple(q.choices[i] for i in perm), answer, q.context, q.subject
    )


def score_cape(
    scorer: Scorer,
    task: Task,
    *,
    permutations: PermutationSet = "cyclic",
    cap: int = 24,
    seed: int = 0,
    **score_kwargs: Any,
) -> Scores:
    """Score ``task`` under option permutations and average the mapped-back probabilities."""
    if score_kwargs.get("mode", "letter") != "letter":
        raise ConfigError("CAPE permutes the listed options, so it needs --mode letter")
    perms = {q.id: option_permutations(len(q.choices), permutations, cap, seed) for q in task}
    n_rounds = max(len(p) for p in perms.values())
    total = np.zeros((len(task), task.max_choices))
    counts = np.zeros(len(task))
    row = {q.id: i for i, q in enumerate(task)}
    permuted = getattr(scorer, "score_permuted", None)
    if permuted is not None:  # shares each question's prompt prefix across its orderings
        rounds = permuted(task, [perms[q.id] for q in task], **score_kwargs)
    else:
        rounds = [
            scorer.score(Task(task.name, _round(task, perms, r), task.metadata), **score_kwargs)
            for r in range(n_rounds)
        ]
    for r, scores in enumerate(rounds):
        probs = scores.probs()
        for j, qid in enumerate(scores.ids):
            i = row[qid]
            perm = perms[qid][r]
            total[i, list(perm)] += probs[j, : len(perm)]
            counts[i] += 1
    base = rounds[0]  # round 0 scores every question
    # tiny floor: an underflowed average must not turn a real option into -inf padding
    log_mean = np.log(np.maximum(total / counts[:, None], np.finfo(np.float64).tiny))
    rows = [log_mean[i, : len(q.choices)].tolist() for i, q in enumerate(task)]
    meta = {k: v for k, v in base.meta.items() if k not in ("task", "created", "llmcal_version")}
    meta["logit_kind"] = "probs_log"
    meta["cape"] = {"permutations": permutations, "rounds": n_rounds, "cap": cap, "seed": seed}
    return build_scores(task, rows, meta)


def _round(task: Task, perms: dict[str, list[tuple[int, ...]]], r: int) -> list[Question]:
    """The questions with an ``r``-th ordering, shown in it."""
    return [permute_question(q, perms[q.id][r]) for q in task if r < len(perms[q.id])]
