"""Reports: reliability diagrams and plots (matplotlib loads only when a plot is drawn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_LAZY = {
    "reliability_diagram": "llmcal.report.plots",
    "reliability_figure": "llmcal.report.plots",
    "save_reliability_png": "llmcal.report.plots",
}

if TYPE_CHECKING:
    from llmcal.report.plots import reliability_diagram, reliability_figure, save_reliability_png


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llmcal.report' has no attribute {name!r}")


__all__ = ["reliability_diagram", "reliability_figure", "save_reliability_png"]
