"""Answers: the free-form answers a model generated for open-ended questions, and their judgement.

One row per question: the prompt, the generated text (cut at the stop), its token ids and
per-token log-probs (natural log, at temperature 1 whatever the sampling temperature), why
generation stopped, the accepted reference answers, the correctness judgement (1 right, 0 wrong,
-1 not judged) and, with ``--samples N``, N sampled answers with their summed log-probs.
``meta`` records the model, task, generation settings and the judge (matcher or LLM judge or
label file) that produced ``correct``. Saved as Parquet with ``meta`` in the schema metadata
(key ``llmcal_answers``), written atomically, validated on load.

Confidence methods (:mod:`llmcal.confidence`) turn Answers into answer-view Scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from llmcal._io import atomic_write
from llmcal._version import __version__
from llmcal.errors import ScoresError

FORMAT_VERSION = 1
META_KEY = b"llmcal_answers"
STOP_REASONS = ("newline", "eos", "stop", "length")

_LIST_FIELDS = (
    "ids",
    "questions",
    "references",
    "prompts",
    "texts",
    "token_ids",
    "token_logprobs",
    "stop_reasons",
    "samples",
    "sample_logprobs",
)


@dataclass(frozen=True, eq=False)
class Answers:
    """Generated answers of n questions (see the module docstring); every field has n rows."""

    ids: tuple[str, ...]
    questions: tuple[str, ...]
    references: tuple[tuple[str, ...], ...]
    prompts: tuple[str, ...]
    texts: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    token_logprobs: tuple[tuple[float, ...], ...]
    stop_reasons: tuple[str, ...]
    correct: npt.NDArray[np.int64]
    samples: tuple[tuple[str, ...], ...] = ()
    sample_logprobs: tuple[tuple[float, ...], ...] = ()
    subjects: tuple[str | None, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        set_ = object.__setattr__
        set_(self, "ids", tuple(str(i) for i in self.ids))
        for name in ("questions", "prompts", "texts", "stop_reasons"):
            set_(self, name, tuple(getattr(self, name)))
        set_(self, "references", tuple(tuple(r) for r in self.references))
        set_(self, "token_ids", tuple(tuple(int(t) for t in r) for r in self.token_ids))
        set_(self, "token_logprobs", tuple(tuple(float(v) for v in r) for r in self.token_logprobs))
        set_(self, "samples", tuple(tuple(r) for r in self.samples) or tuple(() for _ in range(n)))
        set_(
            self,
            "sample_logprobs",
            tuple(tuple(float(v) for v in r) for r in self.sample_logprobs)
            or tuple(() for _ in range(n)),
        )
        if self.subjects is not None:
            set_(self, "subjects", tuple(self.subjects))
        correct = np.asarray(self.correct if len(self.correct) else np.full(n, -1), dtype=np.int64)
        correct = correct.copy()
        correct.flags.writeable = False
        set_(self, "correct", correct)
        set_(self, "meta", dict(self.meta))
        self._validate()

    def _validate(self) -> None:
        n = len(self.ids)
        for name in _LIST_FIELDS:
            if len(getattr(self, name)) != n:
                raise ScoresError(f"Answers: {name} has {len(getattr(self, name))} rows, ids {n}")
        if self.correct.shape != (n,):
            raise ScoresError(f"Answers: correct must have shape ({n},), got {self.correct.shape}")
        if self.subjects is not None and len(self.subjects) != n:
            raise ScoresError(f"Answers: subjects has {len(self.subjects)} rows, ids {n}")
        if any(not i for i in self.ids):
            raise ScoresError("Answers: every id must be a non-empty string")
        if len(set(self.ids)) != n:
            seen: set[str] = set()
            dup = next(i for i in self.ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ScoresError(f"Answers: ids must be unique; {dup!r} appears more than once")
        for r, (ids, lps) in enumerate(zip(self.token_ids, self.token_logprobs, strict=True)):
            if ids and len(ids) != len(lps):
                raise ScoresError(
                    f"Answers row {r} (id {self.ids[r]!r}): {len(ids)} token ids but "
                    f"{len(lps)} token log-probs"
                )
            if any(not (v <= 0.0) for v in lps):  # catches NaN and positive values
                raise ScoresError(
                    f"Answers row {r} (id {self.ids[r]!r}): token log-probs must be <= 0, got "
                    f"{[v for v in lps if not v <= 0.0][:3]}"
                )
        bad = [s for s in self.stop_reasons if s not in STOP_REASONS]
        if bad:
            raise ScoresError(
                f"Answers: stop reason {bad[0]!r} is not one of {', '.join(STOP_REASONS)}"
            )
        if ((self.correct < -1) | (self.correct > 1)).any():
            raise ScoresError("Answers: correct must be 1 (right), 0 (wrong) or -1 (not judged)")
        for r, (s, lp) in enumerate(zip(self.samples, self.sample_logprobs, strict=True)):
            if lp and len(lp) != len(s):
                raise ScoresError(
                    f"Answers row {r} (id {self.ids[r]!r}): {len(s)} samples but {len(lp)} "
                    "sample log-probs"
                )
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise ScoresError(f"Answers meta must be JSON-serialisable: {exc}") from exc

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_samples(self) -> int:
        """Sampled answers per question (0 without --samples)."""
        return max((len(s) for s in self.samples), default=0)

    @property
    def judged(self) -> bool:
        """True when every answer has a correctness judgement."""
        return bool(len(self) and (self.correct >= 0).all())

    def accuracy(self) -> float:
        """Share of judged answers that are right (NaN when none is judged)."""
        known = self.correct >= 0
        return float(self.correct[known].mean()) if known.any() else float("nan")

    def replace(self, **changes: Any) -> Answers:
        """A copy with some fields changed (``meta`` given here is merged, not replaced)."""
        meta = {**self.meta, **changes.pop("meta", {})}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "meta"}
        values.update(changes)
        return Answers(meta=meta, **values)

    def select(self, index: Sequence[int] | npt.NDArray[np.integer]) -> Answers:
        """Rows by integer index (meta kept)."""
        idx = [int(i) for i in index]
        values: dict[str, Any] = {
            name: tuple(getattr(self, name)[i] for i in idx) for name in _LIST_FIELDS
        }
        values["correct"] = self.correct[idx] if idx else np.zeros(0, dtype=np.int64)
        values["subjects"] = None if self.subjects is None else tuple(self.subjects[i] for i in idx)
        return Answers(meta=self.meta, **values)

    def by_ids(self, ids: Sequence[str]) -> Answers:
        """Rows in the order of ``ids``; every id must be present."""
        pos = {k: i for i, k in enumerate(self.ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise ScoresError(
                f"{len(missing)} requested ids are not in these Answers (e.g. {missing[0]!r})"
            )
        return self.select([pos[i] for i in ids])

    def total_logprobs(self) -> npt.NDArray[np.float64]:
        """Summed token log-prob of each answer."""
        return np.array([float(sum(r)) for r in self.token_logprobs], dtype=np.float64)

    def mean_logprobs(self) -> npt.NDArray[np.float64]:
        """Mean token log-prob of each answer (0 for an answer with no tokens)."""
        return np.array(
            [float(np.mean(r)) if r else 0.0 for r in self.token_logprobs], dtype=np.float64
        )

    # -- I/O ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write Parquet atomically (temp file + rename)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        if path.suffix != ".parquet":
            raise ScoresError(
                f"Answers are saved as Parquet; use a .parquet path, not {path.name!r}"
            )
        meta = {**self.meta, "llmcal_version": self.meta.get("llmcal_version", __version__)}
        s, li, lf = pa.string(), pa.list_(pa.int64()), pa.list_(pa.float64())
        columns: dict[str, Any] = {
            "id": pa.array(list(self.ids), type=s),
            "question": pa.array(list(self.questions), type=s),
            "references": pa.array([list(r) for r in self.references], type=pa.list_(s)),
            "prompt": pa.array(list(self.prompts), type=s),
            "text": pa.array(list(self.texts), type=s),
            "token_ids": pa.array([list(r) for r in self.token_ids], type=li),
            "token_logprobs": pa.array([list(r) for r in self.token_logprobs], type=lf),
            "stop_reason": pa.array(list(self.stop_reasons), type=s),
            "correct": pa.array(self.correct, type=pa.int64()),
            "samples": pa.array([list(r) for r in self.samples], type=pa.list_(s)),
            "sample_logprobs": pa.array([list(r) for r in self.sample_logprobs], type=lf),
        }
        if self.subjects is not None:
            columns["subject"] = pa.array(list(self.subjects), type=s)
        header = {"format": FORMAT_VERSION, "kind": "answers", "meta": meta}
        table = pa.table(columns).replace_schema_metadata({META_KEY: json.dumps(header).encode()})
        return atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Answers:
        """Read and validate an Answers Parquet file written by :meth:`save`."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.is_file():
            raise ScoresError(f"{path}: no such Answers file")
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise ScoresError(f"{path}: not a readable Parquet file ({exc})") from exc
        metadata = table.schema.metadata or {}
        raw = metadata.get(META_KEY)
        if raw is None:
            what = (
                "it is a Scores file (from llmcal score / confidence), not generated answers"
                if b"llmcal" in metadata
                else "it was not written by llmcal generate"
            )
            raise ScoresError(f"{path}: no llmcal Answers metadata; {what}")
        try:
            header = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ScoresError(f"{path}: llmcal Answers metadata is not valid JSON ({exc})") from exc
        if header.get("format") != FORMAT_VERSION:
            raise ScoresError(
                f"{path}: Answers format {header.get('format')!r} is not supported by llmcal "
                f"{__version__} (expects {FORMAT_VERSION})"
            )
        need = {"id", "question", "references", "prompt", "text", "token_ids", "token_logprobs",
                "stop_reason", "correct", "samples", "sample_logprobs"}  # fmt: skip
        missing = need - set(table.column_names)
        if missing:
            raise ScoresError(f"{path}: missing column(s) {sorted(missing)}")

        def col(name: str) -> list[Any]:
            return list(table.column(name).to_pylist())

        try:
            return cls(
                ids=tuple(col("id")),
                questions=tuple(col("question")),
                references=tuple(col("references")),
                prompts=tuple(col("prompt")),
                texts=tuple(col("text")),
                token_ids=tuple(col("token_ids")),
                token_logprobs=tuple(col("token_logprobs")),
                stop_reasons=tuple(col("stop_reason")),
                correct=np.array(col("correct"), dtype=np.int64),
                samples=tuple(col("samples")),
                sample_logprobs=tuple(col("sample_logprobs")),
                subjects=tuple(col("subject")) if "subject" in table.column_names else None,
                meta=header.get("meta", {}),
            )
        except (ScoresError, TypeError, ValueError) as exc:
            raise ScoresError(f"{path}: {exc}") from exc
