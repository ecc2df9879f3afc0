"""Free-form answers through the real llama.cpp server: generation, the LLM judge, P(True), CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli_helpers import run
from llmcal.answers import Answers
from llmcal.confidence import ptrue
from llmcal.judge import JUDGE_PROMPT, LLMJudge, judge_answers
from llmcal.models.generate import GenerationConfig, HTTPGenerator, generate_answers
from llmcal.models.http import HTTPScorer
from llmcal.scores import Scores
from llmcal.tasks import synthetic_open_task

pytestmark = pytest.mark.model


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch, api_key: str) -> str:
    monkeypatch.setenv("LLMCAL_TEST_KEY", api_key)
    return "LLMCAL_TEST_KEY"


def test_generate_judge_and_ptrue_through_the_server(
    llama_server: Any, key_env: str, api_key: str
) -> None:
    task = synthetic_open_task(n=4, seed=0)
    gen = HTTPGenerator(llama_server.url, "smollm2", api_key_env=key_env, progress=False)
    cfg = GenerationConfig(max_new_tokens=8, samples=1, sample_temperature=1.0)
    answers, counts = generate_answers(gen, task, cfg, progress=False)
    assert counts["generated"] == 4 and answers.meta["backend"] == "http"
    assert all("\n" not in t for t in answers.texts)
    assert all(v <= 0 for lps in answers.token_logprobs for v in lps)
    # the server returns no log-probs only for an answer it ended at once (EOS first)
    assert all(lps or not t for t, lps in zip(answers.texts, answers.token_logprobs, strict=True))
    assert all(len(s) == 1 for s in answers.samples)
    assert set(answers.stop_reasons) <= {"stop", "length"}
    again, _ = generate_answers(gen, task, cfg, progress=False)
    assert again.texts == answers.texts  # greedy is deterministic

    judged = LLMJudge(llama_server.url, "smollm2", api_key_env=key_env).judge(answers)
    assert set(judged.correct.tolist()) <= {-1, 0, 1}
    info = judged.meta["judge"]
    assert info["kind"] == "llm" and info["prompt"] == JUDGE_PROMPT and info["model"] == "smollm2"
    assert info["undecided"] == int((judged.correct < 0).sum())
    assert api_key not in json.dumps(judged.meta)

    labelled = judge_answers(answers, "numeric")
    scorer = HTTPScorer(llama_server.url, "smollm2", api_key_env=key_env, progress=False)
    scores = ptrue(scorer, labelled)
    assert scores.view == "answer" and scores.k == 2 and np.isfinite(scores.logits).all()
    assert scores.meta["backend"] == "http" and scores.labels.tolist() == labelled.correct.tolist()


def test_cli_generate_and_confidence_through_the_server(
    llama_server: Any, key_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ans = tmp_path / "answers.parquet"
    code, out, err = run(
        capsys, "generate", "--model", "smollm2", "--endpoint", llama_server.url,
        "--api-key-env", key_env, "--task", "synthetic-open", "--limit", "4",
        "--max-new-tokens", "6", "--matcher", "numeric", "--out", str(ans),
    )  # fmt: skip
    assert code == 0, err
    assert "generated 4 answers" in out and "judged 4 of 4 answers (matcher: numeric)" in out
    conf = tmp_path / "ptrue.parquet"
    code, out, err = run(
        capsys, "confidence", str(ans), "--method", "ptrue", "--model", "smollm2",
        "--endpoint", llama_server.url, "--api-key-env", key_env, "--out", str(conf),
    )  # fmt: skip
    assert code == 0, err
    scores = Scores.load(conf)
    assert scores.view == "answer" and len(scores) == 4
    assert Answers.load(ans).meta["endpoints"] == [llama_server.url]
