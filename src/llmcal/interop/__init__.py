"""Bring your own outputs: import scores computed elsewhere (lm-eval samples, saved API responses).

Nothing is re-scored: the numbers another tool (or your own API calls) produced become a
:class:`~llmcal.scores.Scores` with the provenance that tool recorded.
"""

from __future__ import annotations

from llmcal.interop.lm_eval import read_lm_eval_samples

__all__ = ["read_lm_eval_samples"]
