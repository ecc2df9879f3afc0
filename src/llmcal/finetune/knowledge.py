"""SliCK-style knowledge labels of training questions (Gekhman et al. 2024; cogcalib.md §1).

Each question is scored by the (pre-trained) model under ``n_prompts`` few-shot prompts, each
with its own seeded random exemplars. Per prompt, the greedy answer is the argmax option and
``samples`` answers are drawn from the option softmax at temperature ``temperature``. Then:

* ``highly-known``: the greedy answer is correct under every prompt (SliCK's HighlyKnown);
* ``maybe-known``: greedy is correct under some prompts but not all;
* ``weakly-known``: greedy is never correct, some sampled answer is;
* ``unknown``: neither greedy nor any sample is ever correct.

"Known" in the CogCalib sense is ``highly-known``; the known-data share is its fraction. A
question drawn as an exemplar of a prompt is not scored under that prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from llmcal.errors import ConfigError
from llmcal.tasks.types import Task

CATEGORIES: tuple[str, ...] = ("highly-known", "maybe-known", "weakly-known", "unknown")


def slick_categories(
    logits: Sequence[npt.ArrayLike],
    labels: npt.ArrayLike,
    used: npt.ArrayLike | None = None,
    temperature: float = 0.5,
    samples: int = 16,
    seed: int = 0,
) -> tuple[list[str], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Categories, greedy accuracy and sampled accuracy per question from per-prompt logits.

    ``logits[r]`` is the n × K option-logit array of prompt r (−inf = padding option);
    ``used[r, i]`` False leaves prompt r out for question i. ``samples = 0`` skips sampling
    (then nothing is weakly-known). Sampling is seeded by ``seed``.
    """
    if not logits:
        raise ConfigError("knowledge labels need at least one prompt")
    z = np.stack([np.asarray(x, dtype=np.float64) for x in logits])  # R × n × K
    y = np.asarray(labels, dtype=np.int64)
    r, n, k = z.shape
    if y.shape != (n,) or (y < 0).any() or (y >= k).any():
        raise ConfigError("knowledge labels need a gold answer for every question")
    use = np.ones((r, n), dtype=bool) if used is None else np.asarray(used, dtype=bool)
    n_used = use.sum(axis=0)
    if (n_used == 0).any():
        i = int(np.argmax(n_used == 0))
        raise ConfigError(
            f"question {i} was an exemplar in every prompt; use more prompts or a larger pool"
        )
    if temperature <= 0 or samples < 0:
        raise ConfigError("temperature must be > 0 and samples >= 0")
    greedy = (np.argmax(z, axis=2) == y[None, :]) & use
    p_greedy = greedy.sum(axis=0) / n_used
    p_sample = np.zeros(n)
    if samples:
        rng = np.random.default_rng(seed)
        scaled = z / temperature
        scaled = scaled - scaled.max(axis=2, keepdims=True)
        probs = np.exp(scaled)
        probs /= probs.sum(axis=2, keepdims=True)
        cdf = np.cumsum(probs, axis=2)
        u = rng.random((r, n, samples))
        drawn = (u[..., None] > cdf[:, :, None, :]).sum(axis=3)  # inverse-CDF draws, R × n × S
        n_valid = np.isfinite(z).sum(axis=2)  # float rounding can leave the CDF just under 1
        drawn = np.minimum(drawn, (n_valid - 1)[..., None])
        hits = (drawn == y[None, :, None]) & use[..., None]
        p_sample = hits.sum(axis=(0, 2)) / (n_used * samples)
    cats = []
    for g, s in zip(p_greedy, p_sample, strict=True):
        if g == 1.0:
            cats.append("highly-known")
        elif g > 0.0:
            cats.append("maybe-known")
        elif s > 0.0:
            cats.append("weakly-known")
        else:
            cats.append("unknown")
    return cats, p_greedy.astype(np.float64), p_sample.astype(np.float64)


@dataclass
class KnowledgeLabels:
    """Per-question SliCK categories and the settings they were computed with."""

    ids: list[str]
    categories: list[str]
    p_greedy: list[float]
    p_sample: list[float]
    settings: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Number of questions per category (all four, zeros included)."""
        return {c: self.categories.count(c) for c in CATEGORIES}

    def shares(self) -> dict[str, float]:
        """Fraction of questions per category."""
        n = max(1, len(self.ids))
        return {c: v / n for c, v in self.counts().items()}

    def known(self) -> dict[str, bool]:
        """id → highly-known (CogCalib's "known")."""
        return {i: c == "highly-known" for i, c in zip(self.ids, self.categories, strict=True)}

    def summary_line(self) -> str:
        """``knowledge: 12/40 known (30.0 %), …`` for the finetune output."""
        n = len(self.ids)
        parts = [f"{v}/{n} {c}" for c, v in self.counts().items()]
        share = self.shares()["highly-known"]
        return f"knowledge: known share {100 * share:.1f} % ({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (counts, shares, settings, per-question values)."""
        return {
            "counts": self.counts(),
            "shares": self.shares(),
            "known_share": self.shares()["highly-known"],
            "settings": self.settings,
            "questions": {
                i: {"category": c, "p_greedy": g, "p_sample": s}
                for i, c, g, s in zip(
                    self.ids, self.categories, self.p_greedy, self.p_sample, strict=True
                )
            },
        }


def knowledge_labels(
    scorer: Any,
    task: Task,
    *,
    n_prompts: int = 10,
    shots: int = 4,
    exemplars: Task | None = None,
    temperature: float = 0.5,
    samples: int = 16,
    seed: int = 0,
) -> KnowledgeLabels:
    """SliCK categories of ``task``'s questions under ``scorer`` (letter mode; module docstring).

    ``exemplars`` is the pool the few-shot examples are drawn from (default: ``task``);
    SliCK's setting is 10 prompts of 4 shots, greedy plus T = 0.5 sampling.
    ``shots = 0`` scores the zero-shot daca1 prompt ``n_prompts`` times (then no question is
    maybe-known).
    """
    from llmcal.tasks.templates import get_template

    if n_prompts < 1 or shots < 0:
        raise ConfigError("--knowledge-prompts must be >= 1 and --knowledge-shots >= 0")
    if len(task) == 0:
        raise ConfigError("knowledge labels of an empty task")
    pool = task if exemplars is None else exemplars
    pool_list = [q for q in pool if q.answer is not None]
    if shots > len(pool_list) - (1 if exemplars is None else 0):
        raise ConfigError(
            f"{shots} exemplars per prompt need a pool of more than {shots} labelled questions"
        )
    template = get_template(f"fewshot-{shots}" if shots else "daca1")
    rng = np.random.default_rng(seed)
    index = {q.id: i for i, q in enumerate(task)}
    k = task.max_choices
    all_logits, used, shot_ids = [], [], []
    for _ in range(n_prompts):
        pick = rng.choice(len(pool_list), size=shots, replace=False).tolist() if shots else []
        chosen = [pool_list[int(j)] for j in pick]
        ids = {q.id for q in chosen}
        rest = Task(task.name, [q for q in task if q.id not in ids], task.metadata)
        z = np.full((len(task), k), -np.inf)
        mask = np.zeros(len(task), dtype=bool)
        if len(rest):
            scores = scorer.score(rest, template=template, shots=chosen)
            for qid, row in zip(scores.ids, scores.logits, strict=True):
                z[index[str(qid)], : row.shape[0]] = row
                mask[index[str(qid)]] = True
        all_logits.append(np.where(mask[:, None], z, 0.0))
        used.append(mask)
        shot_ids.append(sorted(ids))
    labels = [q.answer if q.answer is not None else -1 for q in task]
    cats, g, s = slick_categories(all_logits, labels, np.array(used), temperature, samples, seed)
    settings = {
        "n_prompts": n_prompts,
        "shots": shots,
        "temperature": temperature,
        "samples": samples,
        "seed": seed,
        "template": template.name,
        "shot_ids": shot_ids,
        "model": getattr(scorer, "name", None),
    }
    return KnowledgeLabels([q.id for q in task], cats, g.tolist(), s.tolist(), settings)
