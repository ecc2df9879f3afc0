"""Fault tolerance and resumable runs against a real llama-cpp-python server.

Faults come from a loopback proxy (500s, stalls past the timeout, dropped connections, a server
that stays down) or from the server itself (restarted mid-run; the scoring process SIGKILLed).
Every run must end with the same Scores as a clean run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from llama_server_helpers import FaultProxy

from llmcal.models.checkpoint import CheckpointedScorer, checkpoint_path
from llmcal.models.http import HTTPScorer
from llmcal.scores import Scores
from llmcal.tasks import synthetic_task
from llmcal.tasks.types import Task

pytestmark = pytest.mark.model

CLI_ARGS = ["--model", "smollm2", "--api-key-env", "LLMCAL_TEST_KEY", "--task", "synthetic",
            "--limit", "8", "--chunk-size", "1", "--concurrency", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def task() -> Task:
    return synthetic_task(n=8, seed=5)


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch, api_key: str) -> str:
    monkeypatch.setenv("LLMCAL_TEST_KEY", api_key)
    return "LLMCAL_TEST_KEY"


@pytest.fixture(scope="module")
def clean(llama_server: Any, api_key: str, task: Task) -> Scores:
    os.environ["LLMCAL_TEST_KEY"] = api_key
    scorer = HTTPScorer(llama_server.url, "smollm2", api_key_env="LLMCAL_TEST_KEY", progress=False)
    return scorer.score(task)


def scorer_for(url: str, key_env: str, **kw: Any) -> HTTPScorer:
    opts: dict[str, Any] = {"concurrency": 4, "timeout": 1.0, "max_retries": 10,
                            "backoff": 0.05, "backoff_max": 0.5, "seed": 0, "progress": False}  # fmt: skip
    opts.update(kw)
    return HTTPScorer(url, "smollm2", api_key_env=key_env, **opts)


def test_random_500s_stalls_and_drops_give_the_clean_scores(
    llama_server: Any, key_env: str, task: Task, clean: Scores
) -> None:
    first = ["stall", "500", "drop"]  # each kind at least once, then at random
    with FaultProxy(llama_server.port, p500=0.2, pdrop=0.1, stall=6.0, seed=1, first=first) as px:
        scorer = scorer_for(px.url, key_env, concurrency=2, timeout=5.0)
        scores = scorer.score(task)
    assert scores.equals(clean)
    assert px.actions["500"] and px.actions["drop"] and px.actions["stall"], px.actions
    retries = scorer.stats.retries
    assert retries["HTTP 500"] >= 1 and retries["timeout"] >= 1
    assert retries["connection error"] + retries["unreadable response body"] >= 1
    print(f"faults injected {dict(px.actions)}; client: {scorer.stats.summary()}")


def test_server_restart_mid_run_gives_the_clean_scores(
    llama_server: Any, key_env: str, task: Task, clean: Scores
) -> None:
    scorer = scorer_for(llama_server.url, key_env, concurrency=2, timeout=10.0, max_retries=60,
                        backoff=0.1, backoff_max=1.0, deadline=90.0)  # fmt: skip
    scorer.probe()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["scores"] = scorer.score(task)
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while scorer.stats.requests < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    llama_server.kill()  # mid-run: requests in flight fail, new ones are refused
    time.sleep(0.5)
    llama_server.start()
    worker.join(120)
    assert not worker.is_alive()
    assert "error" not in result, result.get("error")
    assert result["scores"].equals(clean)
    assert scorer.stats.retries["connection error"] >= 1, scorer.stats.summary()


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmcal.cli", "score", *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def same_run(a: Scores, b: Scores, *ignore: str) -> bool:
    """Same rows and same meta, except wall time and start time (two runs, two starts)."""
    strip = ("seconds", "created", *ignore)
    return a.equals(b) and {k: v for k, v in a.meta.items() if k not in strip} == {
        k: v for k, v in b.meta.items() if k not in strip
    }


@pytest.fixture(scope="module")
def cli_clean(llama_server: Any, api_key: str, tmp_path_factory: pytest.TempPathFactory) -> Scores:
    os.environ["LLMCAL_TEST_KEY"] = api_key
    out = tmp_path_factory.mktemp("cli") / "clean.parquet"
    proc = run_cli("--endpoint", llama_server.url, *CLI_ARGS, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "server: completions logprobs: yes" in proc.stdout
    assert "requests: " in proc.stdout and "retries" in proc.stdout
    assert not checkpoint_path(out).exists()
    return Scores.load(out)


def test_sigkill_at_five_random_points_then_resume_equals_clean_run(
    llama_server: Any, key_env: str, cli_clean: Scores, tmp_path: Path
) -> None:
    out = tmp_path / "killed.parquet"
    ckpt = checkpoint_path(out)
    rng = random.Random(20240607)
    n_chunks = 8
    cmd = [sys.executable, "-m", "llmcal.cli", "score", "--endpoint", llama_server.url, *CLI_ARGS,
           "--out", str(out)]  # fmt: skip
    kills = 0
    for _ in range(5):
        done_before = _chunks(ckpt)
        target = min(n_chunks - 1, done_before + rng.randint(0, 1))
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 60
        while _chunks(ckpt) < target and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(30)
        assert not out.exists() or proc.returncode == 0
    assert kills >= 3  # most kills must land mid-run for the test to mean anything
    final = run_cli("--endpoint", llama_server.url, *CLI_ARGS, "--out", str(out))
    assert final.returncode == 0, final.stderr
    resumed = Scores.load(out)
    assert same_run(resumed, cli_clean)
    assert not ckpt.exists()


def _chunks(ckpt: Path) -> int:
    try:
        return max(0, len(ckpt.read_bytes().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def test_server_that_stays_down_keeps_partial_results_and_resumes(
    llama_server: Any, key_env: str, cli_clean: Scores, tmp_path: Path
) -> None:
    out = tmp_path / "down.parquet"
    with FaultProxy(llama_server.port) as px:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmcal.cli", "score", "--endpoint", px.url, *CLI_ARGS,
             "--retries", "2", "--timeout", "2", "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        end = time.monotonic() + 60
        while _chunks(checkpoint_path(out)) < 2 and time.monotonic() < end:
            time.sleep(0.01)
        px.down = True
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("llmcal: error: ") and "Traceback" not in stderr
    assert "failed after 3 attempt(s)" in lines[-1] and "rerun the same command" in lines[-1]
    assert "kept in" in lines[-1]
    assert not out.exists()
    kept = _chunks(checkpoint_path(out))
    assert 2 <= kept < 8
    again = run_cli("--endpoint", llama_server.url, *CLI_ARGS, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert f"{kept} resumed" in again.stdout
    resumed = Scores.load(out)
    # the endpoint list is the first chunk's: here the proxy the run started with
    assert resumed.meta["endpoints"] == [px.url]
    assert same_run(resumed, cli_clean, "endpoints")


def test_changed_settings_with_the_same_output_are_refused(
    llama_server: Any, key_env: str, task: Task, tmp_path: Path
) -> None:
    out = tmp_path / "r.parquet"
    first = CheckpointedScorer(scorer_for(llama_server.url, key_env), out, chunk_size=2)
    partial = task.subset(4)
    first.score(partial)
    assert checkpoint_path(out).exists()  # not discarded until the caller saved the Scores
    other = CheckpointedScorer(scorer_for(llama_server.url, key_env, top_k=5), out, chunk_size=2)
    with pytest.raises(Exception, match=r"other settings.*refusing to mix") as err:
        other.score(partial)
    assert "top_k" in str(err.value) and "--restart" in str(err.value)
    with pytest.raises(Exception, match="other settings"):
        first.score(partial, template="daca2")
    header = json.loads(checkpoint_path(out).read_text().splitlines()[0])
    assert "LLMCAL_TEST_KEY" not in json.dumps(header) and "Bearer" not in json.dumps(header)
