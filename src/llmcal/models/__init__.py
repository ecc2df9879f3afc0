"""Scorers: turn a Task into Scores (transformers in-process; HTTP endpoints later)."""

from llmcal.models.base import MODES, NORMALIZATIONS, Scorer, build_scores, score_by_subject
from llmcal.models.bundled import ALIGNED_MODEL, BASE_MODEL, BUNDLED, resolve_bundled
from llmcal.models.hf import HFScorer, ModelSource, resolve_model

__all__ = [
    "ALIGNED_MODEL",
    "BASE_MODEL",
    "BUNDLED",
    "MODES",
    "NORMALIZATIONS",
    "HFScorer",
    "ModelSource",
    "Scorer",
    "build_scores",
    "resolve_bundled",
    "resolve_model",
    "score_by_subject",
]
