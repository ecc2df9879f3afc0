"""Confidence of free-form answers: each method turns Answers into an answer-view Scores.

In the answer view a Scores row holds two logits, column 0 = "the answer is wrong" (False),
column 1 = "the answer is right" (True), and the label is the answer's judged correctness
(1 right, 0 wrong, -1 not judged); ``meta["view"] = "answer"``. Every metric, calibrator,
report and CLI command then works on it unchanged.

* ``ptrue`` (Kadavath et al. 2022; DACA §5): the scoring model sees the question and the
  proposed answer as a 2-option question (A: True, B: False) in the fixed prompt
  :data:`PTRUE_TEMPLATE`, read like letter scoring; the logits are the two option-letter
  logits, reordered to [False, True]. Any Scorer (in-process or HTTP) may judge any model's
  answers, which is what DACA needs: the aligned model and its base both score the same answers.
* ``seqlik`` / ``seqlik-total``: confidence = exp(mean token log-prob) / exp(total log-prob)
  of the generated answer (its tokens include the one that ended it).
* ``verbal``: the model is asked for a probability (:data:`VERBAL_PROMPT`, greedy, at most 8
  tokens); the first number is read (``85%`` → 0.85, ``0.85`` → 0.85, ``85`` → 0.85). A reply
  without a usable number gets confidence 0.5 (no information) and is counted and listed in
  ``meta["confidence"]["unparseable"]`` / ``["unparseable_ids"]``.
* ``consistency``: with ``--samples N``, the share of the N sampled answers that match the
  main answer under the chosen matcher.

Confidences from ``verbal`` and ``consistency`` are clipped to [1e-6, 1 − 1e-6] so that both
logits stay finite (Platt and DACA need finite logits); seqlik keeps full precision in log
space.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from llmcal.answers import Answers
from llmcal.errors import ConfigError, ScoresError
from llmcal.judge import get_matcher
from llmcal.scores import Scores
from llmcal.tasks.templates import Template
from llmcal.tasks.types import Question, Task

METHODS = ("ptrue", "seqlik", "seqlik-total", "verbal", "consistency")
CONF_EPS = 1e-6

PTRUE_TEMPLATE = Template(
    "ptrue",
    "The following are questions with a proposed answer. Say whether the proposed answer is "
    "true (A) or false (B):",
)
PTRUE_QUESTION = "{question}\nProposed answer: {answer}\nIs the proposed answer true or false?"
VERBAL_PROMPT = (
    "Question: {question}\nProposed answer: {answer}\n"
    "How likely is it that the proposed answer is correct? Reply with a probability from 0% "
    "to 100%.\nProbability:"
)
_NUM = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(%?)")


def answer_scores(
    answers: Answers,
    log_true: npt.ArrayLike,
    log_false: npt.ArrayLike,
    meta: dict[str, Any],
) -> Scores:
    """Answer-view Scores with logits [log_false, log_true] and labels = answers.correct."""
    lt = np.asarray(log_true, dtype=np.float64)
    lf = np.asarray(log_false, dtype=np.float64)
    base = {k: answers.meta.get(k) for k in ("task", "judge") if answers.meta.get(k) is not None}
    full = {
        **base,
        "view": "answer",
        "answers_model": answers.meta.get("model"),
        "answers_generation": answers.meta.get("generation"),
        **meta,
    }
    return Scores(
        ids=np.array(answers.ids, dtype=object),
        logits=np.stack([lf, lt], axis=1),
        labels=np.asarray(answers.correct, dtype=np.int64),
        meta=full,
        subjects=None if answers.subjects is None else np.array(answers.subjects, dtype=object),
    )


def _from_probability(answers: Answers, p: npt.ArrayLike, meta: dict[str, Any]) -> Scores:
    q = np.clip(np.asarray(p, dtype=np.float64), CONF_EPS, 1.0 - CONF_EPS)
    return answer_scores(answers, np.log(q), np.log1p(-q), {**meta, "logit_kind": "probs_log"})


def _from_logprob(answers: Answers, logp: npt.ArrayLike, meta: dict[str, Any]) -> Scores:
    lp = np.minimum(np.asarray(logp, dtype=np.float64), math.log1p(-1e-12))
    return answer_scores(answers, lp, np.log(-np.expm1(lp)), {**meta, "logit_kind": "probs_log"})


# -- methods ----------------------------------------------------------------------------------
def one_answer(qid: str, question: str, text: str, meta: dict[str, Any] | None = None) -> Answers:
    """An unjudged one-row Answers (what serving and :class:`CalibratedModel` judge)."""
    return Answers(
        ids=(qid,),
        questions=(question,),
        references=((),),
        prompts=("",),
        texts=(text,),
        token_ids=((),),
        token_logprobs=((),),
        stop_reasons=("stop",),
        correct=np.full(1, -1, dtype=np.int64),
        meta=dict(meta or {}),
    )


def ptrue_task(answers: Answers) -> Task:
    """The 2-option questions (A: True, B: False) that P(True) scores, one per answer."""
    qs = [
        Question(
            qid,
            PTRUE_QUESTION.format(question=q, answer=a or "(no answer)"),
            ("True", "False"),
        )
        for qid, q, a in zip(answers.ids, answers.questions, answers.texts, strict=True)
    ]
    return Task(f"ptrue:{answers.meta.get('task', 'answers')}", qs)


def ptrue(scorer: Any, answers: Answers) -> Scores:
    """P(True) of each answer as judged by ``scorer`` (any Scorer: HF, HTTP, checkpointed)."""
    scored = scorer.score(ptrue_task(answers), mode="letter", template=PTRUE_TEMPLATE)
    return ptrue_scores(answers, scored)


def ptrue_scores(answers: Answers, scored: Scores) -> Scores:
    """Answer-view Scores from the letter scoring of :func:`ptrue_task` (columns A=True, B=False)."""
    z = scored.logits
    meta = {k: v for k, v in scored.meta.items() if k not in ("task", "created", "llmcal_version")}
    meta["confidence"] = {
        "method": "ptrue",
        "prompt": PTRUE_TEMPLATE.instruction + "\n" + "Question: " + PTRUE_QUESTION
        + "\nA: True\nB: False\nAnswer:",
        "columns": "0 = B (False), 1 = A (True)",
        "scored_by": scored.meta.get("model"),
    }  # fmt: skip
    return answer_scores(answers, z[:, 0], z[:, 1], meta)


def seqlik(answers: Answers, variant: str = "mean") -> Scores:
    """exp(mean) or exp(total) token log-prob of each answer."""
    if variant not in ("mean", "total"):
        raise ConfigError(f"seqlik variant must be 'mean' or 'total', got {variant!r}")
    empty = [i for i, lp in zip(answers.ids, answers.token_logprobs, strict=True) if not lp]
    if empty:
        raise ScoresError(
            f"sequence likelihood needs token log-probs, but {len(empty)} answers have none "
            f"(e.g. {empty[0]!r}); generate with a backend that reports them"
        )
    lp = answers.mean_logprobs() if variant == "mean" else answers.total_logprobs()
    meta = {
        "model": answers.meta.get("model"),
        "backend": answers.meta.get("backend"),
        "confidence": {
            "method": "seqlik" if variant == "mean" else "seqlik-total",
            "variant": variant,
            "formula": "exp(mean token log-prob)"
            if variant == "mean"
            else "exp(sum of token log-probs)",
        },
    }
    return _from_logprob(answers, lp, meta)


def parse_probability(text: str) -> float | None:
    """The probability a verbal reply states (``"85%"``, ``"0.85"``, ``"85"``), or None."""
    m = _NUM.search(text)
    if m is None:
        return None
    value = float(m.group(1))
    if m.group(2) == "%" or value > 1.0:
        value /= 100.0
    return value if 0.0 <= value <= 1.0 else None


def verbal(generator: Any, answers: Answers, max_new_tokens: int = 8) -> Scores:
    """Ask ``generator`` (HFGenerator / HTTPGenerator) for a stated probability per answer."""
    from llmcal.models.generate import GenerationConfig

    prompts = [
        VERBAL_PROMPT.format(question=q, answer=a or "(no answer)")
        for q, a in zip(answers.questions, answers.texts, strict=True)
    ]
    replies = generator.complete(prompts, GenerationConfig(max_new_tokens=max_new_tokens))
    values = [parse_probability(r) for r in replies]
    bad = [i for i, v in zip(answers.ids, values, strict=True) if v is None]
    p = [0.5 if v is None else v for v in values]
    meta = {
        "model": generator.name,
        "confidence": {
            "method": "verbal",
            "prompt": VERBAL_PROMPT,
            "parse": "first number; '%' or a value above 1 means percent",
            "unparseable": len(bad),
            "unparseable_treatment": "confidence 0.5",
            "unparseable_ids": bad[:100],
            "replies_sample": replies[:5],
        },
    }
    return _from_probability(answers, p, meta)


def consistency(answers: Answers, matcher: str = "exact") -> Scores:
    """Share of the sampled answers that match the main answer under ``matcher``."""
    if answers.n_samples == 0:
        raise ConfigError(
            "sample consistency needs sampled answers: generate with --samples N (e.g. 5)"
        )
    m = get_matcher(matcher)
    share = np.array(
        [
            float(np.mean([m(s, [t]) for s in samples])) if samples else 0.0
            for t, samples in zip(answers.texts, answers.samples, strict=True)
        ]
    )
    meta = {
        "model": answers.meta.get("model"),
        "confidence": {
            "method": "consistency",
            "matcher": m.spec,
            "n_samples": answers.n_samples,
            "sample_temperature": (answers.meta.get("generation") or {}).get("sample_temperature"),
        },
    }
    return _from_probability(answers, share, meta)


def confidence(
    method: str,
    answers: Answers,
    *,
    scorer: Any = None,
    generator: Any = None,
    matcher: str = "exact",
) -> Scores:
    """Dispatch on ``method`` (one of :data:`METHODS`)."""
    if method not in METHODS:
        raise ConfigError(f"unknown confidence method {method!r}; use one of {', '.join(METHODS)}")
    if method == "ptrue":
        if scorer is None:
            raise ConfigError("--method ptrue needs --model (the model that judges the answers)")
        return ptrue(scorer, answers)
    if method in ("seqlik", "seqlik-total"):
        return seqlik(answers, "mean" if method == "seqlik" else "total")
    if method == "verbal":
        if generator is None:
            raise ConfigError("--method verbal needs --model (the model that states a probability)")
        return verbal(generator, answers)
    return consistency(answers, matcher)


def check_same_answers(
    a: Scores, b: Scores, names: Sequence[str] = ("target", "reference")
) -> None:
    """Two answer-view Scores must score the same answers (same answering model and ids)."""
    ma, mb = a.meta.get("answers_model"), b.meta.get("answers_model")
    if ma is not None and mb is not None and ma != mb:
        raise ScoresError(
            f"the {names[0]} scores answers of {ma!r} but the {names[1]} answers of {mb!r}; "
            "both must judge the same generated answers"
        )
