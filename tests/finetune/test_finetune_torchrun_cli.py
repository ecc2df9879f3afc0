"""`torchrun -m llmcal finetune …` on CPU (two gloo processes) equals one process on the same
global batch: one adapter, written once by rank 0. Also `python -m llmcal`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from tiny import tiny_task

from llmcal.finetune.run import SUMMARY_FILE

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}  # fmt: skip


def test_python_dash_m_llmcal_runs_the_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmcal", "--help"], env=_env(), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and "finetune" in proc.stdout


def _launched_equals_one_process(launch: list[str], tiny_model: Path, tmp_path: Path) -> None:
    """Fine-tune once alone (batch 4) and once under ``launch`` (2 processes × batch 2): the
    launched run writes one adapter, once (rank 0), equal to the one-process adapter."""
    from safetensors.torch import load_file

    task = tmp_path / "train.jsonl"
    task.write_text("".join(json.dumps(q.to_dict()) + "\n" for q in tiny_task(8)))
    common = ["finetune", "--model", str(tiny_model), "--task", str(task), "--method", "ls",
              "--max-steps", "2", "--lr", "1e-2", "--device", "cpu", "--no-eval",
              "--cal-fraction", "0", "--test-fraction", "0"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    solo = subprocess.run(
        [sys.executable, "-m", "llmcal", *common, "--batch-size", "4", "--out", str(one)],
        env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert solo.returncode == 0, solo.stderr[-3000:]
    dist = subprocess.run(
        [*launch, "-m", "llmcal", *common, "--batch-size", "2", "--out", str(two)],
        env=_env(), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert "(2 processes)" in dist.stdout and dist.stdout.count("wrote ") == 1  # rank 0 only
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".two")) == []
    a = load_file(str(one / "adapter_model.safetensors"))
    b = load_file(str(two / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    moved = 0.0
    for key in a:
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=0, atol=1e-5)
        if "lora_B" in key:
            moved = max(moved, float(a[key].abs().max()))
    assert moved > 1e-4  # two steps really trained the adapter
    assert json.loads((two / SUMMARY_FILE).read_text())["steps"] == 2


def test_torchrun_finetune_equals_one_process(tiny_model: Path, tmp_path: Path) -> None:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _launched_equals_one_process(launch, tiny_model, tmp_path)


def test_accelerate_launch_finetune_equals_one_process(tiny_model: Path, tmp_path: Path) -> None:
    """`accelerate launch --multi_gpu --num_processes 2 -m llmcal finetune … --device cpu`, the
    Trainer users' launcher: two gloo processes (accelerate starts them through
    torch.distributed.run; on CPUs `--cpu` would start one, or several only through mpirun)."""
    import shutil
    import socket

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate is not None, "accelerate (a transformers Trainer dependency) is missing"
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(port)]  # fmt: skip
    _launched_equals_one_process(launch, tiny_model, tmp_path)
