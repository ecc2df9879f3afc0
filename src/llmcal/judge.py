"""Judging free-form answers: string matchers, an LLM judge through an endpoint, label files.

Matchers compare an answer with every accepted reference (``answers[0]`` and its aliases) after
SQuAD-style normalisation (lower case, punctuation removed, the articles a / an / the removed,
whitespace collapsed) and count it right when any reference matches:

* ``exact``: the normalised strings are equal.
* ``contains``: the normalised reference occurs in the normalised answer as whole words
  (``"paris"`` is in ``"it is paris"``, but ``"a"`` is not in ``"cat"``).
* ``f1`` / ``f1:T``: SQuAD token F1 ≥ T (default 0.5).
* ``numeric``: the last number in the answer equals the last number in the reference (commas
  between digit groups allowed, ``1e3`` not; relative tolerance 1e-9).

:func:`judge_answers` records the matcher in ``Answers.meta["judge"]``. :class:`LLMJudge` asks
a served model whether an answer matches the reference (its yes/no next-token log-probs), and
:func:`labels_from_file` joins human grades (CSV or JSONL with ``id`` and ``correct``).
"""

from __future__ import annotations

import csv
import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmcal.answers import Answers
from llmcal.errors import ConfigError, DataError

MATCHERS = ("exact", "contains", "f1", "numeric")
DEFAULT_F1 = 0.5

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(answer: str, reference: str) -> float:
    """SQuAD token F1 of the normalised strings (1.0 when both are empty)."""
    a, r = normalize_answer(answer).split(), normalize_answer(reference).split()
    if not a or not r:
        return float(a == r)
    common = Counter(a) & Counter(r)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(a), same / len(r)
    return 2 * precision * recall / (precision + recall)


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (``"1,000"`` → 1000.0), or None."""
    found = [m.group(0) for m in _NUMBER.finditer(text) if any(c.isdigit() for c in m.group(0))]
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _exact(answer: str, reference: str) -> bool:
    return normalize_answer(answer) == normalize_answer(reference)


def _contains(answer: str, reference: str) -> bool:
    ref = normalize_answer(reference)
    return bool(ref) and f" {ref} " in f" {normalize_answer(answer)} "


def _numeric(answer: str, reference: str) -> bool:
    a, r = last_number(answer), last_number(reference)
    return a is not None and r is not None and math.isclose(a, r, rel_tol=1e-9, abs_tol=0.0)


@dataclass(frozen=True)
class Matcher:
    """A named string matcher (see the module docstring); ``threshold`` only for f1."""

    name: str
    threshold: float | None = None

    @property
    def spec(self) -> str:
        """The name as given on the command line (``f1:0.6``)."""
        return f"{self.name}:{self.threshold:g}" if self.name == "f1" else self.name

    def match(self, answer: str, reference: str) -> bool:
        """Whether ``answer`` matches one reference."""
        if self.name == "exact":
            return _exact(answer, reference)
        if self.name == "contains":
            return _contains(answer, reference)
        if self.name == "numeric":
            return _numeric(answer, reference)
        assert self.threshold is not None
        return token_f1(answer, reference) >= self.threshold

    def __call__(self, answer: str, references: Sequence[str]) -> bool:
        """Whether ``answer`` matches any of ``references``."""
        return any(self.match(answer, r) for r in references)

    def describe(self) -> dict[str, Any]:
        """The record stored in ``Answers.meta["judge"]``."""
        return {
            "kind": "matcher",
            "matcher": self.spec,
            "normalization": "squad (lower case, no punctuation, no a/an/the, single spaces)",
            **({"threshold": self.threshold} if self.name == "f1" else {}),
        }


def get_matcher(spec: str) -> Matcher:
    """``exact``, ``contains``, ``numeric``, ``f1`` or ``f1:T`` (0 < T ≤ 1)."""
    name, _, arg = spec.strip().partition(":")
    if name not in MATCHERS:
        raise ConfigError(f"unknown matcher {spec!r}; use one of {', '.join(MATCHERS)} (or f1:T)")
    if name != "f1":
        if arg:
            raise ConfigError(f"matcher {name!r} takes no argument, got {spec!r}")
        return Matcher(name)
    try:
        threshold = float(arg) if arg else DEFAULT_F1
    except ValueError:
        raise ConfigError(f"matcher {spec!r}: the F1 threshold must be a number") from None
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"matcher {spec!r}: the F1 threshold must be in (0, 1]")
    return Matcher("f1", threshold)


def judge_answers(answers: Answers, matcher: str | Matcher = "exact") -> Answers:
    """``answers`` with ``correct`` set by ``matcher`` against each question's references."""
    m = get_matcher(matcher) if isinstance(matcher, str) else matcher
    if any(not refs for refs in answers.references):
        bad = next(i for i, refs in zip(answers.ids, answers.references, strict=True) if not refs)
        raise DataError(
            f"answer {bad!r} has no reference answers to match against; judge it with an LLM "
            "judge or a label file instead"
        )
    correct = np.array(
        [int(m(t, refs)) for t, refs in zip(answers.texts, answers.references, strict=True)],
        dtype=np.int64,
    )
    return answers.replace(correct=correct, meta={"judge": m.describe()})


def match_all(answers: Answers, matchers: Sequence[str] = ("exact", "contains", "f1", "numeric")
              ) -> dict[str, float]:  # fmt: skip
    """Accuracy of ``answers`` under each matcher (no judgement stored)."""
    out = {}
    for spec in matchers:
        m = get_matcher(spec)
        hits = [m(t, r) for t, r in zip(answers.texts, answers.references, strict=True)]
        out[m.spec] = float(np.mean(hits)) if hits else float("nan")
    return out


# -- labels from a file ---------------------------------------------------------------------
_TRUE = {"1", "true", "yes", "y", "correct", "right", "t"}
_FALSE = {"0", "false", "no", "n", "incorrect", "wrong", "f"}


def _read_label(value: Any, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise DataError(f"{where}: 'correct' must be 1/0, true/false or yes/no, got {value!r}")


def read_labels(path: str | Path) -> dict[str, int]:
    """``id → correct`` from a CSV (header ``id,correct``) or JSONL file (one object a line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such label file")
    suffix = path.suffix.lower()
    rows: list[tuple[str, Any, str]] = []
    text = path.read_text(encoding="utf-8-sig")
    if suffix in (".jsonl", ".json"):
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from exc
            if not isinstance(rec, dict) or "id" not in rec or "correct" not in rec:
                raise DataError(f"{where}: each line needs an object with 'id' and 'correct'")
            rows.append((str(rec["id"]), rec["correct"], where))
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        if reader.fieldnames is None or not {"id", "correct"} <= set(reader.fieldnames):
            raise DataError(
                f"{path}: the header must name the columns 'id' and 'correct', got "
                f"{reader.fieldnames}"
            )
        for lineno, rec in enumerate(reader, 2):
            rows.append((str(rec["id"]), rec["correct"], f"{path}, line {lineno}"))
    else:
        raise DataError(f"{path}: label files are .csv, .tsv or .jsonl (id, correct)")
    labels: dict[str, int] = {}
    for qid, value, where in rows:
        if not qid:
            raise DataError(f"{where}: empty 'id'")
        if qid in labels:
            raise DataError(f"{where}: id {qid!r} is labelled twice")
        labels[qid] = _read_label(value, where)
    if not labels:
        raise DataError(f"{path}: holds no labels")
    return labels


def labels_from_file(answers: Answers, path: str | Path) -> Answers:
    """``answers`` judged by a label file; every answer needs a label and every label an answer."""
    labels = read_labels(path)
    have = set(answers.ids)
    missing = [i for i in answers.ids if i not in labels]
    extra = sorted(set(labels) - have)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} answer id(s) have no label (e.g. {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} label id(s) match no answer (e.g. {extra[:3]})")
        raise DataError(
            f"{path}: {'; '.join(parts)}; the label file must hold exactly the answers' ids"
        )
    correct = np.array([labels[i] for i in answers.ids], dtype=np.int64)
    return answers.replace(correct=correct, meta={"judge": {"kind": "labels", "file": str(path)}})


# -- LLM judge ------------------------------------------------------------------------------
JUDGE_PROMPT = (
    "You are grading answers to quiz questions. Compare the proposed answer with the "
    "reference answer(s) and decide whether it is correct.\n\n"
    "Question: {question}\nReference answer(s): {references}\nProposed answer: {answer}\n"
    "Is the proposed answer correct? Answer yes or no.\nAnswer:"
)


def _yes_no(top: Sequence[tuple[str, float]]) -> tuple[float | None, float | None]:
    """Log-sum-exp of the ``yes`` and ``no`` tokens among top (token, log-prob) pairs."""
    found: dict[str, list[float]] = {"yes": [], "no": []}
    for token, lp in top:
        word = token.replace("Ġ", " ").replace("▁", " ").strip(" \t\n.,:;!\"'").lower()
        if word in found and lp is not None and math.isfinite(lp):
            found[word].append(float(lp))

    def lse(v: list[float]) -> float | None:
        if not v:
            return None
        m = max(v)
        return m + math.log(sum(math.exp(x - m) for x in v))

    return lse(found["yes"]), lse(found["no"])


class LLMJudge:
    """Grade answers with a model behind an OpenAI-compatible endpoint (``/v1/completions``).

    The judge prompt (:data:`JUDGE_PROMPT`, recorded in meta) ends in ``Answer:``; the answer
    counts as right when the next token's ``yes`` log-prob beats its ``no`` log-prob (token
    variants such as ``" Yes"`` are summed). When neither is in the top-k the answer stays
    unjudged (-1) and is counted in ``meta["judge"]["undecided"]``.
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        model: str,
        *,
        api_key_env: str | None = None,
        top_k: int = 20,
        concurrency: int = 4,
        timeout: float = 30.0,
        max_retries: int = 5,
        progress: bool | None = None,
    ) -> None:
        from llmcal.models.http import HTTPScorer

        self.client = HTTPScorer(
            endpoint,
            model,
            api_key_env=api_key_env,
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
            top_k=top_k,
            progress=progress,
        )

    def prompt(self, question: str, references: Sequence[str], answer: str) -> str:
        """The judge prompt of one answer."""
        return JUDGE_PROMPT.format(
            question=question, references="; ".join(references[:10]), answer=answer or "(empty)"
        )

    def judge(self, answers: Answers) -> Answers:
        """``answers`` with ``correct`` from the judge model."""
        client = self.client
        client.check_capabilities("letter", chat=False)
        prompts = [
            self.prompt(q, r, t)
            for q, r, t in zip(answers.questions, answers.references, answers.texts, strict=True)
        ]
        tops = client._run(self._ask(prompts))
        correct, undecided = [], []
        for qid, top in zip(answers.ids, tops, strict=True):
            yes, no = _yes_no(top)
            if yes is None and no is None:
                correct.append(-1)
                undecided.append(qid)
            else:
                correct.append(int((yes if yes is not None else -math.inf)
                                   > (no if no is not None else -math.inf)))  # fmt: skip
        meta = {
            "kind": "llm",
            "model": client.model,
            "endpoints": client.public_endpoints,
            "prompt": JUDGE_PROMPT,
            "rule": "right when log p(yes) > log p(no) for the next token (top-k)",
            "top_k": client.effective_top_k,
            "undecided": len(undecided),
            "undecided_ids": undecided[:50],
        }
        return answers.replace(correct=np.array(correct, dtype=np.int64), meta={"judge": meta})

    async def _ask(self, prompts: Sequence[str]) -> list[list[tuple[str, float]]]:
        from llmcal.models.http import _completion_top

        client = self.client

        async def job(i: int) -> list[tuple[str, float]]:
            body = await client._post(http, "/completions", client._completion(prompts[i]), i)
            return _completion_top(body, 0)

        jobs: list[Callable[[], Any]] = [lambda i=i: job(i) for i in range(len(prompts))]  # type: ignore[misc]
        async with client._client() as http:
            out: list[list[tuple[str, float]]] = await client._gather(jobs)
        return out
