"""Calibrators: fit on Scores, transform Scores, save and load as JSON artefacts.

Supervised: :class:`TemperatureScaling`, :class:`VectorScaling`, :class:`MatrixScaling`,
:class:`HistogramBinning`, :class:`IsotonicCalibration`, :class:`PlattScaling`. Label-free:
:class:`DACA` (a post-trained model calibrated against its pre-trained counterpart).
:class:`CrossFitted` wraps a supervised one for k-fold out-of-fold calibration. Every calibrator
also takes plain arrays: ``fit(logits, labels)``, ``predict_proba(logits)``.
Guarantees (decisions, not new Scores): :class:`ConformalPredictor` (prediction sets with
coverage ≥ 1 − α) and :class:`SelectiveRisk` (answer / abstain with a bound on the error rate).
"""

from __future__ import annotations

from llmcal.calibrate.base import (
    CALIBRATORS,
    FORMAT,
    FORMAT_VERSION,
    CalibrationWarning,
    Calibrator,
    as_scores,
    load_calibrator,
)
from llmcal.calibrate.binning import HistogramBinning, IsotonicCalibration, PlattScaling
from llmcal.calibrate.conformal import ConformalPredictor, PredictionSets
from llmcal.calibrate.crossfit import CrossFitted, stratified_folds
from llmcal.calibrate.daca import (
    DACA,
    SubjectDACA,
    agreement_mask,
    mean_std,
    reference_distribution,
    template_protocol,
)
from llmcal.calibrate.guarantee import GUARANTEES, Guarantee, load_guarantee
from llmcal.calibrate.scaling import MatrixScaling, TemperatureScaling, VectorScaling
from llmcal.calibrate.selective_risk import SelectiveDecisions, SelectiveRisk

__all__ = [
    "CALIBRATORS",
    "DACA",
    "FORMAT",
    "FORMAT_VERSION",
    "GUARANTEES",
    "CalibrationWarning",
    "Calibrator",
    "ConformalPredictor",
    "CrossFitted",
    "Guarantee",
    "HistogramBinning",
    "IsotonicCalibration",
    "MatrixScaling",
    "PlattScaling",
    "PredictionSets",
    "SelectiveDecisions",
    "SelectiveRisk",
    "SubjectDACA",
    "TemperatureScaling",
    "VectorScaling",
    "agreement_mask",
    "as_scores",
    "load_calibrator",
    "load_guarantee",
    "mean_std",
    "reference_distribution",
    "stratified_folds",
    "template_protocol",
]
