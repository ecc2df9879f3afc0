"""Metrics: calibration errors, proper scores, ranking / selective prediction, bootstrap, evaluate.

Plain numpy functions of arrays (float64); ``evaluate(scores)`` runs them all on a Scores object.
"""

from __future__ import annotations

from llmcal.metrics.bootstrap import bootstrap_ci, bootstrap_distribution
from llmcal.metrics.calibration import (
    ReliabilityData,
    classwise_ece,
    debiased_l2_ece,
    ece,
    mce,
    reliability_data,
    smooth_ece,
    smooth_ece_bandwidth,
)
from llmcal.metrics.evaluate import evaluate
from llmcal.metrics.scoring import (
    accuracy,
    brier,
    brier_per_sample,
    nll,
    nll_per_sample,
    top_label_brier,
)
from llmcal.metrics.selective import aurc, auroc, risk_coverage_curve, selective_accuracy

__all__ = [
    "ReliabilityData",
    "accuracy",
    "aurc",
    "auroc",
    "bootstrap_ci",
    "bootstrap_distribution",
    "brier",
    "brier_per_sample",
    "classwise_ece",
    "debiased_l2_ece",
    "ece",
    "evaluate",
    "mce",
    "nll",
    "nll_per_sample",
    "reliability_data",
    "risk_coverage_curve",
    "selective_accuracy",
    "smooth_ece",
    "smooth_ece_bandwidth",
    "top_label_brier",
]
