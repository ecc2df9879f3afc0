"""Helpers for tests that drive the llmcal CLI in-process (tests/ is on sys.path via conftest)."""

from __future__ import annotations

from typing import Any

import pytest

from llmcal.calibrate import TemperatureScaling
from llmcal.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``llmcal ARGV``; return the exit code, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


#: Progress lines a run prints on stderr before it starts its work (see llmcal.progress).
PROGRESS_PREFIXES = ("llmcal: scoring ", "llmcal: generating ", "llmcal: resuming ")


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    """The CLI's error contract: exit 2, one ``llmcal: error:`` line, no traceback.

    An error found while the work runs (a server that fails mid-run) may follow the run's own
    progress lines; nothing else may stand beside the error line.
    """
    assert code == 2
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines, err
    assert lines[-1].startswith("llmcal: error: "), err
    assert all(line.startswith(PROGRESS_PREFIXES) for line in lines[:-1]), err
    for f in fragments:
        assert f in lines[-1], err


def temperature_artefact(tau: float, **fit: Any) -> TemperatureScaling:
    """A fitted TemperatureScaling with a known τ and the given fit record (no data needed)."""
    return TemperatureScaling.from_dict(
        {
            "format": "llmcal-calibrator",
            "format_version": 1,
            "kind": "temperature",
            "config": {},
            "params": {"temperature": tau},
            "fit": fit,
        }
    )
