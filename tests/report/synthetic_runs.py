"""Synthetic Scores for the report tests (numpy only; no model is loaded)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from llmcal.scores import Scores

SUBJECTS = ("algebra", "biology", "chemistry", "history")


def make_scores(
    seed: int,
    n: int = 200,
    k: int = 4,
    sharpness: float = 2.5,
    ids: Sequence[str] | None = None,
    subjects: bool = True,
    model: str = "synthetic-model",
    labels: np.ndarray | None = None,
) -> Scores:
    """Labelled n × k Scores whose confidence is informative but over-confident for sharpness > 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n) if labels is None else np.asarray(labels)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    meta: dict[str, Any] = {
        "model": model,
        "task": "synthetic",
        "template": "daca1",
        "mode": "letter",
        "logit_kind": "logits",
        "backend": "hf",
    }
    return Scores(
        ids=np.array(
            list(ids) if ids is not None else [f"q{i:04d}" for i in range(n)], dtype=object
        ),
        logits=logits * sharpness,
        labels=y,
        meta=meta,
        subjects=np.array(SUBJECTS, dtype=object)[np.arange(n) % len(SUBJECTS)]
        if subjects
        else None,
    )


def perturbed(scores: Scores, seed: int, scale: float = 0.8, noise: float = 0.4) -> Scores:
    """The same questions with rescaled, jittered logits (a second run of a similar model)."""
    rng = np.random.default_rng(seed)
    return scores.with_logits(
        scores.logits * scale + rng.normal(scale=noise, size=scores.logits.shape)
    )


def two_option_scores(
    confidence: Sequence[float], correct: Sequence[int], prefix: str = "q"
) -> Scores:
    """Two-option Scores with the given top-label confidences (> 0.5) and correctness."""
    p = np.asarray(confidence, dtype=np.float64)
    logits = np.log(np.stack([p, 1.0 - p], axis=1))
    return Scores(
        ids=np.array([f"{prefix}{i}" for i in range(p.shape[0])], dtype=object),
        logits=logits,
        labels=np.where(np.asarray(correct) == 1, 0, 1),
        meta={"model": "hand"},
    )
