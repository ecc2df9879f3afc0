"""Session fixtures for the HTTP tests: a real llama-cpp-python server on the bundled GGUF."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_server_helpers import LlamaServer


@pytest.fixture(scope="session")
def smol_gguf() -> Path:
    """The bundled SmolLM2-135M-Instruct GGUF file."""
    from llmcal.errors import ModelError
    from llmcal.models.bundled import resolve_bundled

    try:
        path = resolve_bundled("smollm2-135m-instruct")
    except ModelError as exc:
        pytest.skip(str(exc))
    assert path is not None
    return path


@pytest.fixture(scope="session")
def api_key() -> str:
    """The key the test server demands (random per session, so a leak is searchable)."""
    return "sk-llmcal-test-" + secrets.token_hex(12)


@pytest.fixture(scope="session")
def llama_server(
    smol_gguf: Path, api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """``python -m llama_cpp.server --logits_all true`` with the bundled model, behind a key."""
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")
    server = LlamaServer(smol_gguf, tmp_path_factory.mktemp("llama") / "server.log", api_key)
    server.start()
    try:
        yield server
    finally:
        server.stop()
