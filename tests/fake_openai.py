"""A loopback (127.0.0.1 only) OpenAI-compatible fake server, well-behaved or hostile.

``/v1/completions`` answers letter requests with deterministic top log-probs (" A".." D" from a
hash of the prompt); ``/v1/chat/completions`` answers 404, so the client uses /completions.
``hostile`` names a misbehaviour served to every completions request after the first
``ok_first`` ones (the capability probe). The server answers at most ``max_requests`` requests
(then closes connections), so a client that loops cannot run away.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: hostile mode → (status, body bytes) given the request's headers; see the module docstring.
Behaviour = Callable[[dict[str, str]], tuple[int, bytes]]


def good_reply(prompt: str) -> dict[str, Any]:
    """The well-behaved /completions reply for ``prompt``."""
    digest = hashlib.sha256(prompt.encode()).digest()
    top = {f" {letter}": -0.25 - digest[i] / 64 for i, letter in enumerate("ABCD")}
    top[" the"] = -6.0
    return {
        "choices": [{"text": " A", "finish_reason": "length", "logprobs": {"top_logprobs": [top]}}]
    }


def _with_top(value: Any) -> bytes:
    body = {"choices": [{"logprobs": {"top_logprobs": [{" A": value, " B": -1.0}]}}]}
    return json.dumps(body).encode()


def _echo_headers(status: int) -> Behaviour:
    def reply(headers: dict[str, str]) -> tuple[int, bytes]:
        auth = headers.get("authorization", "")
        text = (
            f"unauthorised: got Authorization: {auth} (headers {json.dumps(headers)}) "
            f"retry with api_key={auth.removeprefix('Bearer ')}"
        )
        return status, json.dumps({"error": {"message": text, "echo": headers}}).encode()

    return reply


HOSTILE: dict[str, Behaviour] = {
    "echo-auth-401": _echo_headers(401),
    "echo-auth-402": _echo_headers(402),
    "huge-error": lambda h: (418, (b"x" * 5_000_000) + h.get("authorization", "").encode()),
    "huge-ok": lambda h: (200, b'{"choices": [{"text": "' + b"y" * 20_000_000 + b'"}]}'),
    "not-json": lambda h: (200, b"<html>gateway says hi</html>"),
    "deep": lambda h: (200, b'{"choices": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    "nan": lambda h: (200, _with_top(float("nan"))),
    "string": lambda h: (200, _with_top("-0.5")),
    "list": lambda h: (200, _with_top([-0.5])),
    "bool": lambda h: (200, _with_top(True)),
    "not-object": lambda h: (200, b"[1, 2, 3]"),
    "no-choices": lambda h: (200, b'{"choices": []}'),
    "top-not-list": lambda h: (200, b'{"choices": [{"logprobs": {"top_logprobs": "A"}}]}'),
}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up on a huge body is expected here; keep stderr for the CLI


class FakeOpenAI:
    """Context manager: a fake server on ``127.0.0.1:<free port>``; ``url`` ends in ``/v1``."""

    def __init__(self, hostile: str | None = None, *, ok_first: int = 1, max_requests: int = 200):
        if hostile is not None and hostile not in HOSTILE:
            raise ValueError(hostile)
        self.hostile = hostile
        self.ok_first = ok_first
        self.max_requests = max_requests
        self.requests = 0
        self.completions = 0
        self.seen_auth: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                with fake._lock:
                    fake.requests += 1
                    over = fake.requests > fake.max_requests
                    fake.seen_auth.append(self.headers.get("authorization", ""))
                if over:
                    self.close_connection = True
                    return
                status, body = fake._answer(
                    self.path, raw, {k.lower(): v for k, v in self.headers.items()}
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the client gave up reading a huge body
                    self.close_connection = True

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _answer(self, path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if not path.endswith("/completions") or path.endswith("/chat/completions"):
            return 404, b'{"error": "not found"}'
        with self._lock:
            self.completions += 1
            n = self.completions
        if self.hostile is not None and n > self.ok_first:
            return HOSTILE[self.hostile](headers)
        payload = json.loads(raw)
        return 200, json.dumps(good_reply(str(payload.get("prompt", "")))).encode()
