"""``finetune()``: LoRA fine-tuning of a scorer's model with an llmcal objective, end to end.

Loads the model through :class:`HFScorer` (bundled alias, GGUF, directory or hub id), encodes
the data with the scorer's own prompt rendering and option tokens, attaches a PEFT LoRA adapter,
trains with :class:`CalibrationTrainer` (resumable from its Trainer checkpoints) and writes the
adapter atomically: to a temporary folder first, renamed into place only when complete.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcal.errors import ConfigError
from llmcal.finetune.config import FinetuneConfig
from llmcal.tasks.templates import get_template
from llmcal.tasks.types import Task

SUMMARY_FILE = "llmcal_finetune.json"


@dataclass
class FinetuneResult:
    """What a run produced: the adapter folder and its training record."""

    adapter_dir: Path
    config: FinetuneConfig
    steps: int
    train_seconds: float
    step_seconds: list[float]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[dict[str, float]] = field(default_factory=list)
    gate_history: list[dict[str, float]] = field(default_factory=list)
    e_step_history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, list[float]] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    #: the template trained with (the CFT letter variant resolved), and the letter masses
    template: str = ""
    letter_mass: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (also written to the adapter folder)."""
        return {
            "config": self.config.to_dict(),
            "steps": self.steps,
            "train_seconds": self.train_seconds,
            "step_seconds": self.step_seconds,
            "schedule": self.schedule,
            "resolved_template": self.template,
            "letter_mass": self.letter_mass,
            "log_history": self.log_history,
            "diagnostics": self.diagnostics,
            "gate_history": self.gate_history,
            "e_step_history": self.e_step_history,
            "timings": self.timings,
        }


def checkpoint_dir_for(out: Path) -> Path:
    """Where the Trainer checkpoints of a run writing ``out`` go (beside it, hidden)."""
    return out.parent / f".{out.name}.checkpoints"


def check_lora_targets(model: Any, targets: list[str]) -> None:
    """Every LoRA target names a module of ``model`` the way PEFT matches it (the full name or
    its last dotted parts); PEFT itself fails only when none matches, and then with a traceback."""
    if targets == ["all-linear"]:
        return
    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        import torch

        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)})  # fmt: skip
        raise ConfigError(
            f"--lora-targets: {', '.join(missing)} matches no module of this model; its linear "
            f"layers are {', '.join(linear)} (or use all-linear)"
        )


def _lora_config(cfg: FinetuneConfig) -> Any:
    from peft import LoraConfig

    targets: Any = cfg.lora_targets
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def finetune(
    model: str,
    train: Task,
    config: FinetuneConfig,
    out: str | Path,
    *,
    cal: Task | None = None,
    resume: bool = False,
    keep_checkpoints: bool = False,
    save_steps: int = 50,
    progress: bool = True,
    ref_known: dict[str, bool] | None = None,
    device: str = "auto",
    scorer: Any = None,
    callbacks: Sequence[Any] = (),
    training_args: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``train`` with ``config`` and save the LoRA adapter to ``out``.

    ``cal`` is the held-out split CogCalib fits its threshold on (required for the cogcalib
    methods). ``resume`` continues from the last checkpoint in :func:`checkpoint_dir_for`.
    ``ref_known`` tags training questions known/unknown for the per-group diagnostics.
    ``scorer``: an already loaded HFScorer of the *base* model to reuse (its model is wrapped).
    ``callbacks`` are added after llmcal's own; ``training_args`` override TrainingArguments.
    """
    try:
        import peft  # noqa: F401
    except ImportError as exc:
        raise ConfigError("fine-tuning needs PEFT: pip install 'llmcal[train]'") from exc
    import torch
    from peft import get_peft_model
    from transformers import TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from llmcal.finetune.data import (
        ClozeCollator,
        ClozeFormat,
        LetterCollator,
        balance_letters,
        cloze_layout,
        encode_cloze_task,
        encode_task,
        letter_format,
        resolve_letter_template,
    )
    from llmcal.finetune.trainer import (
        CalibrationTrainer,
        CogCalibCallback,
        EStepCallback,
        ListDataset,
        StepProgress,
        StepTimer,
    )
    from llmcal.models.hf import HFScorer, quiet_peft
    from llmcal.progress import style as progress_style

    out = Path(out)
    if config.gated and (cal is None or len(cal) == 0):
        raise ConfigError(f"method {config.method!r} needs a calibration split (cal=...)")
    if len(train) == 0:
        raise ConfigError("the training split is empty")
    if cal is not None and set(cal.ids) & set(train.ids):
        raise ConfigError("the calibration split must be disjoint from the training split")
    template = get_template(config.template)
    if template.shots:
        raise ConfigError("fine-tuning uses zero-shot templates (e.g. daca1 or chat)")
    if scorer is None:
        scorer = HFScorer(model, device=device, progress=False)
    check_lora_targets(scorer.model, config.lora_targets)
    if config.balance_letters:
        train = balance_letters(train, config.seed)
    all_q = Task(train.name, [*train, *(cal or [])])
    pad_id = int(scorer.tokenizer.pad_token_id)
    masses: dict[str, float] = {}
    option_ids: list[int] | None = None
    if config.mode == "cloze":
        cfmt = ClozeFormat(template, config.normalization, all_q.max_choices)
        train_ds = ListDataset(encode_cloze_task(scorer, train, cfmt, config.max_length, ref_known))
        cal_ds = (
            ListDataset(encode_cloze_task(scorer, cal, cfmt, config.max_length, what="cal"))
            if cal
            else None
        )
        every = train_ds.examples + (cal_ds.examples if cal_ds else [])
        layout = cloze_layout(scorer.model, every, config.cloze_layout)
        collator: Any = ClozeCollator(pad_id, cfmt.k, layout)
    else:
        template, masses = resolve_letter_template(scorer, all_q, template, config.letter_sep)
        fmt = letter_format(scorer, all_q, template)
        train_ds = ListDataset(encode_task(scorer, train, fmt, config.max_length, ref_known))
        cal_ds = (
            ListDataset(encode_task(scorer, cal, fmt, config.max_length, what="cal"))
            if cal
            else None
        )
        collator = LetterCollator(pad_id, fmt.k)
        option_ids = list(fmt.option_ids)

    set_seed(config.seed)
    base = scorer.model
    if getattr(scorer, "load_in", None) is not None:  # adapters on a quantised base (QLoRA)
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base)
    with quiet_peft():
        peft_model = get_peft_model(base, _lora_config(config))
    ckpt = checkpoint_dir_for(out)
    plain = progress and progress_style() == "plain"  # no terminal: lines, not a tqdm bar
    arg_values: dict[str, Any] = dict(
        output_dir=str(ckpt),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        adam_epsilon=config.adam_epsilon,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.scheduler,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=1,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        remove_unused_columns=False,
        disable_tqdm=not progress or plain,
        dataloader_num_workers=0,
        use_cpu=scorer.device == "cpu",
        ddp_find_unused_parameters=False,
    )
    arg_values.update(training_args or {})
    args = TrainingArguments(**arg_values)
    trainer = CalibrationTrainer(
        model=peft_model,
        args=args,
        train_dataset=train_ds,
        data_collator=collator,
        ft_config=config,
        option_ids=option_ids,
        k=all_q.max_choices,
        cal_dataset=cal_ds,
    )
    trainer.show_progress = progress
    trainer.add_callback(StepTimer(trainer))
    if plain:
        trainer.add_callback(StepProgress(f"training {model} ({config.method})"))
    if config.gated:
        trainer.add_callback(
            CogCalibCallback(
                trainer, config.style_steps, config.refresh_every, config.refresh_max_steps
            )
        )
    if config.regulariser == "ece":
        trainer.add_callback(EStepCallback(trainer, config.e_step_every))
    for cb in callbacks:
        trainer.add_callback(cb)

    last = get_last_checkpoint(str(ckpt)) if resume and ckpt.is_dir() else None
    output = trainer.train(resume_from_checkpoint=last)
    result = FinetuneResult(
        adapter_dir=out,
        config=config,
        steps=int(trainer.state.global_step),
        train_seconds=float(output.metrics.get("train_runtime", math.nan)),
        step_seconds=list(trainer.timings["step"]),
        log_history=list(trainer.state.log_history),
        diagnostics=list(trainer.diagnostics),
        gate_history=list(trainer.gate_history),
        e_step_history=list(trainer.e_step_history),
        timings={k: list(v) for k, v in trainer.timings.items()},
        schedule=dict(trainer.schedule),
        template=template.name,
        letter_mass=masses,
    )
    if trainer.is_world_process_zero():
        meta = {
            **result.to_dict(),
            "model": model,
            "loading": dict(getattr(scorer, "loading_options", {})),
            "train_task": train.name,
            "n_train": len(train),
            "n_cal": 0 if cal is None else len(cal),
            "option_ids": option_ids,
            "template": template.name,
            "mode": config.mode,
            "normalization": config.normalization if config.mode == "cloze" else None,
            "resumed_from": last,
        }
        _save_adapter(peft_model, out, meta)
        if not keep_checkpoints:
            shutil.rmtree(ckpt, ignore_errors=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return result


def _save_adapter(peft_model: Any, out: Path, meta: dict[str, Any]) -> None:
    """save_pretrained into a temporary sibling folder, then rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the adapter is an ordinary output folder
    try:
        peft_model.save_pretrained(str(tmp))
        (tmp / SUMMARY_FILE).write_text(json.dumps(meta, indent=2, default=float) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def evaluation_metrics(scores: Any) -> dict[str, float]:
    """Accuracy, ECE (15 and 10 equal-width bins), Brier, NLL and mean confidence of Scores."""
    import numpy as np

    from llmcal.metrics import brier, ece, nll

    conf = scores.confidences()
    correct = scores.correct().astype(np.float64)
    return {
        "n": float(len(scores)),
        "accuracy": float(correct.mean()),
        "mean_confidence": float(conf.mean()),
        "ece15": float(ece(conf, correct, 15)),
        "ece10": float(ece(conf, correct, 10)),
        "brier": float(brier(np.exp(scores.log_probs()), scores.labels)),
        "nll": float(nll(scores.log_probs(), scores.labels, kind="log_probs")),
    }
