"""``llmcal serve`` (the calibrating proxy) in front of the real llama-cpp-python test server."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from llama_server_helpers import FaultProxy, free_port
from scipy.special import softmax

from llmcal.calibrate import TemperatureScaling, load_calibrator
from llmcal.cli import main
from llmcal.models.http import Capabilities, HTTPScorer
from llmcal.scores import Scores
from llmcal.serve import CalibratedModel, Proxy, SelectiveRule, ServerThread, create_app
from llmcal.tasks import synthetic_task
from llmcal.tasks.types import Question, Task

pytestmark = pytest.mark.model

TEMPERATURE = 1.7
THRESHOLD = 0.5
N_QUESTIONS = 6


@pytest.fixture(scope="module")
def task() -> Task:
    return synthetic_task(n=N_QUESTIONS, seed=5)


@pytest.fixture(scope="module")
def raw_scores(llama_server: Any, api_key: str, task: Task, tmp_path_factory: Any) -> Path:
    """The task scored through HTTPScorer (daca1, /v1/completions), saved like `llmcal score`."""
    os.environ["LLMCAL_TEST_KEY"] = api_key
    scorer = HTTPScorer(llama_server.url, "smollm2", api_key_env="LLMCAL_TEST_KEY", progress=False)
    path = tmp_path_factory.mktemp("serve") / "raw.parquet"
    scorer.score(task).save(path)
    return path


@pytest.fixture(scope="module")
def cal_file(raw_scores: Path) -> Path:
    """A temperature calibrator artefact with a known τ and the raw run's provenance."""
    raw = Scores.load(raw_scores)
    fit = {"n": len(raw), "n_used": len(raw), "task": raw.meta["task"], "model": "smollm2"}
    fit["template"] = "daca1"
    cal = TemperatureScaling.from_dict(
        {
            "format": "llmcal-calibrator",
            "format_version": 1,
            "kind": "temperature",
            "config": {},
            "params": {"temperature": TEMPERATURE},
            "fit": fit,
        }
    )
    path = raw_scores.parent / "cal.json"
    cal.save(path)
    return path


@pytest.fixture(scope="module")
def applied(raw_scores: Path, cal_file: Path) -> Scores:
    """`llmcal apply cal.json raw.parquet` (the CLI path the proxy must agree with)."""
    out = raw_scores.parent / "applied.parquet"
    assert main(["apply", str(cal_file), str(raw_scores), "--out", str(out)]) == 0
    return Scores.load(out)


def start_proxy(
    upstream: str, cal_file: Path, caps: Capabilities | None = None, **kw: Any
) -> ServerThread:
    """The proxy on a loopback port; ``caps``: the upstream was probed before (skip the probe)."""
    kw.setdefault("selective", SelectiveRule(THRESHOLD))
    kw.setdefault("model", "smollm2")
    proxy = Proxy(upstream, load_calibrator(cal_file), calibrator_file=cal_file, **kw)
    proxy.scorer.capabilities = caps
    return ServerThread(create_app(proxy))


@pytest.fixture(scope="module")
def caps(llama_server: Any, api_key: str) -> Capabilities:
    """What the real server supports (what the proxy's first request would probe)."""
    os.environ["LLMCAL_TEST_KEY"] = api_key
    scorer = HTTPScorer(llama_server.url, "smollm2", api_key_env="LLMCAL_TEST_KEY", progress=False)
    return scorer.probe()


@pytest.fixture(scope="module")
def proxy(llama_server: Any, cal_file: Path) -> Iterator[ServerThread]:
    with start_proxy(llama_server.url, cal_file) as server:
        yield server


def mc_body(q: Question, **extra: Any) -> dict[str, Any]:
    spec = {"id": q.id, "question": q.question, "choices": list(q.choices)}
    return {"model": "smollm2", "llmcal": spec, **extra}


def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


def test_calibrated_confidences_equal_llmcal_apply(
    proxy: ServerThread, api_key: str, task: Task, applied: Scores, raw_scores: Path
) -> None:
    raw = Scores.load(raw_scores)
    with httpx.Client(base_url=proxy.url, headers=auth(api_key), timeout=60) as client:
        for i, q in enumerate(task):
            r = client.post("/v1/completions", json=mc_body(q))
            assert r.status_code == 200, r.text
            assert api_key not in r.text
            body = r.json()
            assert body["choices"][0]["logprobs"]["top_logprobs"]  # the upstream response
            out = body["llmcal"]
            k = len(q.choices)
            np.testing.assert_allclose(out["probs"], applied.probs()[i, :k], rtol=0, atol=1e-9)
            np.testing.assert_allclose(out["raw_probs"], raw.probs()[i, :k], rtol=0, atol=1e-9)
            # and independently: softmax(z / τ) of the raw top-k row
            ref = softmax(raw.logits[i, :k] / TEMPERATURE)
            np.testing.assert_allclose(out["probs"], ref, rtol=0, atol=1e-12)
            assert out["index"] == int(np.argmax(ref)) and out["letter"] == "ABCDEFGH"[out["index"]]
            assert out["confidence"] == pytest.approx(applied.confidences()[i], abs=1e-9)
            assert out["abstain"] is (out["confidence"] < THRESHOLD)
            assert out["calibrator"]["kind"] == "temperature"
            assert out["calibrator"]["file"] == "cal.json"
            assert out["calibrator"]["params"] == {"temperature": TEMPERATURE}
            assert out["calibrator"]["fit"]["model"] == "smollm2"
            assert out["template"] == "daca1"


def test_chat_request_with_own_messages_is_forwarded_and_calibrated(
    proxy: ServerThread, api_key: str, task: Task, applied: Scores
) -> None:
    q = task[0]
    msgs = [{"role": "user", "content": "Say hello."}]
    body = mc_body(q, messages=msgs, max_tokens=3, temperature=0.0)
    r = httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=auth(api_key), timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and "message" in out["choices"][0]
    np.testing.assert_allclose(out["llmcal"]["probs"], applied.probs()[0, :4], rtol=0, atol=1e-9)


def test_plain_requests_pass_through_unchanged(
    proxy: ServerThread, llama_server: Any, api_key: str
) -> None:
    payload = {"model": "smollm2", "prompt": "The sky is", "max_tokens": 4, "temperature": 0.0}
    with httpx.Client(headers=auth(api_key), timeout=60) as client:
        via = client.post(proxy.url + "/v1/completions", json=payload).json()
        direct = client.post(llama_server.url + "/completions", json=payload).json()
        assert "llmcal" not in via
        assert via["choices"][0]["text"] == direct["choices"][0]["text"]
        models = client.get(proxy.url + "/v1/models")
        assert models.status_code == 200
        assert models.json()["data"] == client.get(llama_server.url + "/models").json()["data"]
        health = client.get(proxy.url + "/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["calibrator"]["kind"] == "temperature"
        # streaming stays streaming: server-sent events ending in [DONE]
        with client.stream(
            "POST", proxy.url + "/v1/completions", json={**payload, "stream": True}
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            events = [line for line in resp.iter_lines() if line.startswith("data:")]
        assert len(events) >= 2 and events[-1].strip() == "data: [DONE]"
        streamed = "".join(json.loads(e[5:])["choices"][0]["text"] for e in events[:-1])
        assert streamed == direct["choices"][0]["text"]


def test_bad_client_requests_are_422_with_a_clear_message(
    proxy: ServerThread, api_key: str, task: Task
) -> None:
    q = task[0]
    cases = [
        ({"question": q.question}, "--freeform-calibrator"),  # free-form: no calibrator here
        ({"question": q.question, "choices": ["only one"]}, "at least 2"),
        ({"question": q.question, "choices": [f"o{i}" for i in range(27)]}, "at most 26"),
        ({"question": q.question, "choices": ["a", "b"], "template": "nope"}, "unknown template"),
        ({"question": q.question, "choices": ["a", "b"], "template": "fewshot"}, "few-shot"),
        ({"question": "", "choices": ["a", "b"]}, "question"),
        ({"question": "q", "choices": ["a", 3]}, "list of strings"),
        ({"question": "q", "choices": ["a", "b"], "colour": 1}, "unknown field"),
        ("not an object", "must be an object"),
    ]
    with httpx.Client(base_url=proxy.url, headers=auth(api_key), timeout=30) as client:
        for spec, words in cases:
            r = client.post("/v1/completions", json={"model": "smollm2", "llmcal": spec})
            assert r.status_code == 422, (spec, r.text)
            assert words in r.json()["error"]["message"], (spec, r.text)
        r = client.post("/v1/completions", json=mc_body(q, stream=True))
        assert r.status_code == 422 and "stream" in r.json()["error"]["message"]


def test_upstream_faults_become_502_or_504_without_the_key(
    llama_server: Any, cal_file: Path, api_key: str, task: Task, caps: Capabilities
) -> None:
    body = mc_body(task[0])
    fast = {"retries": 1, "timeout": 1.0, "deadline": 10.0}

    def post(server: ServerThread, path: str = "/v1/completions", **kw: Any) -> httpx.Response:
        kw.setdefault("json", body)
        return httpx.post(server.url + path, headers=auth(api_key), timeout=30, **kw)

    def check(r: httpx.Response, status: int, words: str) -> None:
        assert r.status_code == status, r.text
        assert api_key not in r.text and "Bearer" not in r.text
        err = r.json()["error"]
        assert words in err["message"] and err["code"] == status, err

    # down: nothing listens on the port
    with start_proxy(f"http://127.0.0.1:{free_port()}/v1", cal_file, **fast) as server:
        check(post(server), 502, "connection error")
        plain = {"model": "smollm2", "prompt": "x", "max_tokens": 1}
        check(post(server, json=plain), 502, "connection error")
        check(httpx.get(server.url + "/v1/models", timeout=30), 502, "unreachable")
        assert httpx.get(server.url + "/health", timeout=30).status_code == 503
    # each kind of fault on every request (the upstream was probed before)
    for action, status, words in [
        ("500", 502, "HTTP 500"),
        ("garbage", 502, "unreadable response body"),
        ("nochoices", 502, "malformed reply"),
        ("stall", 504, "did not answer in time"),
    ]:
        with (
            FaultProxy(llama_server.port, first=[action] * 6, stall=3.0) as fp,
            start_proxy(fp.url, cal_file, caps, **fast) as server,
        ):
            check(post(server), status, words)
            assert fp.actions[action] >= 1
    # a wrong key is the upstream's 401, scrubbed
    with start_proxy(llama_server.url, cal_file) as server:
        r = httpx.post(
            server.url + "/v1/completions", json=body, timeout=30,
            headers={"Authorization": "Bearer sk-wrong-0123456789"},
        )  # fmt: skip
        assert r.status_code == 401 and "sk-wrong-0123456789" not in r.text, r.text


def test_bounded_load_loses_nothing_and_matches_sequential_answers(
    proxy: ServerThread, api_key: str, task: Task, applied: Scores
) -> None:
    n_clients, n_requests = 8, 64
    jobs = [i % len(task) for i in range(n_requests)]

    async def run() -> list[tuple[int, int, dict[str, Any]]]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for j in range(n_requests):
            queue.put_nowait(j)
        results: list[tuple[int, int, dict[str, Any]]] = []

        async def client_loop(client: httpx.AsyncClient) -> None:
            while not queue.empty():
                j = queue.get_nowait()
                r = await client.post("/v1/completions", json=mc_body(task[jobs[j]]))
                results.append((j, r.status_code, r.json()))

        async with httpx.AsyncClient(
            base_url=proxy.url, headers=auth(api_key), timeout=120
        ) as client:
            await asyncio.wait_for(
                asyncio.gather(*(client_loop(client) for _ in range(n_clients))), timeout=300
            )
        return results

    start = time.perf_counter()
    results = asyncio.run(run())
    print(f"{n_requests} requests, {n_clients} clients: {time.perf_counter() - start:.1f}s")
    assert sorted(j for j, _, _ in results) == list(range(n_requests))
    for j, status, body in results:
        assert status == 200, body
        i = jobs[j]
        k = len(task[i].choices)
        np.testing.assert_allclose(body["llmcal"]["probs"], applied.probs()[i, :k], atol=1e-9)


def test_calibrated_model_over_http_equals_llmcal_apply(
    llama_server: Any, api_key: str, task: Task, cal_file: Path, applied: Scores
) -> None:
    os.environ["LLMCAL_TEST_KEY"] = api_key
    scorer = HTTPScorer(llama_server.url, "smollm2", api_key_env="LLMCAL_TEST_KEY", progress=False)
    model = CalibratedModel(scorer, cal_file, selective={"params": {"threshold": THRESHOLD}})
    answers = model.ask_many(list(task))
    one = model.ask(task[1].question, task[1].choices)
    for i, a in enumerate(answers):
        np.testing.assert_allclose(a.probs, applied.probs()[i, :4], rtol=0, atol=1e-9)
        assert a.abstain is (a.confidence < THRESHOLD)
    np.testing.assert_allclose(one.probs, answers[1].probs, rtol=0, atol=1e-9)
