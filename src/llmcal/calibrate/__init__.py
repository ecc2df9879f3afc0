"""Calibrators: fit on Scores, transform Scores, save and load as JSON artefacts.

Supervised: :class:`TemperatureScaling`, :class:`VectorScaling`, :class:`MatrixScaling`,
:class:`HistogramBinning`, :class:`IsotonicCalibration`, :class:`PlattScaling`. Label-free:
:class:`DACA` (a post-trained model calibrated against its pre-trained counterpart).
:class:`CrossFitted` wraps a supervised one for k-fold out-of-fold calibration. Every calibrator
also takes plain arrays: ``fit(logits, labels)``, ``predict_proba(logits)``.
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
from llmcal.calibrate.crossfit import CrossFitted, stratified_folds
from llmcal.calibrate.daca import (
    DACA,
    SubjectDACA,
    agreement_mask,
    mean_std,
    reference_distribution,
    template_protocol,
)
from llmcal.calibrate.scaling import MatrixScaling, TemperatureScaling, VectorScaling

__all__ = [
    "CALIBRATORS",
    "DACA",
    "FORMAT",
    "FORMAT_VERSION",
    "CalibrationWarning",
    "Calibrator",
    "CrossFitted",
    "HistogramBinning",
    "IsotonicCalibration",
    "MatrixScaling",
    "PlattScaling",
    "SubjectDACA",
    "TemperatureScaling",
    "VectorScaling",
    "agreement_mask",
    "as_scores",
    "load_calibrator",
    "mean_std",
    "reference_distribution",
    "stratified_folds",
    "template_protocol",
]
