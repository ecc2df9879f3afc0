"""One optimizer step of several methods on the tiny model; writes loss and LoRA gradients.

Run alone (one process) or under torchrun (gloo on CPU). Usage:
``ddp_worker.py MODEL_DIR OUT.json BATCH,ACCUM [BATCH,ACCUM …]``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import tiny_task
from transformers import TrainerCallback

from llmcal.finetune import FinetuneConfig, finetune

METHODS = ("cogcalib-ls", "rcft", "rcft-cloze")
#: extra runs by name: the authors' RCFT objective (per-device means, cft_rcft.md §2.2);
#: cloze mode (K rows per question, full-sequence SFT on the gold rows, char-normalised)
VARIANTS: dict[str, dict[str, Any]] = {
    "rcft-code": {"method": "rcft", "base_loss": "completion", "ece_weighting": "code"},
    "rcft-cloze": {"method": "rcft", "mode": "cloze", "normalization": "char"},
    "cogcalib-ls-cloze": {"method": "cogcalib-ls", "mode": "cloze", "normalization": "sum"},
    "cft-cloze": {"method": "cft", "mode": "cloze"},
}


class GradCapture(TrainerCallback):  # type: ignore[misc]
    """LoRA gradients after accumulation and the DDP all-reduce, before the optimizer."""

    def __init__(self) -> None:
        self.grads: dict[str, list[float]] = {}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        model = kw["model"]
        self.grads = {
            n: p.grad.detach().double().flatten().tolist()
            for n, p in model.named_parameters()
            if p.requires_grad and p.grad is not None
        }


def run_layouts(
    model_dir: str,
    out_dir: Path,
    layouts: list[tuple[int, int]],
    methods: tuple[str, ...] | None = None,
    varied: bool = False,
) -> dict[str, Any]:
    """Loss, gradients, threshold and E-step of one step per method and (batch, accum).

    ``methods`` defaults to ``$DDP_METHODS`` (comma-separated) or :data:`METHODS`; ``varied``:
    options of 1–3 words (see :func:`tiny_task`)."""
    if methods is None:
        env = os.environ.get("DDP_METHODS")
        methods = tuple(env.split(",")) if env else METHODS
    train, cal = tiny_task(8, "t", 1, varied), tiny_task(12, "c", 2, varied)
    results: dict[str, Any] = {}
    rank = int(os.environ.get("RANK", "0"))
    extra: dict[str, Any] = {"max_grad_norm": 0.0, "save_strategy": "no"}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        extra["ddp_backend"] = "gloo"
    for batch, accum in layouts:
        for method in methods:
            cfg = FinetuneConfig(
                **VARIANTS.get(method, {"method": method}),
                max_steps=1,
                batch_size=batch,
                grad_accum=accum,
                learning_rate=1e-3,
                logging_steps=1,
                style_steps=0,
                refresh_every=1,  # refit t after the step: compares the updated weights too
                lora_r=4,
                lora_targets=["q_proj", "v_proj", "down_proj"],
                warmup_ratio=0.0,
            )
            cap = GradCapture()
            res = finetune(
                model_dir,
                train,
                cfg,
                out_dir / f"adapter-{rank}-{method}-{batch}-{accum}",
                cal=cal,
                progress=False,
                device="cpu",
                callbacks=[cap],
                training_args=extra,
            )
            loss = next(h["loss"] for h in res.log_history if "loss" in h)
            results[f"{method}/{batch}x{accum}"] = {
                "loss": loss,
                "grads": cap.grads,
                "threshold": res.gate_history[-1]["threshold"] if res.gate_history else None,
                "e_step": res.e_step_history,
            }
    return results


def main() -> None:
    """Command line: MODEL_DIR OUT.json BATCH,ACCUM …; rank 0 writes the JSON."""
    out = Path(sys.argv[2])
    layouts = [tuple(map(int, s.split(","))) for s in sys.argv[3:]]
    results = run_layouts(sys.argv[1], out.parent, layouts)  # type: ignore[arg-type]
    if int(os.environ.get("RANK", "0")) == 0:
        out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
