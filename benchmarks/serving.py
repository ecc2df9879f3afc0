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
Usage: python benchmarks/serving.py [--n 16] [--concurrency 1 4 16]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests" / "models"))

import argparse
import asyncio
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
    """Run every way at every concurrency and write the tables."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=16, help="requests per way and concurrency")
    ap.add_argument("--task", default="mmlu")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args()
    task = load_task(args.task, data_dir=DATA_DIR).subset(args.n, seed=0)
    tmpl = get_template("daca1")
    gguf = resolve_bundled("smollm2-135m-instruct")
    assert gguf is not None
    tmp = Path(tempfile.mkdtemp())
    cal = TemperatureScaling.from_dict(
        {"format": "llmcal-calibrator", "format_version": 1, "kind": "temperature", "config": {},
         "params": {"temperature": TEMPERATURE}, "fit": {"model": "smollm2", "template": "daca1"}}
    )  # fmt: skip
    cal_path = cal.save(tmp / "cal.json")
    (tmp / "sel.json").write_text(
        f'{{"kind": "selective", "params": {{"threshold": {THRESHOLD}}}}}'
    )
    server = LlamaServer(gguf, tmp / "server.log")
    server.start()
    port = free_port()
    proxy_log = open(tmp / "proxy.log", "wb")  # noqa: SIM115 (closed in the finally below)
    proxy = subprocess.Popen(
        [sys.executable, "-m", "llmcal.cli", "serve", "--upstream", server.url, "--calibrator",
         str(cal_path), "--selective", str(tmp / "sel.json"), "--model", "smollm2",
         "--port", str(port), "--timeout", "300", "--retries", "0"],
        stdout=subprocess.DEVNULL, stderr=proxy_log,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    proxy_url = f"http://127.0.0.1:{port}"
    runs: list[dict[str, Any]] = []
    try:
        _wait(proxy_url + "/health")
        direct_payloads = [
            {"model": "smollm2", "prompt": tmpl.letter_prompt(q), "max_tokens": 1,
             "temperature": 0.0, "logprobs": 20, "min_tokens": 1}
            for q in task
        ]  # fmt: skip
        mc = [
            {"model": "smollm2", "llmcal": {"question": q.question, "choices": list(q.choices)}}
            for q in task
        ]
        reference: list[Any] = []
        for conc in args.concurrency:
            for way in WAYS:
                if way == "direct":
                    url, bodies = server.url + "/completions", direct_payloads
                elif way == "proxy pass-through":
                    url, bodies = proxy_url + "/v1/completions", direct_payloads
                else:
                    url, bodies = proxy_url + "/v1/completions", mc
                r = asyncio.run(_load(url, bodies, conc))
                answers = r.pop("bodies")
                if way == "direct" and not reference:
                    reference = answers
                if way == "proxy calibrated":
                    r["answers_match_direct"] = _check(answers, reference, task)
                runs.append({"concurrency": conc, "way": way, **r})
                print({k: v for k, v in runs[-1].items() if k != "latencies_ms"}, flush=True)
    finally:
        proxy.terminate()
        proxy.wait(20)
        proxy_log.close()
        server.stop()
    md = _markdown(args, task, runs)
    write_results(
        "serving",
        {"task": args.task, "n": len(task), "server_threads": N_THREADS,
         "temperature": TEMPERATURE, "threshold": THRESHOLD, "runs": runs},
        md,
    )  # fmt: skip


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
    ms = sorted(1000 * x for x in latencies)
    return {
        "requests": len(bodies),
        "seconds": seconds,
        "requests_per_s": len(bodies) / seconds,
        "p50_ms": statistics.median(ms),
        "p99_ms": float(np.percentile(ms, 99)),
        "latencies_ms": ms,
        "bodies": out,
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


def _markdown(args: Any, task: Any, runs: list[dict[str, Any]]) -> str:
    by = {(r["concurrency"], r["way"]): r for r in runs}
    rows = []
    for r in runs:
        d = by[(r["concurrency"], "direct")]
        added = (
            "–"
            if r["way"] == "direct"
            else f"{r['p50_ms'] - d['p50_ms']:+.0f} / {r['p99_ms'] - d['p99_ms']:+.0f}"
        )
        m = r.get("answers_match_direct")
        match = "–" if m is None else ("yes" if m else "NO")
        rows.append([r["concurrency"], r["way"], f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
                     added, f"{r['requests_per_s']:.2f}", match])  # fmt: skip
    table = md_table(
        ["clients", "way", "p50 ms", "p99 ms", "added p50 / p99 ms", "requests/s",
         "calibrated = direct"],
        rows,
    )  # fmt: skip
    return f"""# Serving: `llmcal serve` against the upstream directly (loopback)

{len(task)} {args.task} questions (seed 0) per way and concurrency, letter mode, template daca1,
top-20 log-probs; upstream `python -m llama_cpp.server --logits_all true` ({N_THREADS} thread,
bundled SmolLM2-135M-Instruct Q4_1); proxy `llmcal serve` as a subprocess (uvicorn, one worker)
with a temperature calibrator (τ = {TEMPERATURE}) and a selective threshold {THRESHOLD}. Each
client sends its next request when the last is answered; one warm-up request per run is not
counted. Measured once on a shared 2-core machine that other jobs were using at the same time,
so differences of a few tens of ms are noise.

{table}

"added" is the proxy's p50 / p99 minus the direct p50 / p99 at the same concurrency.
"calibrated = direct": every calibrated answer equals softmax(option row / τ) of the direct
response to the same prompt (|Δp| ≤ 1e-9).

## Reading these numbers

The upstream runs one request at a time (about two seconds each here: llama-cpp-python with
`logits_all` log-softmaxes every context row), so at 4 and 16 clients requests queue at the
upstream and latency grows with the number of clients while requests/s stays flat; the proxy
neither adds nor removes that queue. What the proxy adds per request is an HTTP hop on loopback,
JSON parsing, the prompt rendering and a one-row calibration: small against the model's time.
"""


if __name__ == "__main__":
    main()
