"""HTTPScorer against a real llama-cpp-python server (and its pure helpers without one)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmcal.errors import ConfigError, EndpointError
from llmcal.models.http import (
    TOPK_FLOOR,
    HTTPScorer,
    map_top_logprobs,
    normalize_endpoint,
    option_of_token,
    public_url,
)
from llmcal.scores import Scores
from llmcal.tasks import get_template, synthetic_task
from llmcal.tasks.types import Task

N_QUESTIONS = 8


# -- pure helpers ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("token", "expected"),
    [(" A", 0), ("A", 0), ("a", 0), ("(B", 1), (" c.", 2), ("ĠD", 3), ("▁B", 1), ("E", None),
     (" The", None), ("AB", None), ("", None)],
)  # fmt: skip
def test_option_of_token(token: str, expected: int | None) -> None:
    assert option_of_token(token, "ABCD") == expected


def test_map_top_logprobs_merges_case_and_space_and_fills_missing() -> None:
    top = [(" A", -1.0), ("A", -2.0), (" b", -1.5), (" The", -3.0)]
    row, missing, unseen = map_top_logprobs(top, 4)
    assert row[0] == pytest.approx(math.log(math.exp(-1.0) + math.exp(-2.0)), abs=1e-12)
    assert row[1] == -1.5
    assert row[2:] == [TOPK_FLOOR, TOPK_FLOOR]
    assert missing == [2, 3]
    assert unseen == pytest.approx(1 - sum(math.exp(v) for _, v in top), abs=1e-12)


def test_endpoint_urls_are_normalised_and_credentials_never_shown() -> None:
    assert normalize_endpoint("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_endpoint("http://h:1/v1/") == "http://h:1/v1"
    assert normalize_endpoint("https://h/openai/v1") == "https://h/openai/v1"
    assert public_url("http://user:pw@h:1/v1") == "http://h:1/v1"
    with pytest.raises(ConfigError, match="not an http"):
        normalize_endpoint("ftp://user:secret@h/v1")
    with pytest.raises(ConfigError) as err:
        normalize_endpoint("user:secret@h")
    assert "secret" not in str(err.value)


def test_missing_api_key_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMCAL_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="LLMCAL_NO_SUCH_KEY"):
        HTTPScorer("http://127.0.0.1:9/v1", "m", api_key_env="LLMCAL_NO_SUCH_KEY")


def test_unreachable_server_ends_in_a_clear_error() -> None:
    from llama_server_helpers import free_port

    scorer = HTTPScorer(
        f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=2, backoff=0.01, timeout=2
    )
    with pytest.raises(EndpointError, match=r"failed after 3 attempt\(s\).*connection error"):
        scorer.score(synthetic_task(n=2, seed=0))
    assert scorer.stats.retries["connection error"] == 2


# -- against the real server ----------------------------------------------------------------
@pytest.fixture(scope="module")
def task() -> Task:
    return synthetic_task(n=N_QUESTIONS, seed=11)


def make_scorer(url: str | list[str], key_env: str = "LLMCAL_TEST_KEY", **kw: Any) -> HTTPScorer:
    return HTTPScorer(url, "smollm2", api_key_env=key_env, progress=False, **kw)


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch, api_key: str) -> str:
    monkeypatch.setenv("LLMCAL_TEST_KEY", api_key)
    return "LLMCAL_TEST_KEY"


@pytest.fixture(scope="module")
def http_scores(llama_server: Any, api_key: str, task: Task) -> Scores:
    """The task scored once through the server (daca1, /v1/completions)."""
    import os

    os.environ["LLMCAL_TEST_KEY"] = api_key
    return make_scorer(llama_server.url).score(task)


@pytest.fixture(scope="module")
def in_process(smol_gguf: Path) -> Any:
    """llama-cpp-python's own Llama API on the same file, with the server's settings."""
    from llama_cpp import Llama
    from llama_server_helpers import N_BATCH, N_CTX, N_THREADS

    return Llama(
        str(smol_gguf),
        logits_all=True,
        n_ctx=N_CTX,
        n_batch=N_BATCH,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        verbose=False,
    )


def _reference_row(top: dict[str, float], k: int) -> list[float]:
    """The documented option mapping, written out independently of llmcal.models.http."""
    out = []
    for letter in "ABCDEFGH"[:k]:
        ps = [
            math.exp(v)
            for t, v in top.items()
            if t.replace("Ġ", " ").strip(" \t\r\n()[]{}.:,;*\"'").upper() == letter
        ]
        out.append(math.log(sum(ps)) if ps else TOPK_FLOOR)
    return out


@pytest.mark.model
def test_probe_reports_capabilities_and_refuses_cloze(
    llama_server: Any, key_env: str, task: Task
) -> None:
    scorer = make_scorer(llama_server.url, key_env)
    caps = scorer.probe(echo=True)
    assert caps.completions_logprobs and caps.topk_cap >= 5
    # llama-cpp-python's echoed prompt log-probs disagree with its own next-token log-probs
    assert caps.echo == "inconsistent", caps
    with pytest.raises(EndpointError, match="refusing cloze") as err:
        scorer.score(task.subset(2), mode="cloze")
    assert "echo" in str(err.value) and "vs next-token" in str(err.value)


@pytest.mark.model
@pytest.mark.parametrize("template", ["daca1", "chat"])
def test_letter_scores_equal_the_engine_in_process(
    llama_server: Any, key_env: str, task: Task, in_process: Any, template: str,
    http_scores: Scores,
) -> None:  # fmt: skip
    tmpl = get_template(template)
    scorer = make_scorer(llama_server.url, key_env, concurrency=3, max_blind=1.0)
    if tmpl.chat:
        task = task.subset(4)
        scores = scorer.score(task, template=tmpl)
    else:
        scorer.probe()
        scores = http_scores
    k = scorer.effective_top_k
    assert scorer.capabilities is not None and scorer.capabilities.min_tokens

    def no_eos() -> Any:  # what the server builds for min_tokens=1
        from llama_cpp import LogitsProcessorList, MinTokensLogitsProcessor

        return LogitsProcessorList([MinTokensLogitsProcessor(1, in_process.token_eos())])

    ref = []
    for q in task:
        if tmpl.chat:
            out: Any = in_process.create_chat_completion(
                tmpl.messages(q), max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=k,
                logits_processor=no_eos(),
            )  # fmt: skip
            top = {
                e["token"]: e["logprob"]
                for e in out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            }
        else:
            out = in_process.create_completion(
                tmpl.letter_prompt(q), max_tokens=1, temperature=0.0, logprobs=k,
                logits_processor=no_eos(),
            )  # fmt: skip
            top = out["choices"][0]["logprobs"]["top_logprobs"][0]
        ref.append(_reference_row(top, len(q.choices)))
    ref_arr = np.array(ref)
    diff = np.abs(scores.logits - ref_arr).max()
    print(f"{template}: max |HTTP - in-process| = {diff:.3g} over {len(task)} questions")
    assert diff <= 1e-6
    assert scores.meta["logit_kind"] == "topk_logprobs"
    assert scores.meta["api"] == ("chat" if tmpl.chat else "completions")
    truncated = scores.meta["topk"]["truncated"]
    assert set(truncated) == {q.id for q, r in zip(task, ref, strict=True) if TOPK_FLOOR in r}
    for info in truncated.values():
        assert 0.0 <= info["unseen_mass"] <= 1.0


@pytest.mark.model
def test_api_key_is_sent_and_never_written(
    llama_server: Any, key_env: str, api_key: str, task: Task, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    no_key = make_scorer(llama_server.url, key_env=None)  # type: ignore[arg-type]
    with pytest.raises(EndpointError, match=r"HTTP 401.*--api-key-env"):
        no_key.score(task.subset(1))
    monkeypatch.setenv("WRONG_KEY", "not-the-key")
    wrong = make_scorer(llama_server.url, key_env="WRONG_KEY")
    with pytest.raises(EndpointError) as err:
        wrong.score(task.subset(1))
    assert "$WRONG_KEY" in str(err.value) and "not-the-key" not in str(err.value)
    scores = make_scorer(llama_server.url, key_env).score(task.subset(1))
    path = scores.save(tmp_path / "s.parquet")
    assert api_key not in json.dumps(scores.meta)
    assert api_key.encode() not in path.read_bytes()


@pytest.mark.model
def test_http_vs_hf_agreement_is_reported(
    http_scores: Scores, task: Task, smol: Any, record_property: Any
) -> None:
    """Same GGUF, two engines: llama.cpp (quantised) vs transformers (dequantised float32)."""
    http = http_scores
    hf = smol.score(task)
    full = np.array([q.id not in http.meta["topk"]["truncated"] for q in task])
    lp_http = http.log_probs()[full]
    lp_hf = hf.log_probs()[full]
    finite = np.isfinite(lp_http)
    agree = float((http.predictions() == hf.predictions()).mean())
    corr = float(np.corrcoef(np.exp(lp_http[finite]), np.exp(lp_hf[finite]))[0, 1])
    mad = float(np.abs(lp_http[finite] - lp_hf[finite]).mean())
    figures = {"n": len(task), "n_full_topk": int(full.sum()), "argmax_agreement": agree,
               "prob_correlation": corr, "mean_abs_dlogprob": mad}  # fmt: skip
    print("HTTP (llama.cpp) vs HFScorer (transformers):", figures)
    for name, value in figures.items():
        record_property(name, value)
    # how many rows keep every letter inside the server's top-k depends on the engine's kernels
    # (3 to 5 of these 8 across llama.cpp builds); a correlation needs two
    assert full.sum() >= 2
    assert 0.0 <= agree <= 1.0 and np.isfinite(corr) and np.isfinite(mad)


@pytest.mark.model
def test_load_is_spread_over_several_endpoints(
    llama_server: Any, key_env: str, task: Task, http_scores: Scores
) -> None:
    from llama_server_helpers import FaultProxy

    part = task.subset(4)
    with FaultProxy(llama_server.port) as a, FaultProxy(llama_server.port) as b:
        spread = make_scorer([a.url, b.url], key_env, concurrency=2).score(part)
        assert a.actions["ok"] >= 2 and b.actions["ok"] >= 2  # probe + half of the questions
    assert spread.equals(http_scores.by_ids(part.ids))
    assert spread.meta["endpoints"] == [a.url, b.url]


def test_scores_meta_topk_layout_is_what_daca_reads() -> None:
    from llmcal.calibrate.daca import reference_distribution

    logits = np.array([[-0.2, -2.0, TOPK_FLOOR], [-0.1, -3.0, -2.5]])
    s = Scores(np.array(["a", "b"], dtype=object), logits, np.array([0, 1]),
               meta={"topk": {"k": 20, "floor": TOPK_FLOOR, "truncated": {"a": {"missing": [2], "unseen_mass": 0.1}}}})  # fmt: skip
    p, info = reference_distribution(s, missing="spread")
    assert info["rows_filled"] == 1 and info["options_filled"] == 1
    assert p[0, 2] == pytest.approx(1 - math.exp(-0.2) - math.exp(-2.0))


def test_cli_score_endpoint_user_errors_exit_2_without_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_server_helpers import free_port

    from cli_helpers import assert_user_error, run

    out = tmp_path / "run.parquet"
    base = ["score", "--model", "m", "--task", "synthetic", "--limit", "2", "--out", str(out)]
    code, _, err = run(capsys, *base, "--endpoint", "ftp://h/v1")
    assert_user_error(code, err, "--endpoint", "not an http(s) URL")
    monkeypatch.delenv("LLMCAL_UNSET_KEY", raising=False)
    code, _, err = run(capsys, *base, "--endpoint", "http://127.0.0.1:9/v1",
                       "--api-key-env", "LLMCAL_UNSET_KEY")  # fmt: skip
    assert_user_error(code, err, "LLMCAL_UNSET_KEY", "not set")
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = run(capsys, *base, "--endpoint", url, "--retries", "1", "--timeout", "2")
    assert_user_error(code, err, "failed after 2 attempt(s)", "connection error")
    code, _, err = run(capsys, *base, "--endpoint", url, "--permutations", "cyclic")
    assert_user_error(code, err, "--permutations")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.model
def test_cloze_client_reads_echo_like_the_engine_in_process(
    llama_server: Any, key_env: str, task: Task, in_process: Any
) -> None:
    """The cloze client path, past the probe: it must read what the engine echoes, no more.

    llama-cpp-python fails the echo probe (its numbers are shifted by one position), so this
    forces the probe's verdict to isolate the client: HTTP equals the same engine in-process.
    """
    import dataclasses

    scorer = make_scorer(llama_server.url, key_env)
    scorer.capabilities = dataclasses.replace(scorer.probe(), echo="ok")
    one = task.subset(1)
    scores = scorer.score(one, mode="cloze", normalization="sum")
    q = one[0]
    context, conts = get_template("daca1").cloze(q)
    ref = []
    for cont in conts:
        out: Any = in_process.create_completion(
            context + cont, max_tokens=1, temperature=0.0, logprobs=1, echo=True,
            logits_processor=None,
        )  # fmt: skip
        lp = out["choices"][0]["logprobs"]
        ref.append(sum(float(v) for o, v in zip(lp["text_offset"], lp["token_logprobs"], strict=False)
                       if len(context) <= o < len(context + cont)))  # fmt: skip
    assert np.abs(scores.logits[0] - np.array(ref)).max() <= 1e-6
