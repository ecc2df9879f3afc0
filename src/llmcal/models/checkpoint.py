"""Resumable scoring for any Scorer: deterministic chunks appended to a checkpoint file.

:class:`CheckpointedScorer` wraps a Scorer (HF, HTTP, …). It cuts the task into consecutive
chunks of ``chunk_size`` questions (always the same cut for the same task, so batch composition,
and with it every float, is the same whether a run was interrupted or not), scores the chunks
that the checkpoint does not hold yet, and appends each finished chunk to
``<out>.ckpt.jsonl`` beside the output as one JSON line.

The checkpoint's first line is a header with the run's **key**: scorer identity (model, backend,
source, adapter, dtype, batch size, top-k, …), task name and a hash of its question ids, mode,
template (name and text), normalisation, few-shot ids, chunk size and any extra settings
(e.g. CAPE). A rerun with the same key resumes; a different key is refused with a
:class:`~llmcal.errors.ConfigError` that names what changed, never mixed.

Appends are crash-safe: each line is written with one ``write`` on an ``O_APPEND`` descriptor and
fsync'd, and carries a SHA-256 of its payload; a torn last line (a kill mid-write) fails the check
and is cut off before the next append. After the Scores are saved the checkpoint is deleted.

``meta["created"]`` of the result is the time the run first started (kept in the header), so an
interrupted-and-resumed run and an uninterrupted one give identical Scores and identical meta.
Chunk metas are merged in chunk order: dicts merge key by key, otherwise the first chunk wins.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from llmcal._io import loads_json
from llmcal.errors import ConfigError, OutputError, ScoresError
from llmcal.models.base import Mode, Normalization, Scorer, build_scores, check_request
from llmcal.scores import Scores
from llmcal.tasks.templates import DEFAULT_TEMPLATE, Template
from llmcal.tasks.types import Question, Task

FORMAT = 1
SUFFIX = ".ckpt.jsonl"
DEFAULT_CHUNK_SIZE = 32

ScoreFn = Callable[..., Scores]


def checkpoint_path(out: str | os.PathLike[str]) -> Path:
    """The checkpoint file beside an output: ``run.parquet`` → ``run.parquet.ckpt.jsonl``."""
    out = Path(out)
    return out.with_name(out.name + SUFFIX)


def _digest(payload: str) -> str:
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def scorer_identity(scorer: Scorer) -> dict[str, Any]:
    """What determines a scorer's numbers: ``scorer.settings()`` if it has one, else attributes."""
    settings = getattr(scorer, "settings", None)
    if callable(settings):
        return _jsonable({"class": type(scorer).__name__, **settings()})
    ident: dict[str, Any] = {"class": type(scorer).__name__, "name": scorer.name}
    for attr in ("source", "adapter", "device", "dtype", "batch_size"):
        if hasattr(scorer, attr):
            ident[attr] = getattr(scorer, attr)
    src = ident.get("source")
    if is_dataclass(src) and not isinstance(src, type):
        src = asdict(src)
        ident["source"] = {k: src[k] for k in ("kind", "location", "gguf_file")}
    return _jsonable(ident)


def merge_meta(metas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge chunk metas in order: nested dicts merge key by key, otherwise the first wins."""
    out: dict[str, Any] = {}
    for meta in metas:
        for key, value in meta.items():
            if key not in out:
                out[key] = value
            elif isinstance(out[key], dict) and isinstance(value, dict):
                out[key] = merge_meta([out[key], value])
    return out


class Checkpoint:
    """The append-only JSONL checkpoint of one run (see the module docstring)."""

    def __init__(self, path: Path, key: dict[str, Any], numeric_rows: bool = True) -> None:
        self.path = path
        self.key = key
        self.numeric_rows = numeric_rows  # scorer rows are option logits; others any JSON
        self.created = ""
        self.chunks: dict[int, dict[str, Any]] = {}
        self._header: dict[str, Any] | None = None  # written with the first finished chunk

    def open(self, resume: bool) -> None:
        """Read (and validate) an existing checkpoint, or prepare a new one.

        A new checkpoint file appears only with the first finished chunk, so a run that fails
        before finishing one leaves nothing behind that could block a run with other settings.
        """
        if self.path.exists() and not resume:
            self.path.unlink()
        if self.path.exists():
            self._read()
        if not self.created:
            self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            self._header = {"llmcal_checkpoint": FORMAT, "created": self.created, "key": self.key}

    def _read(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        good = 0  # bytes of intact lines
        records: list[dict[str, Any]] = []
        for line in lines:
            rec = _parse(line)
            if rec is None:
                break
            records.append(rec)
            good += len(line) + 1
        if not raw.strip():  # an empty file (left by an older llmcal): nothing to resume
            self.path.unlink()
            return
        if (
            not records
            or records[0].get("llmcal_checkpoint") != FORMAT
            or not isinstance(records[0].get("key"), dict)
        ):
            raise ConfigError(
                f"{self.path} is not an llmcal checkpoint of this version; delete it (or pass "
                "--restart) to score from scratch"
            )
        header = records[0]
        if header.get("key") != self.key:
            raise ConfigError(
                f"{self.path} belongs to a run with other settings "
                f"({_key_diff(header.get('key') or {}, self.key)}); refusing to mix them. Use "
                "another --out, or pass --restart to discard the checkpoint"
            )
        if good < len(raw):  # a torn or corrupt tail: cut it off before appending again
            with open(self.path, "r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())
        self.created = str(header.get("created", ""))
        for n, rec in enumerate(records[1:], 2):
            problem = _chunk_problem(rec, self.numeric_rows)
            if problem is not None:
                raise ConfigError(
                    f"{self.path}, line {n}: not a valid checkpoint chunk ({problem}); delete the "
                    "checkpoint (or pass --restart) to score from scratch"
                )
            self.chunks[rec["chunk"]] = rec

    def add(self, index: int, ids: list[str], rows: Sequence[Any], meta: dict[str, Any]) -> None:
        """Append one finished chunk."""
        rec = {"chunk": index, "ids": ids, "rows": rows, "meta": meta}
        if self._header is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.unlink(missing_ok=True)
            self._append(self._header)
            self._header = None
        self._append(rec)
        self.chunks[index] = rec

    def _append(self, record: dict[str, Any]) -> None:
        body = json.dumps(record, sort_keys=True, separators=(",", ":"))
        line = json.dumps({"sha": _digest(body), "rec": body}, separators=(",", ":")) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                data = line.encode("utf-8")
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(f"short write to {self.path}")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise OutputError(
                f"cannot append to the checkpoint {self.path} ({exc.strerror or exc}); free "
                "space or choose another --out"
            ) from None


def _parse(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        outer = loads_json(line)
        body = outer["rec"]
        if not isinstance(body, str) or _digest(body) != outer["sha"]:
            return None
        rec = loads_json(body)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def _chunk_problem(rec: dict[str, Any], numeric_rows: bool = True) -> str | None:
    """Why an intact checkpoint line is not a chunk record (None when it is one)."""
    index, ids, rows, meta = (rec.get(k) for k in ("chunk", "ids", "rows", "meta"))
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return "'chunk' is not a non-negative integer"
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return "'ids' is not a list of strings"
    if not isinstance(rows, list) or len(rows) != len(ids):
        return "'rows' is not one list per id"
    for row in rows if numeric_rows else ():
        if not isinstance(row, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in row
        ):
            return "a row is not a list of numbers"
    if not isinstance(meta, dict):
        return "'meta' is not an object"
    return None


def _key_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = [
        f"{k}: {json.dumps(old.get(k))[:80]} then, {json.dumps(new.get(k))[:80]} now"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    return "; ".join(diffs[:3]) or "unreadable key"


class CheckpointedScorer:
    """Wrap ``scorer`` so that its runs write a checkpoint beside ``out`` and resume from it.

    ``score_fn(scorer, task, **kwargs)`` replaces ``scorer.score`` (e.g. CAPE's ``score_cape``);
    ``extra_key`` adds settings of that function to the key. ``progress`` shows one bar over
    the whole task (``False``: silent), which the wrapped scorer's own bar moves per batch
    (see :mod:`llmcal.progress`); a resumed run first says how many questions it resumes.
    """

    def __init__(
        self,
        scorer: Scorer,
        out: str | os.PathLike[str],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        resume: bool = True,
        score_fn: ScoreFn | None = None,
        extra_key: dict[str, Any] | None = None,
        progress: bool | None = None,
        on_chunk: Callable[[int, int], None] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        self.scorer = scorer
        self.name = scorer.name
        self.out = Path(out)
        self.path = checkpoint_path(self.out)
        self.chunk_size = int(chunk_size)
        self.resume = resume
        self.score_fn = score_fn
        self.extra_key = dict(extra_key or {})
        self.progress = progress
        self.on_chunk = on_chunk
        #: Chunks found finished in the checkpoint / scored by the last call.
        self.resumed_rows = 0
        self.scored_rows = 0

    #: A start line (model, task, n, mode) shown once the checkpoint has been checked.
    announce: str | None = None

    def key(
        self,
        task: Task,
        mode: str,
        tmpl: Template,
        normalization: str,
        shots: Sequence[Question],
    ) -> dict[str, Any]:
        """The settings a checkpoint must match to be resumed."""
        return _jsonable(
            {
                "scorer": scorer_identity(self.scorer),
                "task": task.name,
                "n": len(task),
                "ids_sha": _digest("\n".join(task.ids)),
                "mode": mode,
                "template": asdict(tmpl),
                "normalization": normalization if mode == "cloze" else None,
                "shot_ids": [s.id for s in shots],
                "chunk_size": self.chunk_size,
                **({"extra": self.extra_key} if self.extra_key else {}),
            }
        )

    def score(
        self,
        task: Task,
        *,
        mode: Mode = "letter",
        template: str | Template = DEFAULT_TEMPLATE,
        normalization: Normalization = "mean",
        shots: Sequence[Question] = (),
    ) -> Scores:
        """Score ``task`` chunk by chunk, skipping chunks the checkpoint already holds."""
        tmpl = check_request(task, mode, template, normalization, shots)
        ckpt = Checkpoint(self.path, self.key(task, mode, tmpl, normalization, shots))
        ckpt.open(self.resume)
        chunks = [
            list(task.questions[s : s + self.chunk_size])
            for s in range(0, len(task), self.chunk_size)
        ]
        for index, rec in ckpt.chunks.items():
            want = [q.id for q in chunks[index]] if index < len(chunks) else None
            if rec.get("ids") != want:
                raise ScoresError(
                    f"{self.path}: chunk {index} holds other questions than the task; delete the "
                    "checkpoint (or pass --restart)"
                )
        done = set(ckpt.chunks)
        self.resumed_rows = sum(len(chunks[i]) for i in done)
        self.scored_rows = 0
        kwargs: dict[str, Any] = {
            "mode": mode,
            "template": tmpl,
            "normalization": normalization,
            "shots": shots,
        }
        from llmcal.progress import note

        if self.announce:  # after the checkpoint is known good, so a bad one is the only line
            note(self.announce)
        if self.resumed_rows and self.progress is not False:
            note(
                f"resuming {self.resumed_rows} of {len(task)} questions from {self.path}; "
                f"scoring the other {len(task) - self.resumed_rows}"
            )
        with self._bar(len(task), self.resumed_rows) as bar:
            for index, questions in enumerate(chunks):
                if index in done:
                    continue
                sub = Task(task.name, questions, task.metadata)
                with bar.span(len(questions)):  # the scorer's own bar moves this one per batch
                    if self.score_fn is None:
                        part = self.scorer.score(sub, **kwargs)
                    else:
                        part = self.score_fn(self.scorer, sub, **kwargs)
                meta = {
                    k: v
                    for k, v in part.meta.items()
                    if k not in ("task", "created", "llmcal_version")
                }
                rows = [
                    [float(x) for x in part.logits[j, : len(q.choices)]]
                    for j, q in enumerate(questions)
                ]
                ckpt.add(index, [q.id for q in questions], rows, _jsonable(meta))
                self.scored_rows += len(questions)
                if self.on_chunk is not None:
                    self.on_chunk(index, len(chunks))
        rows_all = [row for i in range(len(chunks)) for row in ckpt.chunks[i]["rows"]]
        meta = merge_meta([ckpt.chunks[i]["meta"] for i in range(len(chunks))])
        meta["created"] = ckpt.created
        meta["chunk_size"] = self.chunk_size
        return build_scores(task, rows_all, meta)

    def discard(self) -> None:
        """Delete the checkpoint (after the Scores are safely saved)."""
        self.path.unlink(missing_ok=True)

    def _bar(self, total: int, initial: int) -> Any:
        from llmcal.progress import progress

        return progress(
            total, f"scoring {self.name}", unit="q", initial=initial, enabled=self.progress
        )


class ChunkedRun:
    """A resumable run over any per-question computation (e.g. generation), one row a question.

    The questions ``ids`` are cut into consecutive chunks of ``chunk_size``; ``run(compute)``
    calls ``compute(start, stop)`` → (rows, meta) for each chunk the checkpoint at ``path`` does
    not hold yet and appends it (the same crash-safe :class:`Checkpoint` file and key check as
    :class:`CheckpointedScorer`; rows may be any JSON values). ``path=None`` runs without a
    checkpoint. Returns all rows in order, the chunk metas merged and the run's start time.
    """

    def __init__(
        self,
        path: Path | None,
        key: dict[str, Any],
        ids: Sequence[str],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        resume: bool = True,
        desc: str = "running",
        progress: bool | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        self.path = path
        self.ids = list(ids)
        self.chunk_size = int(chunk_size)
        self.key = _jsonable(
            {**key, "n": len(self.ids), "ids_sha": _digest("\n".join(self.ids)),
             "chunk_size": self.chunk_size}
        )  # fmt: skip
        self.resume = resume
        self.desc = desc
        self.progress = progress
        self.resumed_rows = 0
        self.computed_rows = 0

    def run(
        self, compute: Callable[[int, int], tuple[list[Any], dict[str, Any]]]
    ) -> tuple[list[Any], dict[str, Any], str]:
        """Compute the missing chunks; (rows, merged meta, created)."""
        from tqdm.auto import tqdm

        bounds = [
            (s, min(s + self.chunk_size, len(self.ids)))
            for s in range(0, len(self.ids), self.chunk_size)
        ]
        ckpt: Checkpoint | None = None
        done: dict[int, dict[str, Any]] = {}
        created = ""
        if self.path is not None:
            ckpt = Checkpoint(self.path, self.key, numeric_rows=False)
            ckpt.open(self.resume)
            created = ckpt.created
            for index, rec in ckpt.chunks.items():
                a, b = bounds[index] if index < len(bounds) else (0, -1)
                if rec.get("ids") != self.ids[a:b]:
                    raise ScoresError(
                        f"{self.path}: chunk {index} holds other questions than the task; delete "
                        "the checkpoint (or pass --restart)"
                    )
            done = dict(ckpt.chunks)
        self.resumed_rows = sum(bounds[i][1] - bounds[i][0] for i in done)
        self.computed_rows = 0
        disable = not self.progress if self.progress is not None else None
        with tqdm(
            total=len(self.ids), initial=self.resumed_rows, desc=self.desc, unit="q",
            disable=disable, leave=False,
        ) as bar:  # fmt: skip
            for index, (a, b) in enumerate(bounds):
                if index in done:
                    continue
                rows, meta = compute(a, b)
                if len(rows) != b - a:
                    raise AssertionError(f"chunk {index}: {len(rows)} rows for {b - a} questions")
                rec = {"chunk": index, "ids": self.ids[a:b], "rows": _jsonable(rows),
                       "meta": _jsonable(meta)}  # fmt: skip
                if ckpt is not None:
                    ckpt.add(index, rec["ids"], rec["rows"], rec["meta"])
                done[index] = rec
                self.computed_rows += b - a
                bar.update(b - a)
        rows_all = [row for i in range(len(bounds)) for row in done[i]["rows"]]
        meta_all = merge_meta([done[i]["meta"] for i in range(len(bounds))])
        return rows_all, meta_all, created

    def discard(self) -> None:
        """Delete the checkpoint."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
