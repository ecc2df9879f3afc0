"""Fixtures for the fine-tuning tests: a tiny random Llama with the SmolLM2 tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from tiny import make_tiny_model


@pytest.fixture(scope="session")
def smol_dir(smol: Any) -> Path:
    """The converted transformers folder of the bundled SmolLM2 (converted by the fixture)."""
    from llmcal.models.hf import converted_dir

    return converted_dir(Path(smol.source.location))


@pytest.fixture(scope="session")
def tiny_model(smol_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the tiny random model."""
    target = tmp_path_factory.mktemp("tiny") / "model"
    try:
        return make_tiny_model(target, smol_dir)
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise
