"""Helpers for tests that drive the llmcal CLI in-process (tests/ is on sys.path via conftest)."""

from __future__ import annotations

import pytest

from llmcal.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``llmcal ARGV``; return the exit code, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    """The CLI's error contract: exit 2, one ``llmcal: error:`` line, no traceback."""
    assert code == 2
    assert err.startswith("llmcal: error: ")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    for f in fragments:
        assert f in err, err
