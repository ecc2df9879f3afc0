"""A tiny random Llama with a real tokenizer, and tiny tasks: for the fine-tuning tests."""

from __future__ import annotations

from pathlib import Path

from llmcal.tasks.types import Question, Task


def make_tiny_model(target: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer random-weight LlamaForCausalLM (seeded) saved with a real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(target))
    tok.save_pretrained(str(target))
    return target


def tiny_task(n: int, prefix: str = "q", seed: int = 0, varied: bool = False) -> Task:
    """``n`` short labelled 3- and 4-option questions of varied length (``varied``: the options
    too, 1–3 words, for the cloze tests)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "rock", "sea", "sky"]
    qs = []
    for i in range(n):
        q = " ".join(rng.choice(words, size=2 + i % 5))
        choices = tuple(
            " ".join(rng.choice(words, size=1 + (i + j) % 3 if varied else 1)) + f" {j}"
            for j in range(4 if i % 3 else 3)
        )
        qs.append(Question(f"{prefix}{i}", f"Which {q}?", choices, int(rng.integers(len(choices)))))
    return Task(f"tiny-{prefix}", qs)


def logged_loss(model: Path, out: Path, train: Task, **settings: object) -> float:
    """The logged training loss of one step (batch 8, LoRA r = 4) from the initial weights."""
    from llmcal.finetune import FinetuneConfig, finetune

    values: dict[str, object] = {"max_steps": 1, "batch_size": 8, "learning_rate": 1e-3,
                                 "logging_steps": 1, "lora_r": 4, "warmup_ratio": 0.0}  # fmt: skip
    cfg = FinetuneConfig(**{**values, **settings})  # type: ignore[arg-type]
    res = finetune(str(model), train, cfg, out / "adapter", progress=False, device="cpu",
                   training_args={"save_strategy": "no"})  # fmt: skip
    return float(next(h["loss"] for h in res.log_history if "loss" in h))
