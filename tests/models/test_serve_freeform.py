"""``llmcal serve`` with free-form answers: calibrated P(True) through the real llama.cpp server.

The reference path is the CLI a user would run on the same questions: ``llmcal generate
--endpoint`` → ``llmcal confidence --method ptrue --endpoint`` → ``llmcal apply``. The proxy
must give the same answer text, the same raw P(True) and the same calibrated confidence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from scipy.special import expit

from cli_helpers import assert_user_error, run, temperature_artefact
from llmcal.answers import Answers
from llmcal.calibrate import TemperatureScaling, load_calibrator
from llmcal.confidence import one_answer, ptrue
from llmcal.errors import ConfigError
from llmcal.models.http import HTTPScorer
from llmcal.scores import Scores
from llmcal.serve import CalibratedModel, Proxy, SelectiveRule, ServerThread, create_app
from llmcal.tasks import save_open_jsonl, synthetic_open_task
from llmcal.tasks.openended import OpenTask

pytestmark = pytest.mark.model

TAU = 1.6
THRESHOLD = 0.5


def calibrator(view: str, tau: float = TAU) -> TemperatureScaling:
    """A temperature calibrator artefact with a known τ fitted (on paper) on ``view`` Scores."""
    return temperature_artefact(tau, n=10, n_used=10, model="smollm2", view=view)


@pytest.fixture(scope="module")
def open_task() -> OpenTask:
    return synthetic_open_task(n=4, seed=3)


@pytest.fixture(scope="module")
def key_env(api_key: str) -> str:
    os.environ["LLMCAL_TEST_KEY"] = api_key
    return "LLMCAL_TEST_KEY"


@pytest.fixture(scope="module")
def cli_path(
    llama_server: Any, key_env: str, open_task: OpenTask, tmp_path_factory: Any
) -> dict[str, Any]:
    """generate → confidence ptrue → apply through the CLI, as a user would."""
    from llmcal.cli import main

    tmp = tmp_path_factory.mktemp("serve-free")
    data = save_open_jsonl(open_task, tmp / "open.jsonl")
    ans, raw, applied = tmp / "answers.parquet", tmp / "ptrue.parquet", tmp / "applied.parquet"
    cal = calibrator("answer").save(tmp / "ptrue-cal.json")
    endpoint = ["--endpoint", llama_server.url, "--api-key-env", key_env, "--model", "smollm2"]
    assert main(["generate", "--task", str(data), *endpoint, "--out", str(ans)]) == 0
    assert main(["confidence", str(ans), "--method", "ptrue", *endpoint, "--out", str(raw)]) == 0
    assert main(["apply", str(cal), str(raw), "--out", str(applied)]) == 0
    return {
        "answers": Answers.load(ans),
        "raw": Scores.load(raw),
        "applied": Scores.load(applied),
        "cal": cal,
        "dir": tmp,
    }


def start(upstream: str, **kw: Any) -> ServerThread:
    kw.setdefault("model", "smollm2")
    return ServerThread(create_app(Proxy(upstream, **kw)))


@pytest.fixture(scope="module")
def proxy(llama_server: Any, cli_path: dict[str, Any]) -> Iterator[ServerThread]:
    """A proxy with both calibrators: τ = 1 for multiple choice, the P(True) one for free-form."""
    with start(
        llama_server.url,
        calibrator=calibrator("options", 1.0),
        freeform_calibrator=load_calibrator(cli_path["cal"]),
        freeform_calibrator_file=cli_path["cal"],
        freeform_selective=SelectiveRule(THRESHOLD),
    ) as server:
        yield server


def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def test_free_form_confidence_equals_generate_confidence_apply(
    proxy: ServerThread, api_key: str, open_task: OpenTask, cli_path: dict[str, Any]
) -> None:
    answers, raw, applied = cli_path["answers"], cli_path["raw"], cli_path["applied"]
    assert list(raw.ids) == list(applied.ids) == list(answers.ids)
    assert any(answers.texts)  # a real answer among them, not only empty replies
    row = {qid: j for j, qid in enumerate(answers.ids)}
    with httpx.Client(base_url=proxy.url, headers=auth(api_key), timeout=60) as client:
        for q in open_task:
            i = row[q.id]
            spec = {"id": q.id, "question": q.question}
            r = client.post("/v1/completions", json={"model": "smollm2", "llmcal": spec})
            assert r.status_code == 200, r.text
            assert api_key not in r.text
            body = r.json()
            assert "text" in body["choices"][0]  # the upstream's generation response
            out = body["llmcal"]
            assert out["kind"] == "free-form" and out["method"] == "ptrue"
            assert out["answer"] == answers.texts[i]
            assert out["answer_source"] == "llmcal prompt"
            assert out["raw_confidence"] == pytest.approx(raw.confidences()[i], abs=1e-9)
            assert out["confidence"] == pytest.approx(applied.confidences()[i], abs=1e-9)
            lf, lt = raw.logits[i]  # independently: sigmoid((z_true − z_false) / τ)
            assert out["confidence"] == pytest.approx(float(expit((lt - lf) / TAU)), abs=1e-12)
            assert out["abstain"] is (out["confidence"] < THRESHOLD)
            assert out["threshold"] == THRESHOLD and out["selective"]["threshold"] == THRESHOLD
            assert out["calibrator"]["file"] == "ptrue-cal.json"
            assert out["calibrator"]["fit"]["model"] == "smollm2"
            # the client's own answer: only the P(True) follow-up, the same numbers
            spec["answer"] = answers.texts[i]
            r = client.post("/v1/completions", json={"model": "smollm2", "llmcal": spec})
            again = r.json()["llmcal"]
            assert again["answer_source"] == "client"
            assert again["confidence"] == pytest.approx(out["confidence"], abs=1e-12)
            assert "logprobs" in r.json()["choices"][0]  # the P(True) scoring response


def test_chat_request_with_own_messages_judges_the_reply(
    proxy: ServerThread, api_key: str, key_env: str, llama_server: Any, open_task: OpenTask
) -> None:
    q = open_task[0]
    msgs = [{"role": "user", "content": f"{q.question} Answer in a few words."}]
    body = {"model": "smollm2", "messages": msgs, "max_tokens": 6, "temperature": 0.0}
    r = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={**body, "llmcal": {"question": q.question}},
        headers=auth(api_key),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    reply = out["choices"][0]["message"]["content"]
    assert out["object"] == "chat.completion"
    assert out["llmcal"]["answer"] == reply.strip()
    assert out["llmcal"]["answer_source"] == "client prompt"
    scorer = HTTPScorer(llama_server.url, "smollm2", api_key_env=key_env, progress=False)
    ref = ptrue(scorer, one_answer("request", q.question, reply.strip()))
    assert out["llmcal"]["raw_confidence"] == pytest.approx(ref.confidences()[0], abs=1e-9)


def test_one_proxy_serves_both_kinds_and_says_so(
    proxy: ServerThread, api_key: str, open_task: OpenTask
) -> None:
    with httpx.Client(base_url=proxy.url, headers=auth(api_key), timeout=60) as client:
        mc = {"question": "2 + 2 = ?", "choices": ["3", "4", "5"]}
        out = client.post("/v1/completions", json={"llmcal": mc}).json()["llmcal"]
        assert len(out["probs"]) == 3 and out["calibrator"]["kind"] == "temperature"
        health = client.get("/health").json()
        assert health["freeform"]["confidence"] == "ptrue"
        assert health["freeform"]["calibrator"]["file"] == "ptrue-cal.json"
        assert health["freeform"]["selective"]["threshold"] == THRESHOLD


def test_bad_free_form_requests_are_422(
    proxy: ServerThread, llama_server: Any, api_key: str, cli_path: dict[str, Any]
) -> None:
    cases = [
        ({"question": "q", "answer": 3}, "must be a string"),
        ({"question": "q", "template": "daca1"}, "multiple-choice requests"),
        ({"question": ""}, "question"),
        ({"question": "q", "colour": 1}, "unknown field"),
    ]
    with httpx.Client(base_url=proxy.url, headers=auth(api_key), timeout=30) as client:
        for spec, words in cases:
            r = client.post("/v1/completions", json={"llmcal": spec})
            assert r.status_code == 422 and words in r.json()["error"]["message"], (spec, r.text)
        both = {"prompt": "Q: hi\nA:", "llmcal": {"question": "hi", "answer": "hello"}}
        r = client.post("/v1/completions", json=both)
        assert r.status_code == 422 and "already have" in r.json()["error"]["message"]
        r = client.post("/v1/completions", json={"stream": True, "llmcal": {"question": "q"}})
        assert r.status_code == 422 and "stream" in r.json()["error"]["message"]
    # a proxy with one kind of calibrator refuses the other kind of request, saying how to fix it
    with start(llama_server.url, calibrator=calibrator("options")) as mc_only:
        r = httpx.post(
            mc_only.url + "/v1/completions", json={"llmcal": {"question": "q"}}, timeout=30
        )
        assert r.status_code == 422 and "--freeform-calibrator" in r.text
    with start(llama_server.url, calibrator=None, freeform_calibrator=calibrator("answer")) as ff:
        spec = {"question": "q", "choices": ["a", "b"]}
        r = httpx.post(ff.url + "/v1/completions", json={"llmcal": spec}, timeout=30)
        assert r.status_code == 422 and "free-form answers only" in r.text


def test_calibrators_of_the_wrong_view_are_refused_at_start(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="P\\(True\\) Scores of free-form"):
        Proxy("http://127.0.0.1:9/v1", calibrator("answer"))
    with pytest.raises(ConfigError, match="multiple-choice option Scores"):
        Proxy("http://127.0.0.1:9/v1", None, freeform_calibrator=calibrator("options"))
    with pytest.raises(ConfigError, match="--freeform-calibrator"):
        Proxy("http://127.0.0.1:9/v1", None)
    mc = calibrator("options").save(tmp_path / "mc.json")
    free = calibrator("answer").save(tmp_path / "free.json")
    up = ["serve", "--upstream", "http://127.0.0.1:9/v1"]
    code, _, err = run(capsys, *up)
    assert_user_error(code, err, "--calibrator", "--freeform-calibrator")
    code, _, err = run(capsys, *up, "--freeform-calibrator", str(mc))
    assert_user_error(code, err, "--freeform-calibrator", "mc.json", "multiple-choice")
    code, _, err = run(capsys, *up, "--calibrator", str(free))
    assert_user_error(code, err, "--freeform-calibrator")
    code, _, err = run(capsys, *up, "--freeform-calibrator", str(free), "--selective", "s.json")
    assert_user_error(code, err, "--freeform-selective")


def test_calibrated_model_ask_open_over_http_equals_the_cli(
    llama_server: Any, key_env: str, open_task: OpenTask, cli_path: dict[str, Any]
) -> None:
    scorer = HTTPScorer(llama_server.url, "smollm2", api_key_env=key_env, progress=False)
    model = CalibratedModel(scorer, cli_path["cal"], selective=THRESHOLD)
    answers, applied = cli_path["answers"], cli_path["applied"]
    row = {qid: j for j, qid in enumerate(answers.ids)}
    for q in open_task:
        i = row[q.id]
        got = model.ask_open(q.question, answers.texts[i])
        assert got.confidence == pytest.approx(applied.confidences()[i], abs=1e-9)
        assert got.abstain is (got.confidence < THRESHOLD)
        assert json.loads(json.dumps(got.to_dict()))["kind"] == "free-form"
    with pytest.raises(ConfigError, match="pass the answer"):
        model.ask_open(open_task[0].question)
    with pytest.raises(ConfigError, match="ask_open"):
        model.ask(open_task[0].question, ["a", "b"])
    assert np.isfinite(applied.logits).all()
