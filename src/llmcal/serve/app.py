"""``llmcal serve``: an OpenAI-compatible proxy that adds calibrated confidence to answers.

Starlette app (run by uvicorn) in front of one or more OpenAI-compatible servers, talking to them
with one shared :class:`httpx.AsyncClient`.

* ``POST /v1/completions`` and ``POST /v1/chat/completions`` with an ``llmcal`` field
  (``{"question": str, "choices": [str, ...], "context": str?, "template": str?}``): the proxy
  renders the question with the template (:mod:`llmcal.tasks.templates`), asks the upstream for
  the top-k log-probs of the answer letter exactly as :class:`~llmcal.models.http.HTTPScorer`
  does, applies the calibrator and the selective rule (:mod:`llmcal.serve.core`) and returns the
  upstream response with an ``llmcal`` object added. If the body carries its own ``prompt`` /
  ``messages``, that request is forwarded too (concurrently) and its response is the one
  returned; otherwise the scoring response (one token, with log-probs) is.
* The same endpoints with an ``llmcal`` field *without* ``choices`` (``{"question": str,
  "answer": str?, "context": str?, "id": str?}``) ask for a free-form answer's confidence: the
  answer is the client's ``answer``, or the upstream's reply to the client's own ``prompt`` /
  ``messages``, or the reply to the ``llmcal generate`` prompt of the question; a follow-up
  P(True) request (:mod:`llmcal.confidence`) scores it and the free-form calibrator
  (``--freeform-calibrator``, fitted on P(True) Scores) and its selective rule decide.
* Every other request under ``/v1`` (including ``GET /v1/models`` and streamed generations) is
  passed through unchanged. ``GET /health`` reports the proxy and checks the upstream.

The client's ``Authorization`` header is forwarded to the upstream on every call and never
logged or echoed; error bodies are scrubbed of it. Upstream faults after the HTTPScorer retry
rules become 502 (or 504 on a timeout) with a JSON body ``{"error": {"message", "type",
"code"}}``; bad ``llmcal`` fields are 422, a body that is not a JSON object 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from llmcal._version import __version__
from llmcal.calibrate.base import Calibrator
from llmcal.errors import ConfigError, EndpointError, LLMCalError, ModelError
from llmcal.models.base import build_scores
from llmcal.models.http import RETRY_STATUSES, HTTPScorer, public_url
from llmcal.serve.core import (
    NO_REFERENCE,
    SelectiveRule,
    answers_from_scores,
    calibrator_info,
    check_view,
    default_template,
    free_answers_from_scores,
)
from llmcal.tasks.templates import Template, get_template
from llmcal.tasks.types import LETTERS, Question, Task

log = logging.getLogger("llmcal.serve")

#: Request headers forwarded to the upstream (everything else stays at the proxy).
FORWARDED_HEADERS = ("authorization", "content-type", "accept", "openai-organization")
#: Response headers not copied back (hop-by-hop, or no longer true after httpx decoding).
_DROPPED = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")
_SPEC_KEYS = frozenset({"question", "choices", "context", "template", "id"})
_FREE_KEYS = frozenset({"question", "answer", "context", "id"})
#: Generation defaults when the proxy writes the free-form prompt itself (as ``llmcal generate``).
FREE_DEFAULTS = {"max_tokens": 24, "temperature": 0.0}


class RequestError(Exception):
    """A request the proxy answers with an error status and a JSON message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without any of ``secrets`` and without bearer tokens."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return _BEARER.sub(r"\1***", text)


def is_free_form(spec: Any) -> bool:
    """An ``llmcal`` field without ``choices`` asks for a free-form answer's confidence."""
    return isinstance(spec, Mapping) and "choices" not in spec


def _common_fields(spec: Mapping[str, Any], known: frozenset[str]) -> tuple[str, str, str | None]:
    """(id, question, context) of an ``llmcal`` field, checked (422 on anything malformed)."""
    unknown = sorted(set(spec) - known)
    if unknown:
        hint = (
            '; "template" and "choices" are for multiple-choice requests'
            if known is _FREE_KEYS and "template" in unknown
            else ""
        )
        raise RequestError(
            422, f'"llmcal" has unknown field(s) {unknown}; known: {sorted(known)}{hint}'
        )
    question = spec.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RequestError(422, '"llmcal.question" is missing or not a non-empty string')
    context = spec.get("context")
    if context is not None and not isinstance(context, str):
        raise RequestError(422, '"llmcal.context" must be a string')
    qid = spec.get("id", "request")
    if not isinstance(qid, str) or not qid:
        raise RequestError(422, '"llmcal.id" must be a non-empty string')
    return qid, question, context


def parse_free_spec(spec: Mapping[str, Any]) -> tuple[str, str, str | None, str | None]:
    """(id, question, context, answer or None) of a free-form ``llmcal`` field."""
    qid, question, context = _common_fields(spec, _FREE_KEYS)
    answer = spec.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise RequestError(422, '"llmcal.answer" must be a string (the answer to judge)')
    return qid, question, context, answer


def parse_spec(spec: Any, default: Template) -> tuple[Question, Template]:
    """The Question and Template of an ``llmcal`` request field (422 on anything malformed)."""
    if not isinstance(spec, Mapping):
        raise RequestError(
            422,
            '"llmcal" must be an object {"question": ..., "choices": [...]} (multiple choice) '
            'or {"question": ...} (free-form)',
        )
    qid, question, context = _common_fields(spec, _SPEC_KEYS)
    choices = spec.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise RequestError(422, '"llmcal.choices" is missing or not a list of strings')
    if len(choices) < 2:
        raise RequestError(422, f'"llmcal.choices" needs at least 2 options, got {len(choices)}')
    if len(choices) > len(LETTERS):
        raise RequestError(
            422, f'"llmcal.choices" has {len(choices)} options; at most {len(LETTERS)} (A-Z)'
        )
    name = spec.get("template")
    if name is None:
        tmpl = default
    elif not isinstance(name, str):
        raise RequestError(422, '"llmcal.template" must be a template name such as "daca1"')
    else:
        try:
            tmpl = get_template(name)
        except LLMCalError as exc:
            raise RequestError(422, f'"llmcal.template": {exc}') from None
    if tmpl.shots:
        raise RequestError(
            422,
            f'"llmcal.template" {tmpl.name!r} needs few-shot examples; the proxy serves '
            "zero-shot templates (daca1..daca5, chat)",
        )
    try:
        q = Question(qid, question, tuple(choices), context=context)
    except LLMCalError as exc:
        raise RequestError(422, f'"llmcal": {exc}') from None
    return q, tmpl


def _error(status: int, message: str, kind: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": status}}, status_code=status
    )


class Proxy:
    """The proxy's state: upstream scorer, calibrator, selective rule and the shared client."""

    def __init__(
        self,
        upstream: str | Sequence[str],
        calibrator: Calibrator | None,
        *,
        calibrator_file: str | os.PathLike[str] | None = None,
        selective: SelectiveRule | None = None,
        freeform_calibrator: Calibrator | None = None,
        freeform_calibrator_file: str | os.PathLike[str] | None = None,
        freeform_selective: SelectiveRule | None = None,
        model: str | None = None,
        template: str | Template | None = None,
        timeout: float = 30.0,
        deadline: float = 120.0,
        retries: int = 2,
        top_k: int = 20,
        max_connections: int = 64,
        max_body: int = 1 << 20,
    ) -> None:
        self.model_from_upstream = model is None
        self.scorer = HTTPScorer(
            upstream,
            model or "unknown",
            concurrency=max_connections,
            timeout=timeout,
            deadline=deadline,
            max_retries=retries,
            top_k=top_k,
            progress=False,
            endpoint_flag="--upstream",
        )
        if calibrator is None and freeform_calibrator is None:
            raise ConfigError(
                "llmcal serve needs --calibrator (multiple choice) or --freeform-calibrator "
                "(free-form answers, P(True)), or both"
            )
        if calibrator is not None:
            check_view(calibrator, "options", f"--calibrator {calibrator_file or ''}".rstrip())
        if freeform_calibrator is not None:
            what = f"--freeform-calibrator {freeform_calibrator_file or ''}".rstrip()
            check_view(freeform_calibrator, "answer", what)
        self.calibrator = calibrator
        self.selective = selective
        self.freeform = freeform_calibrator
        self.freeform_selective = freeform_selective
        self.template = default_template(calibrator, template)
        self.info = None if calibrator is None else calibrator_info(calibrator, calibrator_file)
        self.freeform_info = (
            None
            if freeform_calibrator is None
            else calibrator_info(freeform_calibrator, freeform_calibrator_file)
        )
        self.max_body = int(max_body)
        self.client: Any = None
        self._probe_lock: asyncio.Lock | None = None
        self._counter = itertools.count()

    @property
    def base(self) -> str:
        """The first upstream URL (…/v1)."""
        return self.scorer.endpoints[0]

    # -- lifecycle ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """Open the shared upstream client for the life of the server."""
        async with self.scorer._client() as client:
            self.client = client
            self._probe_lock = asyncio.Lock()
            yield
        self.client = None

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _headers(request: Any) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}

    @staticmethod
    def _secrets(request: Any) -> list[str]:
        auth = request.headers.get("authorization", "")
        token = auth.split(None, 1)[1] if " " in auth else auth
        return [s for s in (auth, token) if s]

    async def _body(self, request: Any) -> bytes:
        body: bytes = await request.body()
        if len(body) > self.max_body:
            raise RequestError(
                413, f"request body is {len(body)} bytes; the limit is {self.max_body}"
            )
        return body

    def _upstream_failure(self, exc: EndpointError, secrets: Sequence[str]) -> RequestError:
        status = getattr(exc, "status", None)
        reason = getattr(exc, "reason", None)
        where = ", ".join(self.scorer.public_endpoints)
        if status in (401, 403):
            msg = f"the upstream {where} refused the credentials (HTTP {status})"
            return RequestError(status, msg, "upstream_auth_error")
        if reason == "timeout":
            msg = (
                f"the upstream {where} did not answer in time ({self.scorer.timeout:g}s per "
                f"attempt, {self.scorer.max_retries} retries)"
            )
            return RequestError(504, msg, "upstream_timeout")
        if reason is not None:
            msg = (
                f"the upstream {where} failed after {getattr(exc, 'attempts', '?')} attempt(s): "
                f"{reason}"
            )
            return RequestError(502, msg, "upstream_error")
        return RequestError(502, "upstream error: " + scrub(str(exc), secrets), "upstream_error")

    async def _capabilities(self, headers: dict[str, str]) -> Any:
        """Probe the upstream once (with the first caller's credentials)."""
        if self.scorer.capabilities is None:
            assert self._probe_lock is not None
            async with self._probe_lock:
                if self.scorer.capabilities is None:
                    import httpx

                    async with httpx.AsyncClient(
                        headers={**self.scorer._headers, **headers},
                        timeout=httpx.Timeout(self.scorer.timeout),
                        trust_env=False,
                    ) as client:
                        if self.model_from_upstream:
                            self.scorer.model = self.scorer.name = await self._served_model(client)
                        await self.scorer._probe(False, client=client)
        return self.scorer.capabilities

    async def _served_model(self, client: Any) -> str:
        """The first model id of the upstream's ``GET /models``."""
        import httpx

        try:
            resp = await client.get(self.base + "/models")
            if resp.status_code in (401, 403):
                err = EndpointError(f"HTTP {resp.status_code}")
                err.status = resp.status_code  # type: ignore[attr-defined]
                raise err
            model = resp.json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise RequestError(
                502,
                f"could not read the served model name from {public_url(self.base)}/models "
                f"({type(exc).__name__}); start the proxy with --model NAME",
                "upstream_error",
            ) from None
        if not isinstance(model, str) or not model:
            raise RequestError(502, "the upstream's /models lists no model id; use --model NAME")
        return model

    async def _send_json(
        self, path: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, Any]:
        """POST a non-streamed request with the scorer's retry rules; (status, JSON body).

        Upstream 4xx answers other than the retried ones are returned as they are (they are the
        client's business); 5xx, timeouts, dropped connections and unreadable bodies are retried
        and then end in an EndpointError.
        """
        import httpx

        s = self.scorer
        loop = asyncio.get_running_loop()
        end = loop.time() + s.deadline
        last, attempt = "no attempt", 0
        idx = next(self._counter)
        while True:
            url = s.endpoints[(idx + attempt) % len(s.endpoints)] + path
            remaining = end - loop.time()
            if remaining <= 0:
                break
            try:
                resp = await asyncio.wait_for(
                    self.client.post(url, json=payload, headers=headers),
                    timeout=min(s.timeout, remaining),
                )
            except (asyncio.TimeoutError, httpx.TimeoutException):
                last = "timeout"
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__})"
            else:
                if resp.status_code in RETRY_STATUSES or resp.status_code >= 500:
                    last = f"HTTP {resp.status_code}"
                else:
                    try:
                        body = resp.json()
                    except ValueError:
                        if resp.status_code == 200:
                            last = "unreadable response body"
                        else:
                            body = {"error": {"message": resp.text[:300]}}
                            return resp.status_code, body
                    else:
                        return resp.status_code, body
            attempt += 1
            if attempt > s.max_retries:
                break
            await asyncio.sleep(min(s._delay(attempt, None), max(0.0, end - loop.time())))
        err = EndpointError(f"request to {public_url(url)} failed: {last}")
        err.reason = last  # type: ignore[attr-defined]
        err.attempts = attempt  # type: ignore[attr-defined]
        raise err

    # -- endpoints ----------------------------------------------------------------------------
    async def health(self, request: Any) -> Any:
        """The proxy's state and whether the upstream answers ``GET /models``."""
        import httpx
        from starlette.responses import JSONResponse

        state: dict[str, Any] = {"url": ", ".join(self.scorer.public_endpoints)}
        try:
            resp = await self.client.get(
                self.base + "/models", headers=self._headers(request), timeout=5.0
            )
            state["status"] = resp.status_code
        except httpx.HTTPError as exc:
            state["status"] = f"unreachable ({type(exc).__name__})"
        ok = state["status"] == 200
        body = {
            "status": "ok" if ok else "degraded",
            "llmcal_version": __version__,
            "upstream": state,
            "calibrator": self.info,
            "selective": None if self.selective is None else self.selective.describe(),
            "template": self.template.name,
            "freeform": None
            if self.freeform_info is None
            else {
                "calibrator": self.freeform_info,
                "selective": None
                if self.freeform_selective is None
                else self.freeform_selective.describe(),
                "confidence": "ptrue",
            },
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    async def generate(self, request: Any) -> Any:
        """POST /v1/completions and /v1/chat/completions: calibrate if asked, else pass through."""
        secrets = self._secrets(request)
        try:
            raw = await self._body(request)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if not isinstance(body, dict) or "llmcal" not in body:
                return await self.passthrough(request, raw)
            return await self._calibrated(request, body)
        except RequestError as exc:
            return _error(exc.status, scrub(exc.message, secrets), exc.kind)
        except EndpointError as exc:
            err = self._upstream_failure(exc, secrets)
            log.warning("%s %s: %s", request.method, request.url.path, err.message)
            return _error(err.status, err.message, err.kind)

    async def _calibrated(self, request: Any, body: dict[str, Any]) -> Any:
        from starlette.responses import JSONResponse

        start = time.perf_counter()
        spec = body.pop("llmcal")
        if is_free_form(spec):
            return await self._free_form(request, body, spec, start)
        if self.calibrator is None:
            raise RequestError(
                422,
                "this proxy calibrates free-form answers only (no --calibrator for multiple "
                'choice); send "llmcal": {"question": ...} without "choices"',
            )
        q, tmpl = parse_spec(spec, self.template)
        if body.get("stream"):
            raise RequestError(422, '"stream": true cannot be combined with "llmcal"')
        chat_path = request.url.path.endswith("/chat/completions")
        headers = self._headers(request)
        caps = await self._capabilities(headers)
        try:
            self.scorer.check_capabilities("letter", tmpl.chat)
        except LLMCalError as exc:
            raise RequestError(502, str(exc), "upstream_error") from None
        path, payload = self.scorer.letter_request(tmpl, q)
        if isinstance(body.get("model"), str):
            payload["model"] = body["model"]
        idx = next(self._counter)
        scoring = self.scorer.letter_top(self.client, tmpl, q, idx, (path, payload), headers)
        own = "messages" in body if chat_path else "prompt" in body
        if own:
            sub = "/chat/completions" if chat_path else "/completions"
            (top, _), (status, upstream) = await asyncio.gather(
                scoring, self._send_json(sub, body, headers)
            )
            if status != 200:
                return JSONResponse(upstream, status_code=status)
        else:
            top, upstream = await scoring
        task = Task("llmcal-serve", [q])
        try:
            rows, extra = self.scorer.letter_rows(task, [top], tmpl, payload)
        except ModelError as exc:
            raise RequestError(502, str(exc), "upstream_error") from None
        meta = self.scorer.scores_meta("letter", tmpl, (), caps, extra)
        try:
            answer = answers_from_scores(
                build_scores(task, rows, meta), self.calibrator, self.selective, self.info
            )[0]
        except LLMCalError as exc:
            raise RequestError(422, f"the calibrator cannot take this question: {exc}") from None
        out = answer.to_dict()
        missing = extra["topk"]["truncated"].get(q.id)
        out["template"] = tmpl.name
        out["topk_missing"] = [] if missing is None else missing["missing"]
        out["selective"] = None if self.selective is None else self.selective.describe()
        return self._respond(upstream, out, start)

    @staticmethod
    def _respond(upstream: Any, out: dict[str, Any], start: float) -> Any:
        from starlette.responses import JSONResponse

        out["seconds"] = round(time.perf_counter() - start, 6)
        if not isinstance(upstream, dict):
            upstream = {"upstream": upstream}
        return JSONResponse({**upstream, "llmcal": out})

    async def _free_form(
        self, request: Any, body: dict[str, Any], spec: Mapping[str, Any], start: float
    ) -> Any:
        """A free-form answer (the upstream's, or the client's) with calibrated P(True).

        Without ``llmcal.answer`` the generation request is forwarded first: the client's own
        ``prompt`` / ``messages`` (the whole reply text is judged), or else the ``llmcal
        generate`` prompt of the question (greedy, 24 tokens, cut at the first newline, unless
        the body says otherwise). Then the follow-up P(True) request scores "is this answer
        true?" exactly as ``llmcal confidence --method ptrue`` does.
        """
        from starlette.responses import JSONResponse

        from llmcal.confidence import PTRUE_TEMPLATE, one_answer, ptrue_scores, ptrue_task
        from llmcal.models.generate import (
            GenerationConfig,
            http_generation,
            open_messages,
            open_prompt,
        )
        from llmcal.tasks.openended import OpenQuestion

        if self.freeform is None:
            raise RequestError(
                422,
                'this proxy has no calibrator for free-form answers ("llmcal" without '
                '"choices"); start it with --freeform-calibrator FILE (fitted on P(True) Scores)',
            )
        qid, question, context, given = parse_free_spec(spec)
        if body.get("stream"):
            raise RequestError(422, '"stream": true cannot be combined with "llmcal"')
        chat_path = request.url.path.endswith("/chat/completions")
        own = "messages" in body if chat_path else "prompt" in body
        if given is not None and own:
            raise RequestError(
                422,
                '"llmcal.answer" judges an answer you already have; leave out the '
                f'"{"messages" if chat_path else "prompt"}" (or "llmcal.answer") so that only '
                "one answer is judged",
            )
        headers = self._headers(request)
        caps = await self._capabilities(headers)
        try:
            self.scorer.check_capabilities("letter", False)
        except LLMCalError as exc:
            raise RequestError(502, str(exc), "upstream_error") from None
        upstream: Any = None
        if given is None:
            if not own:
                oq = OpenQuestion(qid, question, NO_REFERENCE, context=context)
                if chat_path:
                    body["messages"] = open_messages(oq)
                else:
                    body["prompt"] = open_prompt(oq)
                body = {**FREE_DEFAULTS, "model": self.scorer.model, **body}
            sub = "/chat/completions" if chat_path else "/completions"
            status, upstream = await self._send_json(sub, body, headers)
            if status != 200:
                return JSONResponse(upstream, status_code=status)
            config = GenerationConfig(stop_at_newline=not own)
            text = http_generation(upstream, chat_path, qid, config).text
            source = "client prompt" if own else "llmcal prompt"
        else:
            text, source = given, "client"
        answers = one_answer(qid, question, text)
        task = ptrue_task(answers)
        pq = task.questions[0]
        path, payload = self.scorer.letter_request(PTRUE_TEMPLATE, pq)
        if isinstance(body.get("model"), str):
            payload["model"] = body["model"]
        idx = next(self._counter)
        top, scoring = await self.scorer.letter_top(
            self.client, PTRUE_TEMPLATE, pq, idx, (path, payload), headers
        )
        try:
            rows, extra = self.scorer.letter_rows(task, [top], PTRUE_TEMPLATE, payload)
        except ModelError as exc:
            raise RequestError(502, str(exc), "upstream_error") from None
        meta = self.scorer.scores_meta("letter", PTRUE_TEMPLATE, (), caps, extra)
        raw = ptrue_scores(answers, build_scores(task, rows, meta))
        try:
            answer = free_answers_from_scores(
                raw, [text], self.freeform, self.freeform_selective, self.freeform_info
            )[0]
        except LLMCalError as exc:
            raise RequestError(422, f"the calibrator cannot take this answer: {exc}") from None
        out = answer.to_dict()
        missing = extra["topk"]["truncated"].get(pq.id)
        out["answer_source"] = source
        out["topk_missing"] = [] if missing is None else missing["missing"]
        out["selective"] = (
            None if self.freeform_selective is None else self.freeform_selective.describe()
        )
        return self._respond(upstream if upstream is not None else scoring, out, start)

    async def passthrough(self, request: Any, raw: bytes | None = None) -> Any:
        """Forward a request to the same path under the upstream ``/v1`` (streams stay streams)."""
        import httpx
        from starlette.background import BackgroundTask
        from starlette.responses import Response, StreamingResponse

        secrets = self._secrets(request)
        path = request.url.path.removeprefix("/v1")
        url = self.base + path
        if request.url.query:
            url += "?" + request.url.query
        headers = self._headers(request)
        try:
            if raw is None:
                raw = await self._body(request)
            body: Any = None
            with contextlib.suppress(ValueError):
                body = json.loads(raw) if raw else None
            streaming = isinstance(body, dict) and bool(body.get("stream"))
            if request.method == "POST" and isinstance(body, dict) and not streaming:
                status, out = await self._send_json(path, body, headers)
                text = scrub(json.dumps(out), secrets) if status != 200 else json.dumps(out)
                return Response(text, status_code=status, media_type="application/json")
            req = self.client.build_request(request.method, url, content=raw, headers=headers)
            try:
                resp = await self.client.send(req, stream=True)
            except httpx.TimeoutException:
                raise RequestError(
                    504, f"the upstream {public_url(self.base)} did not answer in time",
                    "upstream_timeout",
                ) from None  # fmt: skip
            except httpx.TransportError as exc:
                raise RequestError(
                    502,
                    f"the upstream {public_url(self.base)} is unreachable ({type(exc).__name__})",
                    "upstream_error",
                ) from None
            kept = {k: v for k, v in resp.headers.items() if k.lower() not in _DROPPED}
            return StreamingResponse(
                resp.aiter_raw(),
                status_code=resp.status_code,
                headers=kept,
                background=BackgroundTask(resp.aclose),
            )
        except RequestError as exc:
            return _error(exc.status, scrub(exc.message, secrets), exc.kind)
        except EndpointError as exc:
            err = self._upstream_failure(exc, secrets)
            log.warning("%s %s: %s", request.method, request.url.path, err.message)
            return _error(err.status, err.message, err.kind)


def create_app(proxy: Proxy) -> Any:
    """The Starlette application of ``proxy``."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    routes = [
        Route("/health", proxy.health, methods=["GET"]),
        Route("/v1/completions", proxy.generate, methods=["POST"]),
        Route("/v1/chat/completions", proxy.generate, methods=["POST"]),
        Route(
            "/v1/{path:path}",
            proxy.passthrough,
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        ),
    ]
    return Starlette(routes=routes, lifespan=proxy.lifespan)


class ServerThread:
    """Run an app with uvicorn on a loopback port in a background thread (tests, benchmarks)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        if port == 0:
            import socket

            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
        self.host, self.port = host, port
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("the llmcal proxy did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(15)


def serve(proxy: Proxy, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the proxy with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(proxy), host=host, port=port, log_level="info")
