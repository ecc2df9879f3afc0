"""Serving: calibrated answers in-process (:class:`CalibratedModel`) or through ``llmcal serve``.

The proxy parts (:class:`Proxy`, :func:`create_app`, :func:`serve`) need Starlette and uvicorn
(``pip install llmcal[serve]``) and are imported only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmcal.serve.core import (
    Answer,
    CalibratedModel,
    FreeAnswer,
    SelectiveRule,
    answers_from_scores,
    calibrator_info,
    free_answers_from_scores,
    load_selective,
)

_APP = ("Proxy", "ServerThread", "create_app", "serve")

if TYPE_CHECKING:
    from llmcal.serve.app import Proxy, ServerThread, create_app, serve


def __getattr__(name: str) -> Any:
    if name in _APP:
        from llmcal.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'llmcal.serve' has no attribute {name!r}")


__all__ = [
    "Answer",
    "CalibratedModel",
    "FreeAnswer",
    "Proxy",
    "SelectiveRule",
    "ServerThread",
    "answers_from_scores",
    "calibrator_info",
    "create_app",
    "free_answers_from_scores",
    "load_selective",
    "serve",
]
