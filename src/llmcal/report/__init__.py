"""Reports: reliability diagrams and plots, and the HTML / JSON / Markdown calibration report.

matplotlib loads only when a plot is drawn; ``build_report`` runs the metrics, and
``Report.to_html()`` / ``to_json()`` / ``to_markdown()`` render the same content three ways.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_LAZY = {
    "confidence_shift_plot": "llmcal.report.plots",
    "reliability_diagram": "llmcal.report.plots",
    "reliability_figure": "llmcal.report.plots",
    "reliability_overlay": "llmcal.report.plots",
    "reliability_panels": "llmcal.report.plots",
    "save_reliability_png": "llmcal.report.plots",
    "selective_accuracy_plot": "llmcal.report.plots",
    "Report": "llmcal.report.data",
    "ReportRun": "llmcal.report.data",
    "build_report": "llmcal.report.data",
    "calibration_drift": "llmcal.report.drift",
    "paired_ece_bootstrap": "llmcal.report.drift",
}

if TYPE_CHECKING:
    from llmcal.report.data import Report, ReportRun, build_report
    from llmcal.report.drift import calibration_drift, paired_ece_bootstrap
    from llmcal.report.plots import (
        confidence_shift_plot,
        reliability_diagram,
        reliability_figure,
        reliability_overlay,
        reliability_panels,
        save_reliability_png,
        selective_accuracy_plot,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llmcal.report' has no attribute {name!r}")


__all__ = [
    "Report",
    "ReportRun",
    "build_report",
    "calibration_drift",
    "confidence_shift_plot",
    "paired_ece_bootstrap",
    "reliability_diagram",
    "reliability_figure",
    "reliability_overlay",
    "reliability_panels",
    "save_reliability_png",
    "selective_accuracy_plot",
]
