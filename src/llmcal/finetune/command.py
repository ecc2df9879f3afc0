"""The work behind ``llmcal finetune``: split, train, save the adapter, evaluate before / after."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmcal._cliutil import hf_loading, resolve_limit
from llmcal._io import atomic_write_text, check_writable_dir, loads_json
from llmcal.errors import ConfigError
from llmcal.finetune.config import FinetuneConfig, from_preset
from llmcal.tasks.types import Task

if TYPE_CHECKING:
    from llmcal.models.base import Mode, Normalization

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
    check_writable_dir(out if out.is_dir() else parent, f"--out {path!r}")
    return out


#: ``llmcal finetune`` argument → FinetuneConfig field, for every option a preset can set.
ARG_FIELDS: dict[str, str] = {
    "method": "method",
    "loss": "base_loss",
    "alpha": "alpha",
    "margin": "margin",
    "style_steps": "style_steps",
    "refresh_every": "refresh_every",
    "refresh_max_steps": "refresh_max_steps",
    "gate_reference": "gate_reference",
    "ece_weighting": "ece_weighting",
    "e_step_every": "e_step_every",
    "ece_only": "ece_only",
    "label_smoothing": "sft_label_smoothing",
    "lora_r": "lora_r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "lora_targets": "lora_targets",
    "lr": "learning_rate",
    "weight_decay": "weight_decay",
    "adam_eps": "adam_epsilon",
    "warmup_ratio": "warmup_ratio",
    "scheduler": "scheduler",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "max_length": "max_length",
    "balance_letters": "balance_letters",
    "seed": "seed",
    "template": "template",
    "letter_sep": "letter_sep",
    "mode": "mode",
    "normalization": "normalization",
}


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """FinetuneConfig from the parsed ``llmcal finetune`` arguments.

    Options left unset take the ``--preset`` value, else the FinetuneConfig default; without
    a preset, LoRA α defaults to 2 × r and the targets to all-linear for cft / rcft (q_proj,
    v_proj otherwise). The preset and the explicitly set fields are recorded in the config.
    """
    explicit: dict[str, Any] = {}
    for arg, name in ARG_FIELDS.items():
        value = getattr(args, arg, None)
        if value is None:
            continue
        if arg == "lora_targets":
            value = [t.strip() for t in value.split(",") if t.strip()]
            if not value:
                raise ConfigError("--lora-targets needs at least one module name")
        explicit[name] = value
    cloze = explicit.get("mode") == "cloze"
    if "normalization" in explicit and not cloze:
        raise ConfigError("--normalization applies to cloze mode: add --mode cloze")
    if "letter_sep" in explicit and cloze:
        raise ConfigError(
            "--letter-sep picks the answer-letter token: leave it out with --mode cloze"
        )
    preset = getattr(args, "preset", None)
    values = dict(explicit)
    if preset is None:
        method = values.get("method", "sft")
        derived: dict[str, Any] = {}
        if "lora_alpha" not in values:
            derived["lora_alpha"] = 2 * values.get("lora_r", FinetuneConfig.lora_r)
        if "lora_targets" not in values:
            derived["lora_targets"] = (
                ["all-linear"] if method in ("cft", "rcft") else ["q_proj", "v_proj"]
            )
        cfg = from_preset(None, **values, **derived)
        cfg.overrides = sorted(explicit)
        return cfg
    return from_preset(preset, **values)


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
    model: str,
    adapter: Path | None,
    tasks: dict[str, Task],
    template: str,
    device: str,
    loading: dict[str, Any] | None = None,
    mode: Mode = "letter",
    normalization: Normalization = "mean",
) -> dict[str, dict[str, float]]:
    """Metrics of the model (with the adapter, if any) on each task, scored in ``mode`` (the
    mode it was trained in)."""
    from llmcal.finetune.run import evaluation_metrics
    from llmcal.models import HFScorer
    from llmcal.progress import progress

    scorer = HFScorer(model, adapter=adapter, device=device, progress=True, **(loading or {}))
    who = f"{model} + adapter" if adapter is not None else model
    rows = {}
    for name, t in tasks.items():
        with progress(len(t), f"evaluating {who} on the {name} split"):
            scores = scorer.score(t, template=template, mode=mode, normalization=normalization)
            rows[name] = evaluation_metrics(scores)
    return rows


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
    from llmcal.progress import note

    out = check_adapter_out(args.out)
    config = config_from_args(args)
    eval_limit = getattr(args, "eval_limit", None)
    task = task.subset(resolve_limit(args.limit, len(task)), seed=config.seed)
    cal_fraction = args.cal_fraction
    if cal_fraction is None:
        cal_fraction = 0.1 if config.gated else 0.0
    if config.gated and cal_fraction <= 0:
        raise ConfigError(f"--method {config.method} needs a calibration split: --cal-fraction > 0")
    parts = split_task(task, cal_fraction, args.test_fraction, config.seed)
    from llmcal.tasks.templates import get_template

    if get_template(config.template).shots:  # before the model loads
        raise ConfigError("fine-tuning uses zero-shot templates (e.g. daca1 or chat)")
    rank, size = world()
    loading = hf_loading(args)
    if size > 1 and loading["device_map"] is not None:
        raise ConfigError(
            "--device-map spreads one model over several devices, but under torchrun / "
            "accelerate every process holds a whole copy: leave --device-map out"
        )
    # under torchrun every process runs this; only rank 0 talks, evaluates and writes
    training_args: dict[str, Any] = {}
    if size > 1:
        from llmcal.models.hf import pick_device

        if pick_device(args.device) == "cpu":
            training_args["ddp_backend"] = "gloo"
    if args.no_eval or "test" not in parts:
        plan = "; no before / after evaluation"
    else:
        n_eval = len(parts["test"]) if eval_limit is None else min(eval_limit, len(parts["test"]))
        plan = (
            f"; then a before / after evaluation on {n_eval} test questions (two scoring passes; "
            "size them with --eval-limit N, skip them with --no-eval)"
        )
    if rank == 0:
        print(
            f"fine-tuning {args.model} with {config.method} on {len(parts['train'])} questions"
            + (f" (cal {len(parts['cal'])})" if "cal" in parts else "")
            + (f", test {len(parts['test'])}" if "test" in parts else "")
            + (f" ({size} processes)" if size > 1 else "")
            + plan,
            flush=True,
        )
    from llmcal.models import HFScorer

    # loaded here (not inside finetune) so that the loading flags apply: revision, attention,
    # device map, hub token, 8/4-bit (then adapters train on the quantised base, QLoRA-style)
    scorer = HFScorer(args.model, device=args.device, progress=False, **loading)
    knowledge = None
    if getattr(args, "report_knowledge", False):
        from llmcal.finetune.knowledge import knowledge_labels

        knowledge = knowledge_labels(
            scorer,
            parts["train"],
            n_prompts=args.knowledge_prompts,
            shots=args.knowledge_shots,
            seed=config.seed,
        )
        if rank == 0:
            print(knowledge.summary_line(), flush=True)
    result = finetune(
        args.model,
        parts["train"],
        config,
        out,
        scorer=scorer,
        ref_known=None if knowledge is None else knowledge.known(),
        cal=parts.get("cal"),
        resume=args.resume,
        keep_checkpoints=args.keep_checkpoints,
        save_steps=args.save_steps,
        progress=rank == 0,
        device=args.device,
        training_args=training_args or None,
    )
    summary: dict[str, Any] = {"adapter": str(out), "steps": result.steps, "rank": rank}
    extra: dict[str, Any] = {}
    if knowledge is not None:
        summary["knowledge"] = extra["knowledge"] = knowledge.to_dict()
    if "test" in parts and not args.no_eval and rank == 0:
        test = parts["test"]
        if eval_limit is not None and eval_limit < len(test):
            test = test.subset(eval_limit, seed=config.seed)
        tests = {"test": test}
        note(f"training done ({result.steps} steps); evaluating on {len(test)} test questions")
        template = result.template or config.template
        before, after = (
            evaluate_runs(
                args.model, adapter, tests, template, args.device, loading,
                mode=config.mode, normalization=config.normalization,
            )["test"]
            for adapter in (None, out)
        )  # fmt: skip
        rows = {f"{args.model} (before)": before, f"+ {config.method} adapter": after}
        print(eval_table(rows), flush=True)
        summary["evaluation"] = extra["evaluation"] = {"before": before, "after": after}
    if extra and rank == 0:
        record = out / SUMMARY_FILE
        data = loads_json(record.read_text())
        data.update(extra)
        atomic_write_text(record, json.dumps(data, indent=2, default=float) + "\n")
    return summary
