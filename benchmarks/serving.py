"""Latency and throughput of ``llmcal serve`` against calling the upstream server directly.

Starts ``python -m llama_cpp.server --logits_all true`` (1 thread) with the bundled
SmolLM2-135M-Instruct GGUF and ``llmcal serve`` in front of it (a subprocess, temperature
calibrator, selective threshold), both on loopback ports. For each concurrency (1, 4, 16 clients,
each sending its next request when the last is answered) it sends the same multiple-choice
questions three ways:

* ``direct``: the letter-scoring request (daca1 prompt, ``max_tokens=1``, top-20 log-probs) to
  the upstream's ``/v1/completions``;
* ``proxy pass-through``: that same request through the proxy (no ``llmcal`` field);
* ``proxy calibrated``: ``{"llmcal": {"question", "choices"}}`` to the proxy, which renders the
  same prompt, makes the same upstream call, calibrates and decides abstention.

Reports per-request latency p50 / p99 and requests/s per way and concurrency; the added latency
is the proxy's p50 / p99 minus the direct one at the same concurrency. Every calibrated answer is
checked against the calibrator applied to the direct response.
Writes benchmarks/results/serving.{json,md}.

``--freeform``: free-form answers on the model at one client, three ways per open-ended
question: ``direct generation`` (the ``llmcal generate`` prompt, greedy, 24 tokens), ``direct
generation + P(True)`` (that, then the P(True) scoring request, sequentially, as a client would
do it by hand) and ``proxy free-form`` (``{"llmcal": {"question"}}``: the proxy does both and
calibrates). Every proxy P(True) is checked against ``llmcal.confidence.ptrue`` on the same
answer through the upstream. Writes benchmarks/results/serving_freeform.{json,md}.

Usage: python benchmarks/serving.py [--n 16] [--concurrency 1 4 16] | --freeform [--n 8]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests" / "models"))

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from typing import Any

import httpx
import numpy as np
from llama_server_helpers import N_THREADS, LlamaServer, free_port

from common import DATA_DIR, md_table, write_results
from llmcal.calibrate import TemperatureScaling
from llmcal.models.bundled import resolve_bundled
from llmcal.models.http import map_top_logprobs
from llmcal.tasks import get_template, load_task

TEMPERATURE = 1.5
THRESHOLD = 0.5
WAYS = ("direct", "proxy pass-through", "proxy calibrated")


def main() -> None:
    """Run every way at every concurrency, on the model and on the replay upstream."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=8, help="model requests per run (at least clients)")
    ap.add_argument("--replay-n", type=int, default=400, help="replay requests per run")
    ap.add_argument("--task", default="mmlu")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--replay-server", nargs=2, metavar=("FILE", "PORT"), help=argparse.SUPPRESS)
    ap.add_argument("--freeform", action="store_true", help="free-form answers (P(True)) only")
    args = ap.parse_args()
    if args.replay_server:
        _replay_server(Path(args.replay_server[0]), int(args.replay_server[1]))
        return
    if args.freeform:
        _freeform(args.n)
        return
    n_max = max(args.n, *args.concurrency)
    task = load_task(args.task, data_dir=DATA_DIR).subset(n_max, seed=0)
    tmpl = get_template("daca1")
    gguf, tmp = _setup({"model": "smollm2", "template": "daca1"}, "cal.json")
    (tmp / "sel.json").write_text(
        f'{{"kind": "selective", "params": {{"threshold": {THRESHOLD}}}}}'
    )
    server = LlamaServer(gguf, tmp / "server.log")
    server.start()
    try:
        runs, reference = _ways(server.url, tmp, task, tmpl, args.concurrency, args.n, "model")
    finally:
        server.stop()
    # the same responses replayed by an upstream that answers at once: the proxy's own cost
    recorded = {tmpl.letter_prompt(q): body for q, body in zip(task, reference, strict=True)}
    (tmp / "recorded.json").write_text(json.dumps(recorded))
    port = free_port()
    replay = subprocess.Popen(
        [sys.executable, __file__, "--replay-server", str(tmp / "recorded.json"), str(port)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        _wait(f"http://127.0.0.1:{port}/v1/models")
        replayed, _ = _ways(
            f"http://127.0.0.1:{port}/v1", tmp, task, tmpl, args.concurrency, args.replay_n,
            "replay", reference,
        )  # fmt: skip
    finally:
        replay.terminate()
        replay.wait(20)
    runs += replayed
    md = _markdown(args, task, runs)
    write_results(
        "serving",
        {"task": args.task, "n_questions": len(task), "server_threads": N_THREADS,
         "temperature": TEMPERATURE, "threshold": THRESHOLD, "runs": runs},
        md,
    )  # fmt: skip


def _setup(fit: dict[str, Any], name: str) -> tuple[Path, Path]:
    """The bundled GGUF and a fresh folder holding a τ = TEMPERATURE calibrator as ``name``."""
    gguf = resolve_bundled("smollm2-135m-instruct")
    assert gguf is not None
    tmp = Path(tempfile.mkdtemp())
    cal = TemperatureScaling.from_dict(
        {"format": "llmcal-calibrator", "format_version": 1, "kind": "temperature", "config": {},
         "params": {"temperature": TEMPERATURE}, "fit": fit}
    )  # fmt: skip
    cal.save(tmp / name)
    return gguf, tmp


def _ways(
    upstream: str,
    tmp: Path,
    task: Any,
    tmpl: Any,
    concurrency: list[int],
    n: int,
    label: str,
    reference: list[Any] | None = None,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Each way at each concurrency against ``upstream``, with ``llmcal serve`` in front of it."""
    port = free_port()
    proxy_log = open(tmp / f"proxy-{label}.log", "wb")  # noqa: SIM115 (closed below)
    proxy = subprocess.Popen(
        [sys.executable, "-m", "llmcal.cli", "serve", "--upstream", upstream, "--calibrator",
         str(tmp / "cal.json"), "--selective", str(tmp / "sel.json"), "--model", "smollm2",
         "--port", str(port), "--timeout", "300", "--retries", "0"],
        stdout=subprocess.DEVNULL, stderr=proxy_log,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    proxy_url = f"http://127.0.0.1:{port}"
    direct = [
        {"model": "smollm2", "prompt": tmpl.letter_prompt(q), "max_tokens": 1,
         "temperature": 0.0, "logprobs": 20, "min_tokens": 1}
        for q in task
    ]  # fmt: skip
    mc = [
        {"model": "smollm2", "llmcal": {"question": q.question, "choices": list(q.choices)}}
        for q in task
    ]
    runs: list[dict[str, Any]] = []
    ref = list(reference) if reference is not None else []
    try:
        _wait(proxy_url + "/health")
        for conc in concurrency:
            count = max(n, conc)
            pick = [i % len(task) for i in range(count)]
            for way in WAYS:
                url = (
                    upstream + "/completions" if way == "direct" else proxy_url + "/v1/completions"
                )
                bodies = [(mc if way == "proxy calibrated" else direct)[i] for i in pick]
                r = asyncio.run(_load(url, bodies, conc))
                answers = r.pop("bodies")
                if way == "direct":  # the first direct answer to each prompt is the reference
                    ref += [None] * (len(task) - len(ref))
                    for i, body in zip(pick, answers, strict=True):
                        ref[i] = body if ref[i] is None else ref[i]
                if way == "proxy calibrated":
                    r["answers_match_direct"] = _check(
                        answers, [ref[i] for i in pick], [task[i] for i in pick]
                    )
                runs.append({"upstream": label, "concurrency": conc, "way": way, **r})
                print({k: v for k, v in runs[-1].items() if k != "latencies_ms"}, flush=True)
    finally:
        proxy.terminate()
        proxy.wait(20)
        proxy_log.close()
    return runs, ref


def _replay_server(path: Path, port: int) -> None:
    """An OpenAI-compatible upstream that answers each prompt with its recorded response."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    recorded: dict[str, Any] = json.loads(path.read_text())
    first = next(iter(recorded.values()))

    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse(recorded.get(body.get("prompt"), first))

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "smollm2", "object": "model"}]})

    app = Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _wait(url: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s")


async def _load(url: str, bodies: list[dict[str, Any]], conc: int) -> dict[str, Any]:
    """``conc`` clients share the requests; each sends its next one when the last is answered."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    latencies: list[float] = [0.0] * len(bodies)
    out: list[Any] = [None] * len(bodies)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            r = await client.post(url, json=bodies[i])
            r.raise_for_status()
            out[i] = r.json()
            latencies[i] = time.perf_counter() - t0

    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:
        await client.post(url, json=bodies[0])  # warm-up (connection, proxy probe)
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(conc)))
        seconds = time.perf_counter() - start
    return {**_summary(latencies, seconds), "bodies": out}


def _summary(latencies: list[float], seconds: float) -> dict[str, Any]:
    """Requests, wall seconds, requests/s and the p50 / p99 latency (ms) of one run."""
    ms = sorted(1000 * x for x in latencies)
    return {
        "requests": len(ms),
        "seconds": seconds,
        "requests_per_s": len(ms) / seconds,
        "p50_ms": statistics.median(ms),
        "p99_ms": float(np.percentile(ms, 99)),
        "latencies_ms": ms,
    }


def _check(bodies: list[Any], reference: list[Any], task: Any) -> bool:
    """Each calibrated answer equals softmax(row / τ) of the direct response's top-20."""
    for body, ref, q in zip(bodies, reference, task, strict=True):
        top = list(ref["choices"][0]["logprobs"]["top_logprobs"][0].items())
        row, _, _ = map_top_logprobs(top, len(q.choices))
        z = np.array(row) / TEMPERATURE
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        if not np.allclose(body["llmcal"]["probs"], p, rtol=0, atol=1e-9):
            return False
    return True


def _table(runs: list[dict[str, Any]]) -> str:
    by = {(r["concurrency"], r["way"]): r for r in runs}
    rows = []
    for r in runs:
        d = by[(r["concurrency"], "direct")]
        added = (
            "–"
            if r["way"] == "direct"
            else f"{r['p50_ms'] - d['p50_ms']:+.1f} / {r['p99_ms'] - d['p99_ms']:+.1f}"
        )
        m = r.get("answers_match_direct")
        match = "–" if m is None else ("yes" if m else "NO")
        rows.append([r["concurrency"], r["way"], r["requests"], f"{r['p50_ms']:.1f}",
                     f"{r['p99_ms']:.1f}", added, f"{r['requests_per_s']:.2f}", match])  # fmt: skip
    return md_table(
        ["clients", "way", "requests", "p50 ms", "p99 ms", "added p50 / p99 ms", "requests/s",
         "calibrated = direct"],
        rows,
    )  # fmt: skip


def _markdown(args: Any, task: Any, runs: list[dict[str, Any]]) -> str:
    model = _table([r for r in runs if r["upstream"] == "model"])
    replay = _table([r for r in runs if r["upstream"] == "replay"])
    return f"""# Serving: `llmcal serve` against the upstream directly (loopback)

{args.task} questions (seed 0), letter mode, template daca1, top-20 log-probs; proxy
`llmcal serve` as a subprocess (uvicorn, one worker, access log on) with a temperature
calibrator (τ = {TEMPERATURE}) and a selective threshold {THRESHOLD}. Each client sends its next
request when the last is answered; one warm-up request per run is not counted. "added" is the
proxy's p50 / p99 minus the direct p50 / p99 at the same concurrency. "calibrated = direct":
every calibrated answer equals softmax(option row / τ) of the direct response to the same prompt
(|Δp| ≤ 1e-9). **Measured once, at modest size, on a shared 2-core machine that other jobs were
loading at the same time** (load average 3 to 9 during these runs): the model timings vary by seconds from
request to request.

## On the model: `python -m llama_cpp.server --logits_all true`, bundled SmolLM2-135M-Instruct

{N_THREADS} server thread, n_ctx 512.

{model}

## On a replay upstream: the same recorded responses, answered at once

A Starlette/uvicorn server (subprocess) that answers each prompt with the response the model
gave it above, so the latency is the HTTP stack and the proxy alone.

{replay}

## Reading these numbers

The model server runs one request at a time (seconds each here: llama-cpp-python with
`logits_all` log-softmaxes every context row, and the machine was busy), so with 4 and 16
clients requests queue at the upstream, latency grows with the clients and requests/s stays
flat; against that the proxy's cost is inside the noise of the first table. The replay table
shows what the proxy adds per request: one more loopback HTTP hop, JSON parsing, prompt
rendering, a one-row Scores and the calibrator's transform, in one Python process: about
8 to 9 ms at one client. With several clients the single uvicorn worker is the bottleneck
(65 to 80 requests/s here, on two cores shared with the load generator and the replay server),
so requests queue at the proxy instead; that is far above what one model server answers.
"""


async def _pairs(url: str, gen: list[dict[str, Any]], scorer: Any, task: Any) -> dict[str, Any]:
    """Per question: the generation request, then the P(True) request of its answer."""
    from llmcal.confidence import PTRUE_TEMPLATE, one_answer, ptrue_task

    lat: list[float] = []
    async with httpx.AsyncClient(timeout=600, trust_env=False) as client:
        await client.post(url, json=gen[0])  # warm-up, as in _load
        start = time.perf_counter()
        for q, body in zip(task, gen, strict=True):
            t0 = time.perf_counter()
            r = (await client.post(url, json=body)).json()
            text = r["choices"][0]["text"].strip().split("\n")[0].strip()
            pq = ptrue_task(one_answer(q.id, q.question, text)).questions[0]
            (await client.post(url, json=scorer.letter_request(PTRUE_TEMPLATE, pq)[1])).json()
            lat.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - start
    return _summary(lat, seconds)


FREE_WAYS = ("direct generation", "direct generation + P(True)", "proxy free-form")


def _freeform(n: int) -> None:
    """Free-form latency at one client on the model (see the module docstring)."""
    from llmcal.confidence import one_answer, ptrue
    from llmcal.models.generate import open_prompt
    from llmcal.models.http import HTTPScorer
    from llmcal.tasks import synthetic_open_task

    task = synthetic_open_task(n=n, seed=0)
    gguf, tmp = _setup({"model": "smollm2", "view": "answer"}, "ptrue.json")
    server = LlamaServer(gguf, tmp / "server.log")
    server.start()
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "llmcal.cli", "serve", "--upstream", server.url,
         "--freeform-calibrator", str(tmp / "ptrue.json"), "--model", "smollm2",
         "--port", str(port), "--timeout", "300", "--retries", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    gen = [
        {"model": "smollm2", "prompt": open_prompt(q), "max_tokens": 24, "temperature": 0.0}
        for q in task
    ]
    free = [{"model": "smollm2", "llmcal": {"id": q.id, "question": q.question}} for q in task]
    runs: list[dict[str, Any]] = []
    try:
        _wait(f"http://127.0.0.1:{port}/health")
        scorer = HTTPScorer(server.url, "smollm2", progress=False)
        direct = asyncio.run(_load(server.url + "/completions", gen, 1))
        texts = [b["choices"][0]["text"].strip().split("\n")[0].strip() for b in direct["bodies"]]
        runs.append({"way": FREE_WAYS[0], **direct})
        # generation, then the P(True) request for its answer, one after the other (the
        # order the proxy's upstream calls come in, so llama.cpp's prompt cache sees the same)
        both = asyncio.run(_pairs(server.url + "/completions", gen, scorer, task))
        runs.append({"way": FREE_WAYS[1], **both})
        via = asyncio.run(_load(f"http://127.0.0.1:{port}/v1/completions", free, 1))
        ok = True
        for q, body in zip(task, via["bodies"], strict=True):
            out = body["llmcal"]
            ref = ptrue(scorer, one_answer(q.id, q.question, out["answer"])).confidences()[0]
            ok &= abs(out["raw_confidence"] - float(ref)) <= 1e-9
        runs.append({"way": FREE_WAYS[2], **via, "ptrue_matches_library": bool(ok)})
        same = [b["llmcal"]["answer"] for b in via["bodies"]] == texts
    finally:
        proxy.terminate()
        proxy.wait(20)
        server.stop()
    for r in runs:
        r.pop("bodies", None)
        print({k: v for k, v in r.items() if k != "latencies_ms"}, flush=True)
    rows = [
        [r["way"], r["requests"], f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
         f"{r['requests_per_s']:.2f}",
         {True: "yes", False: "NO"}.get(r.get("ptrue_matches_library"), "–")]  # type: ignore[call-overload]
        for r in runs
    ]  # fmt: skip
    table = md_table(
        ["way (1 client)", "requests", "p50 ms", "p99 ms", "requests/s", "P(True) = library"],
        rows,
    )
    md = f"""# Serving free-form answers: `llmcal serve` with P(True) (loopback, one client)

{n} `synthetic-open` questions (seed 0) on `python -m llama_cpp.server --logits_all true`
({N_THREADS} thread) with the bundled SmolLM2-135M-Instruct; proxy `llmcal serve
--freeform-calibrator` (temperature τ = {TEMPERATURE} on P(True)) as a subprocess. A free-form
request costs the proxy two upstream calls: the generation and the P(True) follow-up. "direct
generation + P(True)" is the same two calls made by the client itself, one after the other.
Proxy answers = direct answers: {"yes" if same else "NO"}. "P(True) = library": every raw
P(True) the proxy returned equals `llmcal.confidence.ptrue` on the same answer (|Δ| ≤ 1e-9).
Both two-call ways alternate a generation prompt and a P(True) prompt, so llama.cpp's prompt
cache cannot reuse the previous request's prefix (direct generations one after another can):
that, not the proxy, is why the pair costs more than four generations. The proxy's own cost is
the difference of the last two rows. **Measured once on a shared 2-core machine** (the
fine-tuning study ran beside it): model timings vary between requests.

{table}
"""
    write_results(
        "serving_freeform",
        {"n_questions": n, "server_threads": N_THREADS, "temperature": TEMPERATURE,
         "answers_equal_direct": same, "runs": runs},
        md,
    )  # fmt: skip


if __name__ == "__main__":
    main()
