"""``--preset``: each resolves to the spec's numbers, explicit flags override, all recorded."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tiny import tiny_task

from cli_helpers import assert_user_error, run
from llmcal.cli import build_parser
from llmcal.errors import ConfigError
from llmcal.finetune.command import config_from_args
from llmcal.finetune.config import PRESETS, FinetuneConfig, from_preset


def _config(*extra: str) -> FinetuneConfig:
    argv = ["finetune", "--model", "m", "--task", "t", "--out", "o", *extra]
    return config_from_args(build_parser().parse_args(argv))


def test_cft_paper_is_the_spec() -> None:
    """cft_rcft.md §3: "LoRA r / alpha / dropout / bias | 128 / 64 / 0.05 / none", "LoRA on all
    linear layers", "Epochs | 5", "Batch | 2 per device × 2 GPUs (torchrun) = 4", "Optimiser |
    adamw_torch_fused, warmup_ratio 0.1, cosine, … seed 42", "Max length | 2048 (train,
    E-step)"; §7.10 "Default 5e-5 (r = 128)"; §4.1 the "### Question: … ### Answer:" format;
    §7.8 the letter convention "chosen per tokenizer by where the model puts mass"."""
    c = _config("--preset", "cft-paper")
    assert (c.method, c.loss, c.weight) == ("cft", "completion", 0.0)
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_targets) == (
        128,
        64,
        0.05,
        ["all-linear"],
    )
    assert (c.epochs, c.max_steps, c.batch_size * c.grad_accum) == (5.0, None, 4)
    assert (c.learning_rate, c.warmup_ratio, c.scheduler, c.seed) == (5e-5, 0.1, "cosine", 42)
    assert (c.weight_decay, c.adam_epsilon, c.max_length) == (0.0, 1e-8, 2048)
    assert (c.template, c.letter_sep, c.preset, c.overrides) == ("cft", "auto", "cft-paper", [])


def test_rcft_presets_are_the_spec() -> None:
    """cft_rcft.md §2.2: "L_total = L_SFT2 + λ·L_ECE, λ = 1 [secondary]" with §7.3 "Full-sequence
    LM loss", §7.4 "Per-batch mean", §7.5 "Re-run the E-step every epoch"; and the [code]
    objective "L_total = (1 − α)·L_SFT + α·1e-3·L_ECE … α = 0.5", "L_SFT is the
    completion-only SFT1", "The E-step runs once before training"."""
    paper = _config("--preset", "rcft-paper")
    assert (paper.method, paper.loss, paper.ece_weighting, paper.weight) == (
        "rcft",
        "full",
        "batch",
        1.0,
    )
    assert (paper.sft_weight, paper.e_step_every, paper.lora_r) == (1.0, None, 128)
    code = _config("--preset", "rcft-code")
    assert (code.loss, code.ece_weighting, code.weight, code.sft_weight) == (
        "completion",
        "code",
        0.5,
        0.5,
    )
    assert code.e_step_every == 0  # once, before training


def test_cogcalib_paper_is_the_spec() -> None:
    """cogcalib.md §3: "LoRA | r = 8, lora_alpha = 16, dropout 0 …; targets q_proj, v_proj and
    lm_head", "Optimiser | AdamW, lr 1e-4, weight decay 0, eps 1e-6, linear schedule, 6 %
    warm-up", "Steps / batch | 5,000 steps, batch 4, max length 300", "α | LS 0.1",
    "Style adaptation | 100–200 steps", "Threshold refresh | every 500 steps or every epoch,
    whichever is first", "Seeds | 1, 2, 3"; §7.1 "A (default): the current model's
    correctness"."""
    c = _config("--preset", "cogcalib-paper")
    assert (c.method, c.gated, c.regulariser, c.weight) == ("cogcalib-ls", True, "ls", 0.1)
    assert (c.lora_r, c.lora_alpha, c.lora_dropout) == (8, 16, 0.0)
    assert c.lora_targets == ["q_proj", "v_proj", "lm_head"]
    assert (c.learning_rate, c.weight_decay, c.adam_epsilon) == (1e-4, 0.0, 1e-6)
    assert (c.scheduler, c.warmup_ratio) == ("linear", 0.06)
    assert (c.max_steps, c.batch_size, c.max_length) == (5000, 4, 300)
    assert (c.style_steps, c.refresh_every, c.refresh_max_steps) == (100, None, 500)
    assert (c.gate_reference, c.seed) == ("current", 1)


def test_flags_override_a_preset_and_are_recorded() -> None:
    c = _config(
        *["--preset", "cogcalib-paper", "--lora-r", "4", "--lr", "3e-4", "--epochs", "2"],
        *["--lora-targets", "q_proj,k_proj", "--gate-reference", "initial", "--adam-eps", "1e-7"],
        *["--scheduler", "cosine", "--warmup-ratio", "0", "--weight-decay", "0.01"],
        *["--lora-dropout", "0.1", "--refresh-max-steps", "50", "--seed", "3"],
    )
    assert (c.lora_r, c.lora_alpha, c.learning_rate) == (4, 16, 3e-4)  # α stays the preset's
    assert (c.epochs, c.max_steps) == (2.0, None)  # --epochs replaces the preset's 5,000 steps
    assert c.lora_targets == ["q_proj", "k_proj"] and c.gate_reference == "initial"
    assert (c.adam_epsilon, c.scheduler, c.warmup_ratio, c.weight_decay) == (
        1e-7,
        "cosine",
        0.0,
        0.01,
    )
    assert (c.lora_dropout, c.refresh_max_steps, c.seed) == (0.1, 50, 3)
    assert c.preset == "cogcalib-paper"
    assert set(c.overrides) == {
        "lora_r", "learning_rate", "epochs", "lora_targets", "gate_reference", "adam_epsilon",
        "scheduler", "warmup_ratio", "weight_decay", "lora_dropout", "refresh_max_steps", "seed",
    }  # fmt: skip
    rc = _config("--preset", "rcft-paper", "--ece-weighting", "code", "--e-step-every", "0")
    assert (rc.ece_weighting, rc.weight, rc.e_step_every) == ("code", 1.0, 0)  # α = λ = 1 kept
    rc = _config("--preset", "rcft-paper", "--ece-only", "--label-smoothing", "0.1")
    assert rc.ece_only and rc.sft_weight == 0.0 and rc.sft_label_smoothing == 0.1


def test_defaults_without_a_preset_are_unchanged() -> None:
    c = _config()
    assert (c.method, c.lora_r, c.lora_alpha, c.lora_targets) == (
        "sft",
        8,
        16,
        ["q_proj", "v_proj"],
    )
    assert (c.learning_rate, c.batch_size, c.epochs, c.template, c.seed) == (
        1e-4,
        8,
        1.0,
        "daca1",
        0,
    )
    assert _config("--method", "cft", "--lora-r", "16").lora_targets == ["all-linear"]
    assert _config("--lora-r", "16").lora_alpha == 32


def test_every_preset_builds_and_unknown_ones_fail() -> None:
    for name in PRESETS:
        assert from_preset(name).preset == name
    with pytest.raises(ConfigError, match="unknown preset"):
        from_preset("nope")
    with pytest.raises(SystemExit):
        _config("--preset", "nope")


needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="needs PEFT (llmcal[train])"
)


@needs_peft
def test_preset_run_records_the_resolved_config(
    capsys: pytest.CaptureFixture[str], tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "tiny.jsonl"
    data.write_text("\n".join(json.dumps(q.to_dict()) for q in tiny_task(12, "d")) + "\n")
    out = tmp_path / "adapter"
    argv = ["finetune", "--model", str(tiny_model), "--task", str(data), "--out", str(out)]
    argv += ["--preset", "rcft-code", "--max-steps", "1", "--lora-r", "4", "--device", "cpu"]
    code, _stdout, err = run(capsys, *argv, "--no-eval")
    assert code == 0, err
    record = json.loads((out / "llmcal_finetune.json").read_text())
    cfg = record["config"]
    assert cfg["preset"] == "rcft-code" and cfg["overrides"] == ["lora_r", "max_steps"]
    assert (cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (4, 64, 0.05)
    assert (cfg["ece_weighting"], cfg["resolved_weight"], cfg["resolved_sft_weight"]) == (
        "code",
        0.5,
        0.5,
    )
    assert (cfg["scheduler"], cfg["adam_epsilon"], cfg["template"]) == ("cosine", 1e-8, "cft")
    # the CFT letter variant chosen by letter mass, and that choice recorded
    masses = record["letter_mass"]
    assert set(masses) <= {"bare", "space"} and masses
    best = max(masses, key=masses.get)
    assert record["resolved_template"] == {"bare": "cft", "space": "cft-space"}[best]
    assert record["template"] == record["resolved_template"]
    assert len(record["e_step_history"]) == 1  # e_step_every = 0: once, before training


@needs_peft
def test_bad_values_are_user_errors(
    capsys: pytest.CaptureFixture[str], tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "tiny.jsonl"
    data.write_text("\n".join(json.dumps(q.to_dict()) for q in tiny_task(6, "d")) + "\n")
    argv = [
        "finetune",
        "--model",
        str(tiny_model),
        "--task",
        str(data),
        "--out",
        str(tmp_path / "o"),
    ]
    for extra, fragment in [
        (["--method", "cft", "--ece-only"], "RCFT ablation"),
        (["--lora-dropout", "1.5"], "lora-dropout"),
        (["--preset", "rcft-code", "--alpha", "2"], "α must be in [0, 1]"),
        (["--warmup-ratio", "1.5"], "warmup-ratio"),
    ]:
        code, _, err = run(capsys, *argv, *extra)
        assert_user_error(code, err, fragment)
    assert not (tmp_path / "o").exists()
