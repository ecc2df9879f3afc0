"""Free-form generation: answers to open-ended questions, in-process (HF) or through endpoints.

:class:`HFGenerator` reuses an :class:`~llmcal.models.hf.HFScorer`'s model, tokenizer and left
padding. Prompts are length-sorted into batches, left-padded with explicit position ids, run
once, then decoded token by token on the KV cache. Greedy decoding takes the argmax of the raw
next-token logits, exactly what ``model.generate(do_sample=False)`` does without logits
processors; sampling draws from ``softmax(logits / T)`` with a numpy PCG64 stream per question
and sample (seeded by ``seed``, the question id and the sample index), so sampled answers do
not depend on batch composition or on a resume. The recorded token log-probs are always the
model's raw distribution at temperature 1.

Stopping: at an end-of-sequence token (``eos``), at a newline that follows some non-blank text
(``newline``; a newline before any text is skipped over, since small models often start with
one), at any user ``stop`` string (``stop``), or after ``max_new_tokens`` (``length``). The
answer text is the decoded text before the stop, stripped; token ids and log-probs include
the token that ended the answer, so the sequence likelihood is that of "this answer, then
stop".

:class:`HTTPGenerator` sends ``/v1/completions`` (plain templates) or ``/v1/chat/completions``
(chat) requests with ``logprobs`` through the :class:`~llmcal.models.http.HTTPScorer` client
(retries, backoff, API key from the environment). The server applies the stops; it reports
no token ids, so ``token_ids`` stay empty, and EOS and stop strings both read ``stop``.

:func:`generate_answers` runs either generator chunk by chunk with the checkpoint of
:mod:`llmcal.models.checkpoint` beside the output, so an interrupted run resumes.
"""

from __future__ import annotations

import datetime as _dt
import functools
import os
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from llmcal._version import __version__
from llmcal.answers import Answers
from llmcal.errors import ConfigError, EndpointError, ModelError
from llmcal.tasks.openended import OpenQuestion, OpenTask

OPEN_INSTRUCTION = "Answer the question with a short answer of a few words, no explanation."
OPEN_TEMPLATES = ("qa", "chat")


@dataclass(frozen=True)
class GenerationConfig:
    """How answers are generated (recorded in ``Answers.meta["generation"]``).

    ``temperature`` 0 is greedy. ``samples`` N > 0 adds N answers sampled at
    ``sample_temperature`` per question (for sample consistency); the main answer keeps
    ``temperature``.
    """

    max_new_tokens: int = 24
    temperature: float = 0.0
    samples: int = 0
    sample_temperature: float = 1.0
    stop: tuple[str, ...] = ()
    stop_at_newline: bool = True
    seed: int = 0
    template: str = "qa"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or self.sample_temperature <= 0:
            raise ConfigError(
                "--temperature must be >= 0 (0 = greedy) and the sample temperature > 0"
            )
        if self.samples < 0:
            raise ConfigError(f"--samples must be >= 0, got {self.samples}")
        if any(not s for s in self.stop):
            raise ConfigError("--stop strings must be non-empty")
        if self.template not in OPEN_TEMPLATES:
            raise ConfigError(
                f"unknown open-ended template {self.template!r}; use {', '.join(OPEN_TEMPLATES)}"
            )


@dataclass
class Generation:
    """One generated answer."""

    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    stop_reason: str


@dataclass
class AnswerRow:
    """What is stored per question (also the checkpoint row)."""

    prompt: str
    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    stop_reason: str
    samples: list[str] = field(default_factory=list)
    sample_logprobs: list[float] = field(default_factory=list)


def question_block(q: OpenQuestion, answer: str | None = None) -> str:
    """``[Passage: …\\n]Question: …\\nAnswer:`` (plus `` answer`` for a few-shot example)."""
    lines = [f"Passage: {q.context}"] if q.context else []
    lines.append(f"Question: {q.question}")
    lines.append("Answer:" + (f" {answer}" if answer is not None else ""))
    return "\n".join(lines)


def open_prompt(q: OpenQuestion, shots: Sequence[OpenQuestion] = ()) -> str:
    """The plain ``qa`` prompt: instruction, few-shot examples, the question, ``Answer:``."""
    parts = [OPEN_INSTRUCTION, ""]
    parts.extend(question_block(s, s.reference) + "\n" for s in shots)
    parts.append(question_block(q))
    return "\n".join(parts)


def open_messages(q: OpenQuestion, shots: Sequence[OpenQuestion] = ()) -> list[dict[str, str]]:
    """Chat messages of the ``chat`` template (few-shot examples as earlier turns)."""
    msgs: list[dict[str, str]] = []
    first = True
    for s in [*shots, q]:
        body = question_block(s).removesuffix("\nAnswer:")
        if first:
            body = f"{OPEN_INSTRUCTION}\n\n{body}"
            first = False
        msgs.append({"role": "user", "content": body})
        if s is not q:
            msgs.append({"role": "assistant", "content": s.reference})
    return msgs


def find_stop(text: str, stops: Sequence[str], newline: bool) -> tuple[int, str] | None:
    """Where the answer in ``text`` ends: (index, reason), or None when it goes on."""
    start = len(text) - len(text.lstrip())  # skip leading blank text (a first "\n")
    best: tuple[int, str] | None = None
    if newline:
        i = text.find("\n", start)
        if i >= 0:
            best = (i, "newline")
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, "stop")
    return best


def sample_rng(seed: int, qid: str, index: int) -> np.random.Generator:
    """The PCG64 stream of sample ``index`` of question ``qid``."""
    return np.random.default_rng([seed, zlib.crc32(qid.encode("utf-8")), index])


class Generator(Protocol):
    """Anything that turns open-ended questions into AnswerRows."""

    name: str

    def generate(
        self,
        questions: Sequence[OpenQuestion],
        config: GenerationConfig,
        shots: Sequence[OpenQuestion] = (),
    ) -> tuple[list[AnswerRow], dict[str, Any]]:
        """One AnswerRow per question, and the run's meta."""
        ...

    def settings(self) -> dict[str, Any]:
        """What determines the output (for checkpoint keys)."""
        ...


class HFGenerator:
    """Generate answers with a transformers causal LM (see the module docstring)."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.name = scorer.name
        self._torch = scorer._torch

    @classmethod
    def load(cls, model: str, **kwargs: Any) -> HFGenerator:
        """Load ``model`` (alias, .gguf, directory, hub id) as an HFScorer and wrap it."""
        from llmcal.models.hf import HFScorer

        return cls(HFScorer(model, **kwargs))

    def settings(self) -> dict[str, Any]:
        """Model identity, dtype and batch size (these decide the numbers)."""
        from llmcal.models.checkpoint import scorer_identity

        return {"generator": "hf", **scorer_identity(self.scorer)}

    # -- prompts ------------------------------------------------------------------------------
    def render(self, q: OpenQuestion, template: str, shots: Sequence[OpenQuestion] = ()) -> str:
        """The exact prompt text fed to the model (chat template applied for ``chat``)."""
        if template == "qa":
            return open_prompt(q, shots)
        tok = self.scorer.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ModelError(f"model {self.name!r} has no chat template; use --template qa")
        return str(
            tok.apply_chat_template(
                open_messages(q, shots), add_generation_prompt=True, tokenize=False
            )
        )

    def eos_ids(self) -> set[int]:
        """Token ids that end generation (the tokenizer's and the generation config's EOS)."""
        ids: set[int] = set()
        for value in (
            self.scorer.tokenizer.eos_token_id,
            getattr(self.scorer.model.generation_config, "eos_token_id", None),
        ):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list | tuple):
                ids.update(int(v) for v in value)
        return ids

    # -- generation ---------------------------------------------------------------------------
    def generate(
        self,
        questions: Sequence[OpenQuestion],
        config: GenerationConfig,
        shots: Sequence[OpenQuestion] = (),
    ) -> tuple[list[AnswerRow], dict[str, Any]]:
        """Greedy (or sampled) answers and, with ``config.samples``, sampled ones."""
        chat = config.template == "chat"
        prompts = [self.render(q, config.template, shots) for q in questions]
        encoded = [self.scorer.encode(p, chat) for p in prompts]
        main_rngs: list[np.random.Generator | None] = [
            None if config.temperature == 0 else sample_rng(config.seed, q.id, -1)
            for q in questions
        ]
        main = self.generate_ids(encoded, config, main_rngs, config.temperature)
        rows = [
            AnswerRow(p, g.text, g.token_ids, g.token_logprobs, g.stop_reason)
            for p, g in zip(prompts, main, strict=True)
        ]
        if config.samples:
            items = [(i, j) for i in range(len(questions)) for j in range(config.samples)]
            rngs: list[np.random.Generator | None] = [
                sample_rng(config.seed, questions[i].id, j) for i, j in items
            ]
            sampled = self.generate_ids(
                [encoded[i] for i, _ in items], config, rngs, config.sample_temperature
            )
            for (i, _), g in zip(items, sampled, strict=True):
                rows[i].samples.append(g.text)
                rows[i].sample_logprobs.append(float(sum(g.token_logprobs)))
        meta = {
            "model": self.name,
            "model_source": {
                "kind": self.scorer.source.kind,
                "location": self.scorer._public_location(),
            },
            "adapter": self.scorer.adapter,
            "backend": "hf",
            "device": self.scorer.device,
            "dtype": str(self.scorer.dtype).removeprefix("torch."),
            "batch_size": self.scorer.batch_size,
            "eos_token_ids": sorted(self.eos_ids()),
        }
        return rows, meta

    def complete(self, prompts: Sequence[str], config: GenerationConfig) -> list[str]:
        """Greedy plain-text continuations of ``prompts`` (answer texts), e.g. for verbal confidence."""
        encoded = [self.scorer.encode(p, False) for p in prompts]
        return [g.text for g in self.generate_ids(encoded, config, [None] * len(encoded), 0.0)]

    def generate_ids(
        self,
        encoded: Sequence[Sequence[int]],
        config: GenerationConfig,
        rngs: Sequence[np.random.Generator | None],
        temperature: float,
    ) -> list[Generation]:
        """Generate from token-id prompts in length-sorted, left-padded batches."""
        from llmcal.models.hf import length_batches

        out: list[Generation | None] = [None] * len(encoded)
        for batch in length_batches([len(e) for e in encoded], self.scorer.batch_size):
            gens = self._decode(
                [encoded[i] for i in batch], [rngs[i] for i in batch], config, temperature
            )
            for i, g in zip(batch, gens, strict=True):
                out[i] = g
        return [g for g in out if g is not None]

    def _decode(
        self,
        seqs: Sequence[Sequence[int]],
        rngs: Sequence[np.random.Generator | None],
        config: GenerationConfig,
        temperature: float,
    ) -> list[Generation]:
        torch = self._torch
        scorer = self.scorer
        dev = scorer.device
        tok = scorer.tokenizer
        eos = self.eos_ids()
        n = len(seqs)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        result: list[Generation | None] = [None] * n
        with torch.inference_mode():
            out, mask, next_pos, cache_kw = self._prefill(seqs)
            for _step in range(config.max_new_tokens):
                logits = out.logits[:, -1, :].float()
                logp = torch.log_softmax(logits, dim=-1)
                if temperature == 0:
                    nxt = logits.argmax(dim=-1)
                else:
                    nxt = self._sample(logits, rngs, temperature)
                picked = logp.gather(-1, nxt[:, None])[:, 0].tolist()
                chosen = nxt.tolist()
                for r in range(n):
                    if result[r] is not None:
                        continue
                    tokens[r].append(int(chosen[r]))
                    logps[r].append(min(0.0, float(picked[r])))
                    result[r] = self._finished(tokens[r], logps[r], eos, config, tok)
                if all(g is not None for g in result):
                    break
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=dev)], dim=-1)
                out = scorer.model(
                    input_ids=nxt[:, None],
                    attention_mask=mask,
                    position_ids=next_pos,
                    use_cache=True,
                    **{cache_kw: getattr(out, cache_kw)},
                )
                next_pos = next_pos + 1
        final: list[Generation] = []
        for r in range(n):
            g = result[r]
            if g is None:
                text = tok.decode(tokens[r], skip_special_tokens=True).strip()
                g = Generation(text, tokens[r], logps[r], "length")
            final.append(g)
        return final

    def _prefill(self, seqs: Sequence[Sequence[int]]) -> tuple[Any, Any, Any, str]:
        """Run the prompts once: (output with last logits and cache, mask, next positions, kw).

        When the batch shares a token prefix of at least ``SHARED_PREFIX_MIN`` tokens (the
        instruction and few-shot examples), the prefix runs once and each row's rest runs on
        a copy of its KV cache (padding sits between prefix and rest, masked out, positions
        continued), as in letter scoring.
        """
        from llmcal.models.hf import SHARED_PREFIX_MIN, _common_prefix_len

        torch = self._torch
        scorer = self.scorer
        dev = scorer.device
        k = _common_prefix_len(seqs, keep_last=1) if len(seqs) > 1 else 0
        if k < SHARED_PREFIX_MIN:
            ids, mask, position_ids = scorer._left_pad(seqs)
            out = scorer.model(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=position_ids.to(dev),
                logits_to_keep=1,
                use_cache=True,
            )
            kw = "cache" if hasattr(out, "cache") else "past_key_values"
            return out, mask.to(dev), position_ids[:, -1:].to(dev) + 1, kw
        _, cache, prefix_mask = scorer._run_prefixes([seqs[0][:k]])
        kw = scorer._cache_kw
        rest = [list(s[k:]) for s in seqs]
        width = max(len(r) for r in rest)
        inp = torch.full((len(rest), width), scorer.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rest), width), dtype=torch.long)
        for r, x in enumerate(rest):
            inp[r, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[r, width - len(x) :] = 1
        rows = torch.zeros(len(rest), dtype=torch.long)
        cache.reorder_cache(rows.to(dev))
        position_ids = k + (mask.cumsum(-1) - 1).clamp(min=0)
        full_mask = torch.cat([prefix_mask[rows], mask], dim=-1).to(dev)
        out = scorer.model(
            input_ids=inp.to(dev),
            attention_mask=full_mask,
            position_ids=position_ids.to(dev),
            logits_to_keep=1,
            use_cache=True,
            **{kw: cache},
        )
        if not hasattr(out, kw) or getattr(out, kw) is None:
            setattr(out, kw, cache)
        return out, full_mask, position_ids[:, -1:].to(dev) + 1, kw

    @staticmethod
    def _finished(
        tokens: list[int], logps: list[float], eos: set[int], config: GenerationConfig, tok: Any
    ) -> Generation | None:
        if tokens[-1] in eos:
            text = tok.decode(tokens[:-1], skip_special_tokens=True).strip()
            return Generation(text, list(tokens), list(logps), "eos")
        text = tok.decode(tokens, skip_special_tokens=True)
        hit = find_stop(text, config.stop, config.stop_at_newline)
        if hit is not None:
            return Generation(text[: hit[0]].strip(), list(tokens), list(logps), hit[1])
        if len(tokens) >= config.max_new_tokens:
            return Generation(text.strip(), list(tokens), list(logps), "length")
        return None

    def _sample(
        self, logits: Any, rngs: Sequence[np.random.Generator | None], temperature: float
    ) -> Any:
        torch = self._torch
        probs = torch.softmax(logits.double() / temperature, dim=-1).cpu().numpy()
        picks = []
        for r, rng in enumerate(rngs):
            assert rng is not None
            cdf = np.cumsum(probs[r])
            picks.append(int(min(np.searchsorted(cdf, rng.random() * cdf[-1]), len(cdf) - 1)))
        return torch.tensor(picks, dtype=torch.long, device=logits.device)


class HTTPGenerator:
    """Generate answers through OpenAI-compatible endpoints (see the module docstring)."""

    def __init__(self, endpoints: str | Sequence[str], model: str, **kwargs: Any) -> None:
        from llmcal.models.http import HTTPScorer

        self.client = HTTPScorer(endpoints, model, **kwargs)
        self.name = model

    def settings(self) -> dict[str, Any]:
        """The served model name (no URLs, no key)."""
        return {"generator": "http", "model": self.name}

    def generate(
        self,
        questions: Sequence[OpenQuestion],
        config: GenerationConfig,
        shots: Sequence[OpenQuestion] = (),
    ) -> tuple[list[AnswerRow], dict[str, Any]]:
        """One request per answer (and per sample), at most ``concurrency`` in flight."""
        chat = config.template == "chat"
        prompts = [open_prompt(q, shots) for q in questions]
        inputs: list[str | list[dict[str, str]]] = (
            [open_messages(q, shots) for q in questions] if chat else list(prompts)
        )
        jobs: list[tuple[int, int]] = [(i, -1) for i in range(len(questions))]
        jobs += [(i, j) for i in range(len(questions)) for j in range(config.samples)]
        gens = self._requests(
            [inputs[i] for i, _ in jobs],
            [config.temperature if j < 0 else config.sample_temperature for _, j in jobs],
            [
                (config.seed * 1_000_003 + zlib.crc32(questions[i].id.encode()) + j) % 2**31
                for i, j in jobs
            ],
            config,
        )
        rows: list[AnswerRow] = []
        for i in range(len(questions)):
            g = gens[i]
            shown = str(inputs[i]) if chat else prompts[i]
            rows.append(AnswerRow(shown, g.text, [], g.token_logprobs, g.stop_reason))
        for (i, _), g in zip(jobs[len(questions) :], gens[len(questions) :], strict=True):
            rows[i].samples.append(g.text)
            rows[i].sample_logprobs.append(float(sum(g.token_logprobs)))
        meta = {
            "model": self.name,
            "backend": "http",
            "endpoints": self.client.public_endpoints,
            "api": "chat" if chat else "completions",
            "token_ids": "not reported by the server",
        }
        return rows, meta

    def complete(self, prompts: Sequence[str], config: GenerationConfig) -> list[str]:
        """Greedy plain-text continuations of ``prompts`` through ``/v1/completions``."""
        gens = self._requests(list(prompts), [0.0] * len(prompts), [0] * len(prompts), config)
        return [g.text for g in gens]

    def _requests(
        self,
        inputs: Sequence[str | list[dict[str, str]]],
        temperatures: Sequence[float],
        seeds: Sequence[int],
        config: GenerationConfig,
    ) -> list[Generation]:
        client = self.client
        # the newline stop is applied here, as in-process (a newline before any text is
        # skipped); the server only gets the user's stop strings
        stops = list(config.stop)

        async def job(k: int) -> Generation:
            item = inputs[k]
            payload: dict[str, Any] = {
                "model": self.name,
                "max_tokens": config.max_new_tokens,
                "temperature": temperatures[k],
                "seed": seeds[k],
            }
            if stops:
                payload["stop"] = stops[:4]  # the OpenAI API takes at most 4
            if isinstance(item, list):
                payload.update(messages=item, logprobs=True, top_logprobs=1)
                body = await client._post(http, "/chat/completions", payload, k)
            else:
                payload.update(prompt=item, logprobs=1)
                body = await client._post(http, "/completions", payload, k)
            return http_generation(body, isinstance(item, list), str(k), config)

        async def main() -> list[Generation]:
            out: list[Generation] = await client._gather(
                [functools.partial(job, k) for k in range(len(inputs))]
            )
            return out

        http: Any = None

        async def run() -> list[Generation]:
            nonlocal http
            async with client._client() as http:
                return await main()

        result: list[Generation] = client._run(run())
        return result


def http_generation(body: Any, chat: bool, qid: str, config: GenerationConfig) -> Generation:
    """The answer in a completions / chat response body, cut and stripped as in-process."""
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (KeyError, IndexError, TypeError) as exc:
        raise EndpointError(
            f"malformed generation response for {qid!r}: {str(body)[:200]}"
        ) from exc
    lp = choice.get("logprobs") or {}
    if chat:
        entries = [e for e in (lp.get("content") or []) if isinstance(e, dict)]
        tokens = [str(e.get("token", "")) for e in entries]
        values = [e.get("logprob") for e in entries]
    else:
        tokens = [str(t) for t in lp.get("tokens") or []]
        values = list(lp.get("token_logprobs") or [])
    text = str(text or "")
    reason = "length" if choice.get("finish_reason") == "length" else "stop"
    hit = find_stop(text, (), config.stop_at_newline)
    if hit is not None:
        text, reason = text[: hit[0]], "newline"
        if len(tokens) == len(values):  # keep the tokens up to the one holding the newline
            seen, keep = "", 0
            for keep, t in enumerate(tokens, 1):  # noqa: B007
                seen += t
                if len(seen) > hit[0]:
                    break
            values = values[:keep]
    logps = [min(0.0, float(v)) for v in values if v is not None]
    return Generation(text.strip(), [], logps, reason)


def generate_answers(
    generator: Generator,
    task: OpenTask,
    config: GenerationConfig | None = None,
    *,
    shots: Sequence[OpenQuestion] = (),
    out: str | os.PathLike[str] | None = None,
    chunk_size: int = 32,
    resume: bool = True,
    progress: bool | None = None,
) -> tuple[Answers, dict[str, int]]:
    """Generate an answer per question of ``task``; with ``out``, checkpointed beside it.

    Returns the (unjudged) Answers and ``{"resumed": rows, "generated": rows}``.
    """
    from llmcal.models.checkpoint import ChunkedRun, checkpoint_path

    config = config or GenerationConfig()
    if len(task) == 0:
        raise ConfigError(f"task {task.name!r} has no questions")
    if {s.id for s in shots} & set(task.ids):
        raise ConfigError("few-shot examples must not be among the answered questions")
    key = {
        "what": "generate",
        "generator": generator.settings(),
        "task": task.name,
        "config": asdict(config),
        "shot_ids": [s.id for s in shots],
    }
    run = ChunkedRun(
        None if out is None else checkpoint_path(out),
        key,
        task.ids,
        chunk_size=chunk_size,
        resume=resume,
        desc=f"generating {generator.name}",
        progress=progress,
    )

    def compute(start: int, stop: int) -> tuple[list[Any], dict[str, Any]]:
        rows, meta = generator.generate(task.questions[start:stop], config, shots)
        return [asdict(r) for r in rows], meta

    rows, meta, created = run.run(compute)
    answers = Answers(
        ids=tuple(task.ids),
        questions=tuple(q.question for q in task),
        references=tuple(q.answers for q in task),
        prompts=tuple(r["prompt"] for r in rows),
        texts=tuple(r["text"] for r in rows),
        token_ids=tuple(r["token_ids"] for r in rows),
        token_logprobs=tuple(r["token_logprobs"] for r in rows),
        stop_reasons=tuple(r["stop_reason"] for r in rows),
        correct=np.full(len(task), -1, dtype=np.int64),
        samples=tuple(r["samples"] for r in rows),
        sample_logprobs=tuple(r["sample_logprobs"] for r in rows),
        subjects=tuple(q.subject for q in task) if any(q.subject for q in task) else None,
        meta={
            **meta,
            "kind": "answers",
            "task": task.name,
            "generation": asdict(config),
            "instruction": OPEN_INSTRUCTION,
            "n_shots": len(shots),
            "shot_ids": [s.id for s in shots],
            "chunk_size": chunk_size,
            "llmcal_version": __version__,
            "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return answers, {"resumed": run.resumed_rows, "generated": run.computed_rows}


def discard_checkpoint(out: str | os.PathLike[str]) -> None:
    """Delete the checkpoint beside ``out`` (after the output is safely saved)."""
    from llmcal.models.checkpoint import checkpoint_path

    Path(checkpoint_path(out)).unlink(missing_ok=True)
