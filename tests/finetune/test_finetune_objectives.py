"""RCFT's objectives on the tiny model against a hand computation; the code mode under DDP.

cft_rcft.md §2.2 [code]: ``L_total = (1 − α)·L_SFT + α·1e-3·L_ECE`` with α = 0.5, where
``L_ECE = Σ_m (1/n_m) Σ_{i∈B, m(i)=m} [(c_i − acc_m)² + Σ_j (q_ij − t_ij)²]`` and n_m are the
whole-training-set bin counts; the paper version is L_SFT + λ·L_ECE (λ = 1); the ECE-only
ablation has no SFT term (§6.3). The hand computation below uses plain Python floats on
per-question forward passes of the unpadded sequences, independent of the trainer's batching.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiny import logged_loss, tiny_task

pytest.importorskip("peft")

from llmcal.finetune import FinetuneConfig

HERE = Path(__file__).resolve().parent


def _targets(sorted_p: list[float], acc: float) -> list[float]:
    """The spec's rank-preserving targets for one question, K from the question."""
    k = len(sorted_p)
    if acc == 1.0:
        return [1.0] + [0.0] * (k - 1)
    q = sorted_p[1:]
    gamma = math.log(k - 1) / ((1 - acc) * q[0])
    h = [math.tanh(gamma * v) for v in q]
    return [acc] + [(1 - acc) * (1 + x) / (sum(h) + k - 1) for x in h]


@pytest.fixture(scope="module")
def hand(tiny_model: Path) -> dict[str, Any]:
    """Per-question SFT losses, errors and bins computed by hand on the initial model."""
    import torch

    from llmcal.finetune.data import letter_format
    from llmcal.models.hf import HFScorer
    from llmcal.tasks.templates import get_template

    train = tiny_task(8, "t", seed=1)
    scorer = HFScorer(str(tiny_model), device="cpu", progress=False)
    tmpl = get_template("daca1")
    ids = letter_format(scorer, train, tmpl).option_ids
    rows = []
    for q in train:
        prompt = scorer.encode(scorer.render_letter(q, tmpl), False)
        seq = [*prompt, ids[q.answer]]
        with torch.no_grad():
            logits = scorer.model(input_ids=torch.tensor([seq])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        full = [-float(logp[t, seq[t + 1]]) for t in range(len(seq) - 1)]
        z = [float(logits[len(prompt) - 1, ids[j]]) for j in range(len(q.choices))]
        e = [math.exp(v - max(z)) for v in z]
        p = [v / sum(e) for v in e]
        rows.append(
            {"completion": full[-1], "full": full, "p": p, "correct": p.index(max(p)) == q.answer}
        )
    counts = [0] * 10
    hits = [0] * 10
    for r in rows:
        r["bin"] = min(9, int(max(r["p"]) * 10))  # [0, .1) → 0, …, [.9, 1] → 9
        counts[r["bin"]] += 1
        hits[r["bin"]] += r["correct"]
    for r in rows:
        acc = hits[r["bin"]] / counts[r["bin"]]
        q = sorted(r["p"], reverse=True)
        r["err"] = sum((a - b) ** 2 for a, b in zip(q, _targets(q, acc), strict=True))
        r["n_m"] = counts[r["bin"]]
    return {"train": train, "rows": rows}


def test_rcft_losses_match_the_hand_computation(
    tiny_model: Path, tmp_path: Path, hand: dict[str, Any]
) -> None:
    rows, train = hand["rows"], hand["train"]
    n = len(rows)
    sft_completion = sum(r["completion"] for r in rows) / n
    tokens = [t for r in rows for t in r["full"]]
    sft_full = sum(tokens) / len(tokens)
    ece_code = sum(r["err"] / r["n_m"] for r in rows)  # Σ_{i∈B} err_i / n_m(i)
    ece_mean = sum(r["err"] for r in rows) / n
    assert 1e-3 < ece_mean < 2.0 and sft_full > 1.0  # non-trivial terms

    want = {
        # the authors' objective: (1 − α)·L_SFT1 + α·1e-3·L_ECE, α = 0.5 by default
        "code": (
            {"base_loss": "completion", "ece_weighting": "code"},
            0.5 * sft_completion + 0.5e-3 * ece_code,
        ),
        "code-a0.2": (
            {"base_loss": "completion", "ece_weighting": "code", "alpha": 0.2},
            0.8 * sft_completion + 0.2e-3 * ece_code,
        ),
        # the paper's: L_SFT2 + λ·mean err, λ = 1
        "batch": ({}, sft_full + ece_mean),
        "batch-l3": ({"alpha": 3.0}, sft_full + 3.0 * ece_mean),
        # the ECE-only ablation in both weightings
        "ece-only": ({"ece_only": True}, ece_mean),
        "ece-only-code": ({"ece_only": True, "ece_weighting": "code"}, 0.5e-3 * ece_code),
    }
    for name, (settings, value) in want.items():
        got = logged_loss(tiny_model, tmp_path / name, train, method="rcft", **settings)
        assert got == pytest.approx(value, rel=2e-6), name


def test_config_weights_and_validation() -> None:
    from llmcal.errors import ConfigError

    code = FinetuneConfig(method="rcft", ece_weighting="code")
    assert (code.weight, code.sft_weight) == (0.5, 0.5)
    assert FinetuneConfig(method="rcft", ece_weighting="code", alpha=1.0).sft_weight == 0.0
    assert (FinetuneConfig(method="rcft").weight, FinetuneConfig(method="rcft").sft_weight) == (
        1,
        1,
    )
    assert FinetuneConfig(method="rcft", ece_only=True).sft_weight == 0.0
    with pytest.raises(ConfigError, match="RCFT ablation"):
        FinetuneConfig(method="cft", ece_only=True)
    with pytest.raises(ConfigError, match="must be in \\[0, 1\\]"):
        FinetuneConfig(method="rcft", ece_weighting="code", alpha=2.0)


def test_code_mode_averages_per_device_under_ddp(tiny_model: Path, tmp_path: Path) -> None:
    """The authors' loss is a per-device (per micro-batch) mean: 2 gloo processes × batch 2 ×
    2 accumulation equals 1 process × batch 2 × 4 accumulation (both average 4 micro-batch
    losses), while 1 × batch 8 sums the ECE term over all 8 questions: 4× its share."""
    import json

    import numpy as np
    from ddp_worker import run_layouts

    one = run_layouts(str(tiny_model), tmp_path, [(2, 4), (8, 1)], methods=("rcft-code",))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DDP_METHODS": "rcft-code",
    }
    out = tmp_path / "two.json"
    run = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [sys.executable, *run, str(HERE / "ddp_worker.py"), str(tiny_model), str(out), "2,2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(out.read_text())["rcft-code/2x2"]
    ref = one["rcft-code/2x4"]
    assert two["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert ref["grads"].keys() == two["grads"].keys() and ref["grads"]
    for name, g in ref["grads"].items():
        np.testing.assert_allclose(two["grads"][name], g, rtol=0, atol=1e-6)
    # one batch of 8: same SFT mean, the ECE sum not divided by the 4 micro-batches
    big = one["rcft-code/8x1"]
    assert big["loss"] > ref["loss"]
