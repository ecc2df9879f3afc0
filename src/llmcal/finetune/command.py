"""The work behind ``llmcal finetune``: split, train, save the adapter, evaluate before / after."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llmcal._io import atomic_write_text
from llmcal.errors import ConfigError
from llmcal.finetune.config import FinetuneConfig
from llmcal.tasks.types import Task

#: The table printed after training, in this column order.
EVAL_COLUMNS = ("accuracy", "mean_confidence", "ece15", "ece10", "brier", "nll")


def check_adapter_out(path: str) -> Path:
    """``--out`` must be a new folder or an existing adapter folder (replaced when done)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {path!r} is a file; give a folder for the adapter")
    if out.is_dir() and any(out.iterdir()) and not (out / "adapter_config.json").is_file():
        raise ConfigError(
            f"--out {path!r} is a non-empty folder that is not an adapter; give a new folder"
        )
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"--out {path!r}: {parent} is not a directory")
    return out


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """FinetuneConfig from the parsed ``llmcal finetune`` arguments."""
    targets = args.lora_targets.split(",") if args.lora_targets else None
    if targets is None:
        targets = ["all-linear"] if args.method in ("cft", "rcft") else ["q_proj", "v_proj"]
    return FinetuneConfig(
        method=args.method,
        base_loss=args.loss,
        alpha=args.alpha,
        margin=args.margin,
        style_steps=args.style_steps,
        refresh_every=args.refresh_every,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_r,
        lora_targets=targets,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        epochs=args.epochs if args.epochs is not None else 1.0,
        max_steps=args.max_steps,
        max_length=args.max_length,
        balance_letters=args.balance_letters,
        seed=args.seed,
        template=args.template,
    )


def split_task(task: Task, cal: float, test: float, seed: int) -> dict[str, Task]:
    """Seeded disjoint train / cal / test splits (cal or test may be 0)."""
    if cal < 0 or test < 0 or cal + test >= 1:
        raise ConfigError(
            f"--cal-fraction {cal} and --test-fraction {test} must be >= 0 and sum to < 1"
        )
    fractions = {"train": 1.0 - cal - test}
    if cal > 0:
        fractions["cal"] = cal
    if test > 0:
        fractions["test"] = test
    parts = task.split(fractions, seed=seed)
    for name, part in parts.items():
        if len(part) == 0:
            raise ConfigError(f"the {name} split of {len(task)} questions is empty; use more data")
    return parts


def evaluate_runs(
    model: str, adapter: Path | None, tasks: dict[str, Task], template: str, device: str
) -> dict[str, dict[str, float]]:
    """Letter-mode metrics of the model (with the adapter, if any) on each task."""
    from llmcal.finetune.run import evaluation_metrics
    from llmcal.models import HFScorer

    scorer = HFScorer(model, adapter=adapter, device=device, progress=True)
    return {
        name: evaluation_metrics(scorer.score(t, template=template)) for name, t in tasks.items()
    }


def eval_table(rows: dict[str, dict[str, float]]) -> str:
    """The before / after table printed at the end."""
    from llmcal.report.tables import render

    body = [
        [name, str(int(r["n"])), *(f"{r[c]:.4f}" for c in EVAL_COLUMNS)] for name, r in rows.items()
    ]
    return render(["run", "n", *EVAL_COLUMNS], body)


def world() -> tuple[int, int]:
    """``(rank, world size)`` of a torchrun / accelerate launch (``(0, 1)`` alone)."""
    import os

    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run_finetune(args: argparse.Namespace, task: Task) -> dict[str, Any]:
    """Split ``task``, fine-tune, save the adapter to ``args.out``, evaluate; return a summary."""
    from llmcal.finetune.run import SUMMARY_FILE, finetune

    out = check_adapter_out(args.out)
    config = config_from_args(args)
    task = task.subset(args.limit, seed=args.seed)
    cal_fraction = args.cal_fraction
    if cal_fraction is None:
        cal_fraction = 0.1 if config.gated else 0.0
    if config.gated and cal_fraction <= 0:
        raise ConfigError(f"--method {config.method} needs a calibration split: --cal-fraction > 0")
    parts = split_task(task, cal_fraction, args.test_fraction, args.seed)
    rank, size = world()
    # under torchrun every process runs this; only rank 0 talks, evaluates and writes
    training_args: dict[str, Any] = {}
    if size > 1:
        from llmcal.models.hf import pick_device

        if pick_device(args.device) == "cpu":
            training_args["ddp_backend"] = "gloo"
    if rank == 0:
        print(
            f"fine-tuning {args.model} with {config.method} on {len(parts['train'])} questions"
            + (f" (cal {len(parts['cal'])})" if "cal" in parts else "")
            + (f", test {len(parts['test'])}" if "test" in parts else "")
            + (f" ({size} processes)" if size > 1 else ""),
            flush=True,
        )
    result = finetune(
        args.model,
        parts["train"],
        config,
        out,
        cal=parts.get("cal"),
        resume=args.resume,
        keep_checkpoints=args.keep_checkpoints,
        save_steps=args.save_steps,
        progress=rank == 0,
        device=args.device,
        training_args=training_args or None,
    )
    summary: dict[str, Any] = {"adapter": str(out), "steps": result.steps, "rank": rank}
    if "test" in parts and not args.no_eval and rank == 0:
        tests = {"test": parts["test"]}
        before = evaluate_runs(args.model, None, tests, config.template, args.device)["test"]
        after = evaluate_runs(args.model, out, tests, config.template, args.device)["test"]
        rows = {f"{args.model} (before)": before, f"+ {config.method} adapter": after}
        print(eval_table(rows), flush=True)
        summary["evaluation"] = {"before": before, "after": after}
        record = out / SUMMARY_FILE
        data = json.loads(record.read_text())
        data["evaluation"] = summary["evaluation"]
        atomic_write_text(record, json.dumps(data, indent=2, default=float) + "\n")
    return summary
