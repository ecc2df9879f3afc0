"""Calibration-aware LoRA fine-tuning on the Hugging Face Trainer: CogCalib, CFT, RCFT.

``from llmcal.finetune import finetune, FinetuneConfig``. Only the config is imported
eagerly; the training code (torch, transformers, PEFT) loads on first use.
"""

from __future__ import annotations

from typing import Any

from llmcal.finetune.config import BASE_LOSSES, METHODS, FinetuneConfig

__all__ = ["BASE_LOSSES", "METHODS", "FinetuneConfig", "FinetuneResult", "finetune"]


def __getattr__(name: str) -> Any:
    if name in ("finetune", "FinetuneResult"):
        from llmcal.finetune import run

        return getattr(run, name)
    raise AttributeError(f"module 'llmcal.finetune' has no attribute {name!r}")
