"""Shared fixtures: the data folder and the two bundled models, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (the canonical JSONL benchmark files); skip when it is not beside the repo."""
    if not (SHARED_DATA / "arc_easy.jsonl").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smol():  # type: ignore[no-untyped-def]
    """HFScorer for the bundled aligned model (SmolLM2-135M-Instruct)."""
    from llmcal.models import HFScorer

    return HFScorer("smollm2-135m-instruct", progress=False, batch_size=4)


@pytest.fixture(scope="session")
def gemma():  # type: ignore[no-untyped-def]
    """HFScorer for the bundled base model (Gemma-3-270M)."""
    from llmcal.models import HFScorer

    return HFScorer("gemma3-270m", progress=False, batch_size=4)
