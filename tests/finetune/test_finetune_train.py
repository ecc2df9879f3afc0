"""Real training: LoRA steps on the bundled model, the adapter in HFScorer, DDP == 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("peft")

from llmcal.finetune import FinetuneConfig, finetune
from llmcal.finetune.run import SUMMARY_FILE, _save_adapter

HERE = Path(__file__).resolve().parent


def _mean_nll(scores: Any) -> float:
    from llmcal.metrics import nll

    return float(nll(scores.log_probs(), scores.labels, kind="log_probs"))


@pytest.mark.model
def test_lora_steps_change_the_adapter_and_reduce_the_loss(
    smol: Any, data_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from llmcal.models import HFScorer
    from llmcal.tasks import Task, load_task

    obqa = sorted(load_task("openbook_qa", data_dir=data_dir), key=lambda q: len(q.question))
    train = Task("train", obqa[:8])  # the shortest questions: cheap steps
    before = _mean_nll(smol.score(train))
    cfg = FinetuneConfig(
        method="cogcalib-ls",
        max_steps=3,
        batch_size=4,
        learning_rate=2e-3,
        style_steps=1,
        refresh_every=2,
        logging_steps=1,
        warmup_ratio=0.0,
    )
    cal = Task("cal", obqa[8:12])
    out = tmp_path / "adapter"
    result = finetune("smollm2-135m-instruct", train, cfg, out, cal=cal, progress=False)

    assert result.steps == 3 and len(result.step_seconds) == 3
    assert [g["step"] for g in result.gate_history] == [1.0, 3.0]  # t0, then a refresh
    assert all(0 <= g["cal_agreement"] <= 1 for g in result.gate_history)
    logged = [h for h in result.log_history if "loss" in h]
    assert len(logged) == 3 and all("share_known" in h and "known_acc" in h for h in logged)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no tmp / checkpoints
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in weights.items())
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["config"]["method"] == "cogcalib-ls" and summary["n_train"] == 8

    tuned = HFScorer("smollm2-135m-instruct", adapter=out, progress=False, batch_size=4)
    after = tuned.score(train)
    assert after.meta["adapter"] == str(out)
    assert _mean_nll(after) < before - 0.05


def test_failed_save_leaves_nothing_behind(tmp_path: Path) -> None:
    class Broken:
        def save_pretrained(self, path: str) -> None:
            (Path(path) / "adapter_model.safetensors").write_text("half")
            raise OSError("disk full")

    out = tmp_path / "adapter"
    with pytest.raises(OSError):
        _save_adapter(Broken(), out, {})
    assert list(tmp_path.iterdir()) == []


def _worker(model: Path, out: Path, layouts: list[str], nproc: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [sys.executable, *run, str(HERE / "ddp_worker.py"), str(model), str(out), *layouts]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def test_ddp_two_processes_equal_one_process(tiny_model: Path, tmp_path: Path) -> None:
    """Loss and LoRA gradients of one optimizer step on a global batch of 8 examples:
    1 process × batch 8, 1 process × batch 2 × 4 accumulation, 2 gloo processes × 2 × 2."""
    import numpy as np
    from ddp_worker import run_layouts

    one = run_layouts(str(tiny_model), tmp_path, [(8, 1), (2, 4)])  # in this process
    two = _worker(tiny_model, tmp_path / "two.json", ["2,2"], 2)
    for key, dist in two.items():
        method = key.split("/")[0]
        for ref in (one[f"{method}/8x1"], one[f"{method}/2x4"]):
            # the logged loss is float32 (Trainer's accumulator): 1e-6 relative
            assert dist["loss"] == pytest.approx(ref["loss"], rel=1e-6, abs=1e-6), method
            assert dist["threshold"] == pytest.approx(ref["threshold"], abs=1e-6)
            assert [e["counts"] for e in dist["e_step"]] == [e["counts"] for e in ref["e_step"]]
            assert ref["grads"].keys() == dist["grads"].keys() and ref["grads"]
            for name, g in ref["grads"].items():
                np.testing.assert_allclose(dist["grads"][name], g, rtol=0, atol=1e-6)
        assert max(max(map(abs, g)) for g in dist["grads"].values()) > 1e-3  # not trivially 0
