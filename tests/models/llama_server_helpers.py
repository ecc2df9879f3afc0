"""A real llama-cpp-python server and a fault-injecting loopback proxy for the HTTP tests.

Everything listens on 127.0.0.1 only; every wait is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

N_CTX = 512  # llama-cpp-python log-softmaxes all n_ctx rows per request: keep it small
N_BATCH = 512
N_THREADS = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """``python -m llama_cpp.server --logits_all true`` on a loopback port (start/stop/restart)."""

    def __init__(self, model_path: Path, log: Path, api_key: str | None = None) -> None:
        self.model_path = model_path
        self.log = log
        self.api_key = api_key
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, ready_timeout: float = 90.0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            "smollm2",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--logits_all",
            "true",
            "--n_ctx",
            str(N_CTX),
            "--n_batch",
            str(N_BATCH),
            "--n_threads",
            str(N_THREADS),
            "--n_threads_batch",
            str(N_THREADS),
            "--verbose",
            "false",
        ]
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        end = time.monotonic() + timeout
        for _ in range(int(timeout / 0.2) + 1):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited with {self.proc.returncode}: "
                    + self.log.read_text(errors="replace")[-2000:]
                )
            try:
                r = httpx.get(self.url + "/models", headers=headers, timeout=2.0, trust_env=False)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > end:
                break
            time.sleep(0.2)
        raise RuntimeError(f"llama_cpp.server not ready after {timeout}s; log: {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


class FaultProxy:
    """A loopback HTTP/1.1 proxy, one request per connection, that injects faults.

    Per request (after the scripted ``first`` actions), with the given probabilities: answer 500, drop the connection without an
    answer, or stall for ``stall`` seconds and then drop; otherwise forward to the upstream
    port. Scripted actions may also be ``"garbage"`` (200 with a body that is not JSON) and
    ``"nochoices"`` (200 with JSON that is no completion). ``down=True`` drops every request (a server that stays down). Seeded, so a fault
    pattern is reproducible for a given request order.
    """

    def __init__(
        self,
        upstream_port: int,
        *,
        p500: float = 0.0,
        pdrop: float = 0.0,
        pstall: float = 0.0,
        stall: float = 2.0,
        seed: int = 0,
        first: Sequence[str] = (),
    ) -> None:
        self.upstream_port = upstream_port
        self.first = list(first)
        self.p500, self.pdrop, self.pstall, self.stall = p500, pdrop, pstall, stall
        self.down = False
        self.rng = random.Random(seed)
        self.actions: Counter[str] = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def _choose(self) -> str:
        if self.down:
            return "down"
        if self.first:
            return self.first.pop(0)
        x = self.rng.random()
        for name, p in (("500", self.p500), ("drop", self.pdrop), ("stall", self.pstall)):
            if x < p:
                return name
            x -= p
        return "ok"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")
            length = 0
            kept = [lines[0]]
            for line in lines[1:]:
                if not line:
                    continue
                name = line.split(":", 1)[0].strip().lower()
                if name == "content-length":
                    length = int(line.split(":", 1)[1])
                if name not in ("connection", "keep-alive"):
                    kept.append(line)
            body = await asyncio.wait_for(reader.readexactly(length), 30) if length else b""
            action = self._choose()
            self.actions[action] += 1
            if action == "500":
                msg = b'{"error": "injected fault"}'
                writer.write(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(msg)}\r\nConnection: close\r\n\r\n".encode()
                    + msg
                )
                await writer.drain()
                return
            if action in ("garbage", "nochoices"):  # HTTP 200 with an unusable body
                msg = b"{not json" if action == "garbage" else b'{"object": "text_completion"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(msg)}\r\nConnection: close\r\n\r\n".encode()
                    + msg
                )
                await writer.drain()
                return
            if action == "stall":
                await asyncio.sleep(self.stall)
                return
            if action in ("drop", "down"):
                return
            try:
                ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:
                self.actions["upstream refused"] += 1
                return
            request = ("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")
            uw.write(request + body)
            await uw.drain()
            data = await asyncio.wait_for(ur.read(), 120)
            uw.close()
            writer.write(data)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            pass
        finally:
            writer.close()
