"""Calibrated answers at serving time: the selective rule, the answer record, CalibratedModel.

The same three steps run in-process (:class:`CalibratedModel`) and in the proxy
(:mod:`llmcal.serve.app`): a scorer's raw option log-probs become a one-row (or n-row)
:class:`~llmcal.scores.Scores`, the calibrator's ``transform`` runs on it exactly as in
``llmcal apply``, and the selective rule decides whether to answer. So a served confidence is the
number ``llmcal score`` + ``llmcal apply`` would give for the same prompt.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmcal._io import loads_json
from llmcal.calibrate.base import Calibrator, load_calibrator
from llmcal.errors import ConfigError
from llmcal.scores import Scores
from llmcal.tasks.templates import DEFAULT_TEMPLATE, Template, get_template
from llmcal.tasks.types import LETTERS, Question, Task

#: The reference of a question asked at serving time (unknown; generation never reads it).
NO_REFERENCE = ("(no reference)",)

#: Fit-record keys of a calibrator artefact that are shown as its provenance.
PROVENANCE_KEYS = (
    "task",
    "model",
    "template",
    "mode",
    "view",
    "backend",
    "logit_kind",
    "n",
    "n_used",
)


@dataclass(frozen=True)
class SelectiveRule:
    """Answer only when the calibrated confidence is at least ``threshold``; else abstain.

    ``threshold=None`` is a rule that answers nothing: what ``llmcal fit selective`` writes when
    no threshold met its risk bound on the calibration split.
    """

    threshold: float | None
    kind: str = "selective"
    source: str | None = None

    def __post_init__(self) -> None:
        t = self.threshold
        if t is None:
            return
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0:
            raise ConfigError(
                f"{self.source or 'selective rule'}: threshold must be a number in [0, 1], "
                f"got {t!r}"
            )
        object.__setattr__(self, "threshold", float(t))

    def abstains(self, confidence: float) -> bool:
        """True when the rule says not to answer at this calibrated confidence."""
        return self.threshold is None or confidence < self.threshold

    def describe(self) -> dict[str, Any]:
        """What the rule is, for a response or a log line."""
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "file": None if self.source is None else Path(self.source).name,
        }


def load_selective(spec: str | os.PathLike[str] | Mapping[str, Any] | float) -> SelectiveRule:
    """A SelectiveRule from a JSON file, a dict or a bare threshold.

    Reads ``params.threshold`` (else a top-level ``threshold``) and, if present, ``kind``;
    every other field is ignored.
    """
    if isinstance(spec, bool):
        raise ConfigError(f"selective rule: expected a threshold or a file, got {spec!r}")
    if isinstance(spec, (int, float)):
        return SelectiveRule(float(spec))
    source: str | None = None
    if isinstance(spec, Mapping):
        data: Any = spec
    else:
        path = Path(spec)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"--selective {path}: no such file")
        try:
            data = loads_json(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"--selective {path}: not valid JSON ({exc})") from exc
    where = source or "selective rule"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a JSON object with params.threshold")
    params = data.get("params")
    if isinstance(params, Mapping) and "threshold" in params:
        threshold = params["threshold"]
    elif "threshold" in data:
        threshold = data["threshold"]
    else:
        raise ConfigError(
            f'{where}: no threshold; expected {{"kind": "selective", "params": '
            '{"threshold": 0.8}} (or a top-level "threshold")'
        )
    kind = data.get("kind", "selective")
    return SelectiveRule(threshold, kind=str(kind), source=source)


def calibrator_info(cal: Calibrator, file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Which calibrator makes the numbers: kind, file name, parameters and fit provenance."""
    fit = cal.fit_info_ or {}
    params = cal.get_fitted_params() if cal.is_fitted else {}
    small = {k: v for k, v in params.items() if not isinstance(v, (list, dict))}
    return {
        "kind": cal.kind,
        "file": None if file is None else Path(file).name,
        "params": small,
        "fit": {k: fit.get(k) for k in PROVENANCE_KEYS if k in fit},
    }


@dataclass(frozen=True)
class Answer:
    """A calibrated answer to one multiple-choice question."""

    index: int
    letter: str
    confidence: float
    probs: list[float]
    raw_probs: list[float]
    raw_confidence: float
    abstain: bool
    threshold: float | None
    calibrator: dict[str, Any]

    @property
    def answered(self) -> bool:
        """True when the selective rule lets the answer through."""
        return not self.abstain

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``llmcal`` object of a proxy response)."""
        return asdict(self)


def answers_from_scores(
    raw: Scores,
    calibrator: Calibrator,
    selective: SelectiveRule | None = None,
    info: dict[str, Any] | None = None,
) -> list[Answer]:
    """Calibrate raw Scores (``calibrator.transform``, as ``llmcal apply``) and decide each row."""
    calibrated = calibrator.transform(raw)
    p_raw, p_cal = raw.probs(), calibrated.probs()
    n_opt = raw.n_options
    who = info if info is not None else calibrator_info(calibrator)
    out = []
    for i in range(len(raw)):
        k = int(n_opt[i])
        probs = [float(v) for v in p_cal[i, :k]]
        raws = [float(v) for v in p_raw[i, :k]]
        idx = int(np.argmax(p_cal[i, :k]))
        conf = probs[idx]
        out.append(
            Answer(
                index=idx,
                letter=LETTERS[idx],
                confidence=conf,
                probs=probs,
                raw_probs=raws,
                raw_confidence=max(raws),
                abstain=bool(selective is not None and selective.abstains(conf)),
                threshold=None if selective is None else selective.threshold,
                calibrator=who,
            )
        )
    return out


@dataclass(frozen=True)
class FreeAnswer:
    """A free-form answer with its calibrated P(True) confidence (the answer view)."""

    answer: str
    confidence: float
    raw_confidence: float
    abstain: bool
    threshold: float | None
    calibrator: dict[str, Any]
    method: str = "ptrue"

    @property
    def answered(self) -> bool:
        """True when the selective rule lets the answer through."""
        return not self.abstain

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the ``llmcal`` object of a proxy response)."""
        return {"kind": "free-form", **asdict(self)}


def free_answers_from_scores(
    raw: Scores,
    texts: Sequence[str],
    calibrator: Calibrator,
    selective: SelectiveRule | None = None,
    info: dict[str, Any] | None = None,
) -> list[FreeAnswer]:
    """Calibrate answer-view P(True) Scores (as ``llmcal apply``) and decide each answer."""
    calibrated = calibrator.transform(raw)
    p_raw, p_cal = raw.confidences(), calibrated.confidences()
    who = info if info is not None else calibrator_info(calibrator)
    return [
        FreeAnswer(
            answer=text,
            confidence=float(p_cal[i]),
            raw_confidence=float(p_raw[i]),
            abstain=bool(selective is not None and selective.abstains(float(p_cal[i]))),
            threshold=None if selective is None else selective.threshold,
            calibrator=who,
        )
        for i, text in enumerate(texts)
    ]


def fitted_view(cal: Calibrator) -> str | None:
    """The Scores view a calibrator was fitted on (``options`` / ``answer``), where recorded."""
    view = (cal.fit_info_ or {}).get("view")
    return view if view in ("options", "answer") else None


def check_view(cal: Calibrator, want: str, what: str) -> None:
    """Refuse a calibrator fitted on the other Scores view than the answers it will calibrate."""
    view = fitted_view(cal)
    if view is None or view == want:
        return
    if want == "answer":
        raise ConfigError(
            f"{what} was fitted on multiple-choice option Scores, but free-form answers need "
            "one fitted on P(True) Scores (llmcal confidence --method ptrue, then llmcal fit)"
        )
    raise ConfigError(
        f"{what} was fitted on P(True) Scores of free-form answers; it calibrates free-form "
        "answers, not multiple-choice options (for llmcal serve: --freeform-calibrator)"
    )


def default_template(cal: Calibrator | None, template: str | Template | None) -> Template:
    """``template`` if given, else the zero-shot template the calibrator was fitted with, else daca1."""
    if isinstance(template, Template):
        return template
    if template is not None:
        return get_template(template)
    fitted = None if cal is None else (cal.fit_info_ or {}).get("template")
    if isinstance(fitted, str):
        try:
            tmpl = get_template(fitted)
        except ConfigError:
            tmpl = None
        if tmpl is not None and not tmpl.shots:
            return tmpl
    return get_template(DEFAULT_TEMPLATE)


class CalibratedModel:
    """An in-process model plus a calibrator (and optionally a selective rule).

    ``model`` is any Scorer (:class:`~llmcal.models.HFScorer`, :class:`~llmcal.models.http.HTTPScorer`);
    :meth:`ask` scores in letter mode with ``template`` and returns the same numbers as
    ``llmcal score`` followed by ``llmcal apply`` on that question.
    """

    def __init__(
        self,
        model: Any,
        calibrator: Calibrator | str | os.PathLike[str],
        selective: SelectiveRule | str | os.PathLike[str] | Mapping[str, Any] | float | None = None,
        *,
        template: str | Template | None = None,
    ) -> None:
        if not callable(getattr(model, "score", None)):
            raise ConfigError(
                "CalibratedModel needs a scorer with .score(task, ...) (HFScorer or HTTPScorer), "
                f"got {type(model).__name__}"
            )
        file: str | None = None
        if not isinstance(calibrator, Calibrator):
            file = str(calibrator)
            calibrator = load_calibrator(calibrator)
        self.model = model
        self.calibrator = calibrator
        self.selective = (
            selective
            if selective is None or isinstance(selective, SelectiveRule)
            else load_selective(selective)
        )
        self.template = default_template(calibrator, template)
        if self.template.shots:
            raise ConfigError(
                f"template {self.template.name!r} needs few-shot examples; CalibratedModel "
                "asks zero-shot questions (use daca1..daca5 or chat)"
            )
        self.info = calibrator_info(calibrator, file)

    def ask(self, question: str, choices: Sequence[str], *, context: str | None = None) -> Answer:
        """Answer one question: calibrated probabilities, answer, abstain flag."""
        return self.ask_many([Question("q0", question, tuple(choices), context=context)])[0]

    def ask_many(self, questions: Sequence[Question]) -> list[Answer]:
        """Answer several Questions in one scoring call (batched by the scorer)."""
        if not questions:
            return []
        self._needs("options", "ask")
        task = Task("calibrated-model", list(questions))
        raw = self.model.score(task, mode="letter", template=self.template)
        return answers_from_scores(raw, self.calibrator, self.selective, self.info)

    def ask_open(
        self,
        question: str,
        answer: str | None = None,
        *,
        context: str | None = None,
        max_new_tokens: int = 24,
    ) -> FreeAnswer:
        """A free-form answer with calibrated P(True) confidence.

        ``answer`` is judged as given; without it the model answers greedily first (in-process
        models only), with the prompt of ``llmcal generate`` (template ``qa``). The calibrator
        must be fitted on P(True) Scores; the numbers equal ``llmcal generate`` →
        ``llmcal confidence --method ptrue`` → ``llmcal apply`` on the same answer.
        """
        from llmcal.confidence import one_answer, ptrue

        self._needs("answer", "ask_open")
        if not isinstance(question, str) or not question.strip():
            raise ConfigError("ask_open: question must be a non-empty string")
        if answer is None:
            answer = self._generate(question, context, max_new_tokens)
        elif not isinstance(answer, str):
            raise ConfigError(f"ask_open: answer must be a string, got {type(answer).__name__}")
        raw = ptrue(self.model, one_answer("q0", question, answer))
        (out,) = free_answers_from_scores(raw, [answer], self.calibrator, self.selective, self.info)
        return out

    def _generate(self, question: str, context: str | None, max_new_tokens: int) -> str:
        from llmcal.models.generate import GenerationConfig, HFGenerator
        from llmcal.models.hf import HFScorer
        from llmcal.tasks.openended import OpenQuestion

        if not isinstance(self.model, HFScorer):
            raise ConfigError(
                "ask_open without an answer generates it in-process and needs an HFScorer; "
                "with a served model, pass the answer it gave: ask_open(question, answer)"
            )
        q = OpenQuestion("q0", question, NO_REFERENCE, context=context)
        rows, _ = HFGenerator(self.model).generate([q], GenerationConfig(max_new_tokens))
        return rows[0].text

    def _needs(self, view: str, method: str) -> None:
        fitted = fitted_view(self.calibrator)
        if fitted is not None and fitted != view:
            kinds = {
                "answer": "P(True) Scores of free-form answers",
                "options": "multiple-choice Scores",
            }
            other = "ask_open" if fitted == "answer" else "ask"
            raise ConfigError(
                f"CalibratedModel.{method}: the calibrator was fitted on {kinds[fitted]}; use "
                f"{other}() with it, or a calibrator fitted on {kinds[view]}"
            )
