"""HTTPScorer: score multiple-choice tasks through OpenAI-compatible inference servers.

Talks to one or many base URLs (``http://host:8000/v1``; requests are spread round-robin and a
retry moves to the next URL) with :mod:`httpx` under asyncio, at most ``concurrency`` requests in
flight. Modes:

* ``letter``, plain template: ``POST /completions`` with ``max_tokens=1`` and ``logprobs=k``; the
  top-k log-probs of the next token after ``"Answer:"``.
* ``letter``, chat template: ``POST /chat/completions`` with ``logprobs`` + ``top_logprobs=k``;
  the server applies the model's chat template; the top-k of the first generated token.
* ``cloze``: ``POST /completions`` with ``echo`` + ``logprobs``: the prompt log-probs of each
  option's tokens. Only after :meth:`HTTPScorer.probe` has checked that the server's echoed
  log-probs agree with its own next-token log-probs (servers get this wrong: llama-cpp-python's
  server fails it), otherwise :class:`~llmcal.errors.EndpointError`.

Letter requests carry ``min_tokens=1`` when the probe finds the server accepts it: otherwise
llama-cpp-python stops at an end-of-sequence first token and drops the log-probs of that very
position (the reported log-probs are the model's raw distribution either way; the bias only
acts on sampling).

Token → option mapping: a returned token counts for option ``X`` when, stripped of whitespace,
the byte-level / sentencepiece space markers ``Ġ`` and ``▁`` and the brackets and punctuation
``()[]{}.:,;*"'``, it equals the letter ``X`` in either case (``" A"``, ``"A"``, ``"a"``,
``"(A"``). Several tokens of one option are combined by log-sum-exp (probabilities add).

Options missing from the top-k (**fill rule**): the option gets the log-prob
:data:`TOPK_FLOOR` (−30, probability ≈ 1e−13), so for metrics and calibrators it counts as
impossible and the row is in effect renormalised over the options the server showed. The row is
recorded in ``meta["topk"]["truncated"][id] = {"missing": [option indices], "unseen_mass": u}``,
``u`` = 1 − Σ exp(all top-k log-probs) = the probability the server did not show, an upper bound
on the missing options' total. ``meta["topk"] = {"k", "floor", ...}`` is the layout that
:class:`~llmcal.calibrate.daca.DACA` reads (``missing="spread"`` shares the unseen mass among
the missing options instead). A call where more than ``max_blind`` of the rows have *no* option in
the top-k raises :class:`~llmcal.errors.ModelError` instead of returning chance-level scores.

Failures: 429, 5xx, timeouts, dropped connections and unreadable bodies are retried up to
``max_retries`` times with exponential backoff and full jitter (``Retry-After`` honoured up to the
cap), each attempt bounded by ``timeout`` and the whole request by ``deadline``; then an
``EndpointError`` names the endpoint and the last failure. Other 4xx are not retried.
The API key is read from the environment variable the user names; it is sent as a bearer token
and never logged, stored in ``meta`` or shown in a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from llmcal._io import loads_json
from llmcal.errors import ConfigError, EndpointError, ModelError, quote
from llmcal.models.base import Mode, Normalization, build_scores, check_request
from llmcal.scores import Scores
from llmcal.tasks.templates import DEFAULT_TEMPLATE, Template
from llmcal.tasks.types import LETTERS, Question, Task

#: Log-prob given to an option the server left out of its top-k (see the module docstring).
TOPK_FLOOR = -30.0
#: Retried HTTP statuses besides every 5xx.
RETRY_STATUSES = frozenset({408, 409, 425, 429})
_UNSUPPORTED = frozenset({400, 404, 405, 422})
_STRIP = " \t\r\n()[]{}.:,;*\"'"
#: Bytes of a reply read at most: a 200 reply beyond this is refused, an error body is cut.
MAX_BODY = 16 * 2**20
_MAX_ERROR_BODY = 64 * 2**10
#: Characters of server text (an error body, a token) shown in a message at most.
MAX_SERVER_TEXT = 300
_PROBE_PROMPT = "Question: What is the capital of France?\nA: Berlin\nB: Paris\nAnswer:"
_ECHO_TEXT = "The capital of France is Paris. The capital of Italy is Rome. Answer:"


def option_of_token(token: str, letters: str) -> int | None:
    """The option index a returned token stands for (``" A"``, ``"a"``, ``"(A"``), or None."""
    text = token.replace("Ġ", " ").replace("▁", " ").strip(_STRIP).upper()
    if len(text) == 1 and text in letters:
        return letters.index(text)
    return None


def _logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def map_top_logprobs(
    top: Sequence[tuple[str, float]], n_options: int
) -> tuple[list[float], list[int], float]:
    """Option log-probs from top-k (token, log-prob) pairs: (row, missing options, unseen mass)."""
    letters = LETTERS[:n_options]
    found: list[list[float]] = [[] for _ in range(n_options)]
    for token, logprob in top:
        i = option_of_token(token, letters)
        if i is not None and logprob is not None and math.isfinite(logprob):
            found[i].append(float(logprob))
    row = [_logsumexp(v) if v else TOPK_FLOOR for v in found]
    missing = [i for i, v in enumerate(found) if not v]
    seen = sum(math.exp(lp) for _, lp in top if lp is not None and math.isfinite(lp))
    return row, missing, max(0.0, 1.0 - seen)


def normalize_endpoint(url: str, flag: str = "--endpoint") -> str:
    """``http://host:port`` → ``http://host:port/v1``; other paths are kept (no trailing /).
    ``flag``: the option the URL came from, for the error message."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"{flag} {public_url(url)!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1"
        )
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def public_url(url: str) -> str:
    """``url`` without any ``user:password@`` part or query (safe to print and store)."""
    parts = urlsplit(url)
    if not parts.netloc:  # not parseable as scheme://host: hide anything before an "@"
        return re.sub(r"^[^/]*@", "***@", url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@")
_AUTH_VALUE = re.compile(
    r"((?:proxy-)?authorization|api[-_]?key|x-api-key|access[-_]?token)"
    r"(\\?[\"']?\s*[:=]\s*\\?[\"']?)(?:(?:bearer|basic|token)\s+)?[^\"'\s,;}]*",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def scrub(text: str, secrets: Sequence[str] = (), limit: int = MAX_SERVER_TEXT) -> str:
    """Server text made safe to show: the given secrets, ``Authorization``-style header values,
    bearer tokens and URL credentials replaced by ``***``; one line, at most ``limit`` chars."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    text = _AUTH_VALUE.sub(r"\1\2***", text)
    text = _BEARER.sub(r"\1 ***", text)
    text = "".join(c if c.isprintable() else " " for c in text)
    if len(text) > limit:
        text = text[:limit] + f"… [{len(text) - limit} more characters]"
    return text


class MalformedReply(ValueError):
    """A server reply that parses as JSON but does not have the expected shape or values."""


def _header_safe(key: str) -> int | None:
    """The 0-based position of the first character that cannot go into a header token."""
    for i, c in enumerate(key):
        if not 0x21 <= ord(c) <= 0x7E:
            return i
    return None


@dataclass
class RequestStats:
    """What the requests of a scorer did: counts, retries by reason, time spent."""

    requests: int = 0
    attempts: int = 0
    failed: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line, e.g. ``120 requests, 3 retries (HTTP 500: 2, timeout: 1)``."""
        n = sum(self.retries.values())
        why = ", ".join(f"{k}: {v}" for k, v in sorted(self.retries.items()))
        line = f"{self.requests} requests, {n} retries" + (f" ({why})" if why else "")
        return line + (f", {self.failed} failed" if self.failed else "")


@dataclass(frozen=True)
class Capabilities:
    """What a server supports, from :meth:`HTTPScorer.probe`."""

    completions_logprobs: bool
    chat_logprobs: bool
    topk_cap: int
    echo: str  # "ok", "ignored", "inconsistent", "unverifiable", "not probed"
    echo_detail: str = ""
    min_tokens: bool = False

    def describe(self) -> str:
        """One line for the user."""
        return (
            f"completions logprobs: {'yes' if self.completions_logprobs else 'no'}, "
            f"chat logprobs: {'yes' if self.chat_logprobs else 'no'}, top-k cap: {self.topk_cap}, "
            f"echo prompt log-probs: {self.echo}"
        )


class HTTPScorer:
    """Score tasks through OpenAI-compatible endpoints (see the module docstring)."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        model: str,
        *,
        api_key_env: str | None = None,
        concurrency: int = 4,
        timeout: float = 30.0,
        deadline: float = 120.0,
        max_retries: int = 5,
        backoff: float = 0.25,
        backoff_max: float = 8.0,
        top_k: int = 20,
        max_blind: float = 0.5,
        progress: bool | None = None,
        seed: int | None = None,
        transport: Any = None,
        endpoint_flag: str = "--endpoint",  # the option the URLs came from, for messages
    ) -> None:
        urls = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not urls:
            raise ConfigError(f"give at least one {endpoint_flag} URL")
        if not model or not model.strip():
            raise ConfigError("--model: give the model name the server serves")
        for name, value in (("concurrency", concurrency), ("top_k", top_k)):
            if int(value) < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if not (timeout > 0 and deadline > 0 and backoff >= 0 and backoff_max >= 0):
            raise ConfigError("timeout and deadline must be > 0, backoff values >= 0")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        self.endpoints = [normalize_endpoint(u, endpoint_flag) for u in urls]
        self.name = model
        self.model = model
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.deadline = float(deadline)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.backoff_max = float(backoff_max)
        self.top_k = int(top_k)
        self.max_blind = float(max_blind)
        self.progress = progress
        self.stats = RequestStats()
        self.capabilities: Capabilities | None = None
        self._rng = random.Random(seed)
        self._transport = transport
        self._min_tokens = False
        self._headers = {"Content-Type": "application/json"}
        self._secrets: list[str] = []
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(
                    f"--api-key-env {api_key_env}: that environment variable is not set or empty; "
                    f"export {api_key_env}=... before running"
                )
            bad = _header_safe(key)
            if bad is not None:
                raise ConfigError(
                    f"--api-key-env {api_key_env}: the key has a character that cannot be sent in "
                    f"an HTTP header at position {bad + 1} of {len(key)} (only visible ASCII, no "
                    "spaces or line breaks); check how the variable was set"
                )
            with_creds = [public_url(u) for u in urls if "@" in urlsplit(u.strip()).netloc]
            if with_creds:
                raise ConfigError(
                    f"--endpoint {with_creds[0]} carries user:password@ credentials and "
                    f"--api-key-env {api_key_env} gives a key: only one of them would be sent. "
                    "Use one way to authenticate"
                )
            self._headers["Authorization"] = f"Bearer {key}"
            self._secrets = [key]
        self.api_key_env = api_key_env
        for u in urls:
            netloc = urlsplit(u.strip()).netloc
            if "@" in netloc:  # URL credentials are secrets too: never echoed back to the user
                self._secrets += [p for p in re.split(r"[:@]", netloc.rsplit("@", 1)[0]) if p]

    def _safe(self, text: str) -> str:
        """Server text with this scorer's secrets and any credentials removed (see scrub)."""
        return scrub(text, self._secrets)

    # -- identity (for checkpoints) ----------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What determines the numbers (no URLs, no key): used to key checkpoints."""
        return {"backend": "http", "model": self.model, "top_k": self.top_k}

    @property
    def public_endpoints(self) -> list[str]:
        """The endpoint URLs without credentials."""
        return [public_url(u) for u in self.endpoints]

    # -- the request engine -----------------------------------------------------------------
    def _client(self) -> Any:
        import httpx

        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        return httpx.AsyncClient(
            headers=self._headers,
            timeout=httpx.Timeout(self.timeout),
            limits=limits,
            transport=self._transport,
            trust_env=False,
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.backoff_max, self.backoff * (2 ** (attempt - 1)))
        delay = self._rng.uniform(0.0, cap)  # full jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    async def _attempt(
        self,
        client: Any,
        url: str,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> tuple[Any, bytes]:
        """One POST: (response, body bytes), reading at most :data:`MAX_BODY` bytes."""
        async with client.stream("POST", url, json=payload, headers=headers) as resp:
            limit = MAX_BODY if resp.status_code == 200 else _MAX_ERROR_BODY
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    if resp.status_code == 200:
                        raise EndpointError(
                            f"{public_url(url)} sent a reply larger than {MAX_BODY // 2**20} MiB; "
                            "it is not a log-prob reply (check --endpoint and --model)"
                        )
                    break  # an error body: its beginning is all a message shows
            return resp, b"".join(chunks)

    async def _post(
        self,
        client: Any,
        path: str,
        payload: dict[str, Any],
        idx: int,
        parse: Callable[[Any], Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """POST with retries; returns the parsed JSON body, or ``parse(body)`` if given.

        ``parse`` raises :class:`MalformedReply` for a reply of the wrong shape, which becomes
        an ``EndpointError`` naming the endpoint (not retried: a server answers the same again).
        ``headers`` are added to this request.
        """
        import httpx

        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + self.deadline
        self.stats.requests += 1
        attempt = 0
        last = "no attempt"
        url = ""
        while True:
            url = self.endpoints[(idx + attempt) % len(self.endpoints)] + path
            remaining = end - loop.time()
            if remaining <= 0:
                break
            self.stats.attempts += 1
            retry_after: float | None = None
            try:
                resp, data = await asyncio.wait_for(
                    self._attempt(client, url, payload, headers),
                    timeout=min(self.timeout, remaining),
                )
            except (asyncio.TimeoutError, httpx.TimeoutException):
                last = "timeout"
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__})"
            except httpx.HTTPError as exc:  # e.g. a header httpx cannot send or decode
                self.stats.failed += 1
                raise EndpointError(
                    f"request to {public_url(url)} failed: {type(exc).__name__}: "
                    f"{self._safe(str(exc))}"
                ) from None
            else:
                if resp.status_code == 200:
                    try:
                        body = loads_json(data)
                    except (ValueError, UnicodeDecodeError):
                        last = "unreadable response body"
                    else:
                        self.stats.seconds += loop.time() - start
                        if parse is None:
                            return body
                        try:
                            return parse(body)
                        except MalformedReply as exc:
                            self.stats.failed += 1
                            raise EndpointError(
                                f"{public_url(url)} sent a malformed reply to {path}: "
                                f"{self._safe(str(exc))}; is it an OpenAI-compatible server "
                                "with log-probs?"
                            ) from None
                elif resp.status_code in RETRY_STATUSES or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}"
                    retry_after = _retry_after(resp.headers.get("retry-after"))
                else:
                    self.stats.failed += 1
                    err = EndpointError(self._refusal(url, resp.status_code, data))
                    err.status = resp.status_code  # type: ignore[attr-defined]
                    raise err
            attempt += 1
            if attempt > self.max_retries:
                break
            self.stats.retries[_reason_key(last)] += 1
            delay = min(self._delay(attempt, retry_after), max(0.0, end - loop.time()))
            await asyncio.sleep(delay)
        self.stats.failed += 1
        waited = loop.time() - start
        err = EndpointError(
            f"request to {public_url(url)} failed after {attempt} attempt(s) in {waited:.1f}s "
            f"(last failure: {last}; retries {self.max_retries}, per-attempt timeout "
            f"{self.timeout:g}s, deadline {self.deadline:g}s). Check that the server is up and "
            "serving; finished rows are kept in the checkpoint, so rerunning the same command "
            "resumes"
        )
        # what went wrong, for callers that answer in their own words (llmcal.serve)
        err.reason = last  # type: ignore[attr-defined]
        err.attempts = attempt  # type: ignore[attr-defined]
        raise err

    def _refusal(self, url: str, status: int, data: bytes) -> str:
        text = self._safe(data[: 4 * MAX_SERVER_TEXT].decode("utf-8", errors="replace"))
        hint = ""
        if status in (401, 403):
            hint = (
                "; the server wants credentials: pass --api-key-env NAME with the key in $NAME"
                if self.api_key_env is None
                else f"; check the key in ${self.api_key_env}"
            )
        elif status == 404:
            hint = f"; check the endpoint URL (…/v1) and that the server serves model {quote(self.model)}"
        return f"{public_url(url)} answered HTTP {status}: {text}{hint}"

    async def _gather(
        self, jobs: Sequence[Callable[[], Awaitable[Any]]], bar: Any = None
    ) -> list[Any]:
        """Run ``jobs`` with at most ``concurrency`` in flight; cancel the rest on an error."""
        sem = asyncio.Semaphore(self.concurrency)

        async def one(job: Callable[[], Awaitable[Any]]) -> Any:
            async with sem:
                out = await job()
            if bar is not None:
                bar.update(1)
            return out

        tasks = [asyncio.ensure_future(one(j)) for j in jobs]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    def _run(self, coro: Awaitable[Any]) -> Any:
        async def main() -> Any:
            return await coro

        return asyncio.run(main())

    # -- capability probe ---------------------------------------------------------------------
    def probe(self, *, echo: bool = False) -> Capabilities:
        """Ask the first endpoint what it supports (logprobs, top-k cap, and echo if asked)."""
        caps: Capabilities = self._run(self._probe(echo))
        return caps

    async def _probe(self, echo: bool, client: Any = None) -> Capabilities:
        """The probe; on ``client`` when given (left open), else on a client of its own."""
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(self._client())
            cap = 0
            completions = chat = False
            # min_tokens=1 keeps a server from stopping (and dropping the log-probs) when the
            # end-of-sequence token is the most likely first token; not every server knows it
            for min_tokens in (True, False):
                self._min_tokens = min_tokens
                try:
                    payload = self._completion(_PROBE_PROMPT)
                    top = await self._post(
                        client, "/completions", payload, 0, parse=_completion_top0
                    )
                except EndpointError as exc:
                    if getattr(exc, "status", None) not in _UNSUPPORTED:
                        raise  # down, or refusing us (e.g. 401): no use probing further
                    continue
                completions, cap = bool(top), len(top)
                break
            else:
                self._min_tokens = False
            try:
                msgs = [{"role": "user", "content": _PROBE_PROMPT.removesuffix("\nAnswer:")}]
                top = await self._post(
                    client, "/chat/completions", self._chat(msgs), 0, parse=_chat_top
                )
                chat, cap = bool(top), max(cap, len(top))
            except EndpointError as exc:
                if getattr(exc, "status", None) not in _UNSUPPORTED:
                    raise
            state, detail = ("not probed", "")
            if echo and completions:
                state, detail = await self._probe_echo(client)
            elif echo:
                state, detail = "unverifiable", "the server gave no completion log-probs"
        self.capabilities = Capabilities(
            completions, chat, cap, state, detail, min_tokens=self._min_tokens
        )
        return self.capabilities

    async def _probe_echo(self, client: Any) -> tuple[str, str]:
        """Compare echoed prompt log-probs with the server's own next-token log-probs."""
        payload = self._completion(_ECHO_TEXT, echo=True)
        lp = await self._post(client, "/completions", payload, 0, parse=_echo_logprobs)
        tokens, values, offsets = lp.get("tokens"), lp.get("token_logprobs"), lp.get("text_offset")
        if not tokens or not values or not offsets or sum(o < len(_ECHO_TEXT) for o in offsets) < 4:
            return "ignored", "the response carries no prompt tokens"
        prompt_pos = [j for j, o in enumerate(offsets) if 0 < o < len(_ECHO_TEXT)]
        compared: list[str] = []
        for j in prompt_pos[-3:]:
            if values[j] is None:
                continue
            prefix = _ECHO_TEXT[: offsets[j]]
            payload = self._completion(prefix)
            top = dict(await self._post(client, "/completions", payload, 0, parse=_completion_top0))
            if tokens[j] not in top:
                continue
            echoed, direct = float(values[j]), float(top[tokens[j]])
            compared.append(f"{quote(tokens[j], 20)}: echo {echoed:.4f} vs next-token {direct:.4f}")
            if abs(echoed - direct) > 0.02:
                return "inconsistent", self._safe(compared[-1])
        if not compared:
            return "unverifiable", "no echoed token was in the server's next-token top-k"
        return "ok", self._safe("; ".join(compared))

    def check_capabilities(self, mode: Mode, chat: bool) -> Capabilities:
        """Probe if needed; raise a clear error when the server cannot score ``mode``."""
        caps = self.capabilities
        if caps is None or (mode == "cloze" and caps.echo == "not probed"):
            caps = self.probe(echo=mode == "cloze")
        where = ", ".join(self.public_endpoints)
        if mode == "cloze":
            if chat:
                raise ConfigError(
                    "cloze scoring over HTTP uses /v1/completions, which cannot apply a chat "
                    "template; use a plain template such as daca1"
                )
            if caps.echo != "ok":
                raise EndpointError(
                    f"refusing cloze through {where}: its echoed prompt log-probs are {caps.echo} "
                    f"({caps.echo_detail}). Scores from them would be wrong without a warning; "
                    "use --mode letter, or score cloze in-process with --model FILE.gguf"
                )
        elif chat and not caps.chat_logprobs:
            raise EndpointError(
                f"{where} returns no log-probs from /chat/completions, so a chat template cannot "
                "be scored through it; use a plain template (daca1) for /v1/completions"
            )
        elif not chat and not caps.completions_logprobs:
            hint = " or the chat template (--template chat)" if caps.chat_logprobs else ""
            raise EndpointError(
                f"{where} returns no top log-probs from /completions; letter scoring needs them "
                f"(use a server that supports logprobs{hint})"
            )
        return caps

    # -- payloads -----------------------------------------------------------------------------
    @property
    def effective_top_k(self) -> int:
        """The top-k requested: ``top_k`` capped by what the probe saw the server return."""
        return self._k()

    def _k(self) -> int:
        cap = self.capabilities.topk_cap if self.capabilities else 0
        return min(self.top_k, cap) if cap else self.top_k

    def _completion(self, prompt: str, echo: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": self._k(),
        }
        if echo:
            payload["echo"] = True
        if self._min_tokens:
            payload["min_tokens"] = 1
        return payload

    def _chat(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self._k(),
        }
        if self._min_tokens:
            payload["min_tokens"] = 1
        return payload

    # -- public API ---------------------------------------------------------------------------
    def score(
        self,
        task: Task,
        *,
        mode: Mode = "letter",
        template: str | Template = DEFAULT_TEMPLATE,
        normalization: Normalization = "mean",
        shots: Sequence[Question] = (),
    ) -> Scores:
        """Score every question of ``task`` (probing the server first if not done yet)."""
        tmpl = check_request(task, mode, template, normalization, shots)
        caps = self.check_capabilities(mode, tmpl.chat)
        if mode == "letter":
            rows, extra = self._run(self._letter(task, tmpl, shots))
        else:
            rows, extra = self._run(self._cloze(task, tmpl, normalization))
        return build_scores(task, rows, self.scores_meta(mode, tmpl, shots, caps, extra))

    def scores_meta(
        self,
        mode: Mode,
        tmpl: Template,
        shots: Sequence[Question],
        caps: Capabilities,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """The ``Scores.meta`` of a scoring run (``extra`` from :meth:`letter_rows` or cloze)."""
        return {
            "model": self.model,
            "backend": "http",
            "endpoints": self.public_endpoints,
            "mode": mode,
            "template": tmpl.name,
            "n_shots": len(shots),
            "shot_ids": [s.id for s in shots],
            "server": asdict(caps),
            **extra,
        }

    def letter_request(
        self, tmpl: Template, q: Question, shots: Sequence[Question] = ()
    ) -> tuple[str, dict[str, Any]]:
        """(path, JSON payload) of the letter-mode request for one question."""
        if tmpl.chat:
            return "/chat/completions", self._chat(tmpl.messages(q, shots))
        return "/completions", self._completion(tmpl.letter_prompt(q, shots))

    async def letter_top(
        self,
        client: Any,
        tmpl: Template,
        q: Question,
        idx: int,
        payload: tuple[str, dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[list[tuple[str, float]], Any]:
        """(top-k (token, log-prob) pairs at the answer position, response body) of a question."""
        path, body_in = payload if payload is not None else self.letter_request(tmpl, q)

        def parse(body: Any) -> tuple[list[tuple[str, float]], str | None, Any]:
            top = _chat_top(body) if tmpl.chat else _completion_top(body, 0)
            return top, _finish_reason(body), body

        top, finish, body = await self._post(
            client, path, body_in, idx, parse=parse, headers=headers
        )
        if not top:
            why = "the server does not honour logprobs on " + path
            if finish == "stop":
                why = (
                    "the server stopped at an end-of-sequence token before the first answer "
                    "token and dropped the log-probs (it ignores min_tokens)"
                )
            raise EndpointError(
                f"{', '.join(self.public_endpoints)} returned no top log-probs for question "
                f"{q.id!r}: {why}"
            )
        return top, body

    async def _letter(
        self, task: Task, tmpl: Template, shots: Sequence[Question]
    ) -> tuple[list[list[float]], dict[str, Any]]:
        payloads = [self.letter_request(tmpl, q, shots) for q in task]

        async def job(i: int) -> list[tuple[str, float]]:
            top, _ = await self.letter_top(client, tmpl, task[i], i, payloads[i])
            return top

        async with self._client() as client:
            with self._bar(len(task)) as bar:
                tops = await self._gather(
                    [functools.partial(job, i) for i in range(len(task))], bar
                )
        return self.letter_rows(task, tops, tmpl, payloads[0][1])

    def letter_rows(
        self,
        task: Task,
        tops: Sequence[Sequence[tuple[str, float]]],
        tmpl: Template,
        first: dict[str, Any],
    ) -> tuple[list[list[float]], dict[str, Any]]:
        """Option rows and the letter-mode meta from each question's top-k (fill rule applied)."""
        k = self._k()
        api = "chat" if tmpl.chat else "completions"
        rows: list[list[float]] = []
        truncated: dict[str, dict[str, Any]] = {}
        blind = 0
        for q, top in zip(task, tops, strict=True):
            row, missing, unseen = map_top_logprobs(top, len(q.choices))
            rows.append(row)
            if missing:
                truncated[q.id] = {"missing": missing, "unseen_mass": unseen}
                blind += len(missing) == len(q.choices)
        if blind > self.max_blind * len(task):
            raise ModelError(
                f"model {self.model!r} put no option letter in its top-{k} for {blind} of "
                f"{len(task)} questions, so their scores would be chance level. Use a template "
                "that ends the prompt where the letter comes (a plain one such as daca1 over "
                "/v1/completions), or a larger top-k if the server allows"
            )
        extra = {
            "api": api,
            "logit_kind": "topk_logprobs",
            "topk": {
                "k": k,
                "floor": TOPK_FLOOR,
                "fill": "floor (missing options get log-prob floor; DACA missing='spread' "
                "can share unseen_mass among them instead)",
                "truncated": truncated,
            },
            "option_mapping": "strip whitespace, Ġ/▁ and ()[]{}.:,;*\"'; case-insensitive; "
            "log-sum-exp over tokens of one option",
            "example_prompt": first.get("prompt", first.get("messages")),
        }
        return rows, extra

    async def _cloze(
        self, task: Task, tmpl: Template, normalization: Normalization
    ) -> tuple[list[list[float]], dict[str, Any]]:
        items: list[tuple[int, str, str]] = []  # (question index, context, continuation)
        for i, q in enumerate(task):
            context, conts = tmpl.cloze(q)
            stripped = context.rstrip()
            items.extend((i, stripped, context[len(stripped) :] + c) for c in conts)

        async def job(j: int) -> tuple[float, int]:
            _, ctx, cont = items[j]
            payload = self._completion(ctx + cont, echo=True)
            lp = await self._post(client, "/completions", payload, j, parse=_echo_logprobs)
            return continuation_logprob(lp, len(ctx), len(ctx + cont), task[items[j][0]].id)

        async with self._client() as client:
            with self._bar(len(items)) as bar:
                out = await self._gather(
                    [functools.partial(job, j) for j in range(len(items))], bar
                )
        rows: list[list[float]] = [[] for _ in task]
        for (i, _, cont), (lp, n) in zip(items, out, strict=True):
            value = (
                lp
                if normalization == "sum"
                else lp / (n if normalization == "mean" else max(1, len(cont)))
            )
            rows[i].append(value)
        return rows, {
            "api": "completions",
            "logit_kind": "loglikelihood",
            "normalization": normalization,
        }

    def _bar(self, total: int) -> Any:
        from llmcal.progress import progress

        return progress(total, f"scoring {self.model}", unit="req", enabled=self.progress)


def continuation_logprob(lp: dict[str, Any], start: int, end: int, qid: str) -> tuple[float, int]:
    """Sum of echoed log-probs of the tokens whose text starts in ``[start, end)``; (sum, count)."""
    offsets, values = lp.get("text_offset") or [], lp.get("token_logprobs") or []
    picked = [v for o, v in zip(offsets, values, strict=False) if start <= o < end]
    if not picked or any(v is None for v in picked):
        raise EndpointError(
            f"question {qid!r}: the server's echo gave no log-probs for the option text; "
            "it does not support echo properly, use --mode letter"
        )
    return float(sum(picked)), len(picked)


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = None if value is None else float(value)
    except ValueError:
        return None
    return None if seconds is None or not math.isfinite(seconds) else max(0.0, seconds)


def _reason_key(reason: str) -> str:
    return reason.split(" (", 1)[0]


def _number(value: Any, what: str) -> float | None:
    """A log-prob from a reply: a number or null (-inf allowed: probability 0)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedReply(
            f"{what} is the {type(value).__name__} {quote(value, 40)}, not a number"
        )
    f = float(value)
    if math.isnan(f) or f == math.inf:
        raise MalformedReply(f"{what} is {f}, not a log-probability")
    return f


def _logprobs(body: Any) -> dict[str, Any]:
    """``choices[0].logprobs`` of a reply ({} when absent), its shape checked."""
    if not isinstance(body, dict):
        raise MalformedReply(f"the reply is a JSON {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedReply(f"'choices' is not a non-empty list of objects ({quote(choices, 60)})")
    lp = choices[0].get("logprobs")
    if lp is None:
        return {}
    if not isinstance(lp, dict):
        raise MalformedReply(f"'choices[0].logprobs' is not an object ({quote(lp, 60)})")
    return lp


def _finish_reason(body: Any) -> str | None:
    try:
        return str(body["choices"][0].get("finish_reason"))
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def _completion_top(body: Any, position: int) -> list[tuple[str, float]]:
    """(token, log-prob) pairs of ``top_logprobs[position]`` of a /completions response."""
    tops = _logprobs(body).get("top_logprobs")
    if tops is None:
        return []
    if not isinstance(tops, list):
        raise MalformedReply(f"'top_logprobs' is not a list ({quote(tops, 60)})")
    if len(tops) <= position or tops[position] is None:
        return []
    entry = tops[position]
    if not isinstance(entry, dict):
        raise MalformedReply(f"'top_logprobs[{position}]' is not an object ({quote(entry, 60)})")
    out: list[tuple[str, float]] = []
    for token, value in entry.items():
        f = _number(value, f"the log-prob of token {quote(token, 20)}")
        if f is not None:
            out.append((str(token), f))
    return out


def _chat_top(body: Any) -> list[tuple[str, float]]:
    """(token, log-prob) pairs of the first generated token of a /chat/completions response."""
    content = _logprobs(body).get("content")
    if content is None or content == []:
        return []
    if not isinstance(content, list) or not isinstance(content[0], dict):
        raise MalformedReply(f"'logprobs.content' is not a list of objects ({quote(content, 60)})")
    top = content[0].get("top_logprobs")
    if top is None:
        return []
    if not isinstance(top, list):
        raise MalformedReply(f"'top_logprobs' is not a list ({quote(top, 60)})")
    out: list[tuple[str, float]] = []
    for e in top:
        if not isinstance(e, dict) or not isinstance(e.get("token"), str):
            raise MalformedReply(f"a top_logprobs entry has no token text ({quote(e, 60)})")
        f = _number(e.get("logprob"), f"the log-prob of token {quote(e['token'], 20)}")
        if f is not None:
            out.append((e["token"], f))
    return out


def _echo_logprobs(body: Any) -> dict[str, Any]:
    """The echoed prompt log-probs of a /completions reply, every list's type checked."""
    lp = _logprobs(body)
    tokens, values, offsets = (lp.get(k) for k in ("tokens", "token_logprobs", "text_offset"))
    for name, value in (("tokens", tokens), ("token_logprobs", values), ("text_offset", offsets)):
        if value is not None and not isinstance(value, list):
            raise MalformedReply(f"'logprobs.{name}' is not a list ({quote(value, 60)})")
    if tokens is not None and not all(isinstance(t, str) for t in tokens):
        raise MalformedReply("'logprobs.tokens' holds a non-string")
    if values is not None:
        for j, v in enumerate(values):
            _number(v, f"token_logprobs[{j}]")
    if offsets is not None and not all(
        isinstance(o, int) and not isinstance(o, bool) for o in offsets
    ):
        raise MalformedReply("'logprobs.text_offset' holds a non-integer")
    if values is not None and offsets is not None and len(values) != len(offsets):
        raise MalformedReply(
            f"'token_logprobs' has {len(values)} entries but 'text_offset' {len(offsets)}"
        )
    return lp


def _completion_top0(body: Any) -> list[tuple[str, float]]:
    return _completion_top(body, 0)
