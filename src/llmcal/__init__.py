"""llmcal: measure and repair the confidence calibration of large language models.

``import llmcal`` is light: torch and transformers load only when a scorer or trainer is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmcal._version import __version__
from llmcal.errors import (
    CalibrationError,
    ConfigError,
    DataError,
    LLMCalError,
    ModelError,
    ScoresError,
)
from llmcal.scores import Scores, align
from llmcal.tasks.types import Question, Task

_LAZY = {
    "evaluate": "llmcal.metrics",
    "load_task": "llmcal.tasks",
    "synthetic_task": "llmcal.tasks",
    "get_template": "llmcal.tasks",
    "HFScorer": "llmcal.models",
    "load_calibrator": "llmcal.calibrate",
    "CalibratedModel": "llmcal.serve",
}

if TYPE_CHECKING:
    from llmcal.calibrate import load_calibrator
    from llmcal.metrics import evaluate
    from llmcal.models import HFScorer
    from llmcal.serve import CalibratedModel
    from llmcal.tasks import get_template, load_task, synthetic_task


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llmcal' has no attribute {name!r}")


__all__ = [
    "CalibratedModel",
    "CalibrationError",
    "ConfigError",
    "DataError",
    "HFScorer",
    "LLMCalError",
    "ModelError",
    "Question",
    "Scores",
    "ScoresError",
    "Task",
    "__version__",
    "align",
    "evaluate",
    "get_template",
    "load_calibrator",
    "load_task",
    "synthetic_task",
]
