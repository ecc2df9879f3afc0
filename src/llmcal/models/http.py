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

from llmcal.errors import ConfigError, EndpointError, ModelError
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


def normalize_endpoint(url: str) -> str:
    """``http://host:port`` → ``http://host:port/v1``; other paths are kept (no trailing /)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"--endpoint {public_url(url)!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1"
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
    ) -> None:
        urls = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not urls:
            raise ConfigError("give at least one --endpoint URL")
        if not model or not model.strip():
            raise ConfigError("--model: give the model name the server serves")
        for name, value in (("concurrency", concurrency), ("top_k", top_k)):
            if int(value) < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if not (timeout > 0 and deadline > 0 and backoff >= 0 and backoff_max >= 0):
            raise ConfigError("timeout and deadline must be > 0, backoff values >= 0")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {max_retries}")
        self.endpoints = [normalize_endpoint(u) for u in urls]
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
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(
                    f"--api-key-env {api_key_env}: that environment variable is not set or empty; "
                    f"export {api_key_env}=... before running"
                )
            self._headers["Authorization"] = f"Bearer {key}"
        self.api_key_env = api_key_env

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

    async def _post(
        self,
        client: Any,
        path: str,
        payload: dict[str, Any],
        idx: int,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """POST with retries; returns the parsed JSON body (``headers`` are added per request)."""
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
                resp = await asyncio.wait_for(
                    client.post(url, json=payload, headers=headers),
                    timeout=min(self.timeout, remaining),
                )
            except (asyncio.TimeoutError, httpx.TimeoutException):
                last = "timeout"
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__})"
            else:
                if resp.status_code == 200:
                    try:
                        body = resp.json()
                    except ValueError:
                        last = "unreadable response body"
                    else:
                        self.stats.seconds += loop.time() - start
                        return body
                elif resp.status_code in RETRY_STATUSES or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}"
                    retry_after = _retry_after(resp.headers.get("retry-after"))
                else:
                    self.stats.failed += 1
                    err = EndpointError(self._refusal(url, resp))
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

    def _refusal(self, url: str, resp: Any) -> str:
        text = resp.text[:300].replace("\n", " ")
        hint = ""
        if resp.status_code in (401, 403):
            hint = (
                "; the server wants credentials: pass --api-key-env NAME with the key in $NAME"
                if self.api_key_env is None
                else f"; check the key in ${self.api_key_env}"
            )
        elif resp.status_code == 404:
            hint = (
                f"; check the endpoint URL (…/v1) and that the server serves model {self.model!r}"
            )
        return f"{public_url(url)} answered HTTP {resp.status_code}: {text}{hint}"

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
                    body = await self._post(client, "/completions", payload, 0)
                except EndpointError as exc:
                    if getattr(exc, "status", None) not in _UNSUPPORTED:
                        raise  # down, or refusing us (e.g. 401): no use probing further
                    continue
                top = _completion_top(body, 0)
                completions, cap = bool(top), len(top)
                break
            else:
                self._min_tokens = False
            try:
                msgs = [{"role": "user", "content": _PROBE_PROMPT.removesuffix("\nAnswer:")}]
                body = await self._post(client, "/chat/completions", self._chat(msgs), 0)
                top = _chat_top(body)
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
        lp = _logprobs(await self._post(client, "/completions", payload, 0))
        tokens, values, offsets = lp.get("tokens"), lp.get("token_logprobs"), lp.get("text_offset")
        if not tokens or not values or not offsets or sum(o < len(_ECHO_TEXT) for o in offsets) < 4:
            return "ignored", "the response carries no prompt tokens"
        prompt_pos = [j for j, o in enumerate(offsets) if 0 < o < len(_ECHO_TEXT)]
        compared: list[str] = []
        for j in prompt_pos[-3:]:
            if values[j] is None:
                continue
            prefix = _ECHO_TEXT[: offsets[j]]
            body = await self._post(client, "/completions", self._completion(prefix), 0)
            top = dict(_completion_top(body, 0))
            if tokens[j] not in top:
                continue
            echoed, direct = float(values[j]), float(top[tokens[j]])
            compared.append(f"{tokens[j]!r}: echo {echoed:.4f} vs next-token {direct:.4f}")
            if abs(echoed - direct) > 0.02:
                return "inconsistent", compared[-1]
        if not compared:
            return "unverifiable", "no echoed token was in the server's next-token top-k"
        return "ok", "; ".join(compared)

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
        body = await self._post(client, path, body_in, idx, headers)
        top = _chat_top(body) if tmpl.chat else _completion_top(body, 0)
        if not top:
            why = "the server does not honour logprobs on " + path
            if _finish_reason(body) == "stop":
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
            lp = _logprobs(await self._post(client, "/completions", payload, j))
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
        from tqdm.auto import tqdm

        disable = not self.progress if self.progress is not None else None
        return tqdm(
            total=total, desc=f"scoring {self.model}", unit="req", disable=disable, leave=False
        )


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
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None


def _reason_key(reason: str) -> str:
    return reason.split(" (", 1)[0]


def _logprobs(body: Any) -> dict[str, Any]:
    try:
        lp = body["choices"][0].get("logprobs") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        raise EndpointError(f"malformed completion response: {str(body)[:200]}") from None
    return lp if isinstance(lp, dict) else {}


def _finish_reason(body: Any) -> str | None:
    try:
        return str(body["choices"][0].get("finish_reason"))
    except (KeyError, IndexError, TypeError, AttributeError):
        return None


def _completion_top(body: Any, position: int) -> list[tuple[str, float]]:
    """(token, log-prob) pairs of ``top_logprobs[position]`` of a /completions response."""
    tops = _logprobs(body).get("top_logprobs") or []
    if len(tops) <= position or not isinstance(tops[position], dict):
        return []
    return [(str(t), float(v)) for t, v in tops[position].items() if v is not None]


def _chat_top(body: Any) -> list[tuple[str, float]]:
    """(token, log-prob) pairs of the first generated token of a /chat/completions response."""
    content = _logprobs(body).get("content") or []
    if not content or not isinstance(content[0], dict):
        return []
    top = content[0].get("top_logprobs") or []
    return [
        (str(e["token"]), float(e["logprob"]))
        for e in top
        if isinstance(e, dict) and "token" in e and e.get("logprob") is not None
    ]
