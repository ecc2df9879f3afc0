"""Loaders: canonical JSONL, CSV / Parquet tables and Hugging Face datasets, each into a Task.

The canonical schema is one JSON object per line with ``id``, ``question``, ``choices``,
``answer`` (0-based index or null) and optional ``context`` and ``subject``. Other layouts are
read through a :class:`ColumnMapping` that says which column holds what.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from llmcal._io import atomic_write_text, loads_json
from llmcal.errors import ConfigError, DataError, LLMCalError, quote, shorten
from llmcal.tasks.types import LETTERS, Question, Task

CANONICAL_FIELDS = ("id", "question", "choices", "answer", "context", "subject")
ANSWER_FORMATS = ("auto", "index", "letter", "text", "bool", "label")
BOOL_CHOICES = ("no", "yes")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json")

_MAPPING_EXAMPLE = "question=Q,choices=A|B|C|D,answer=label"


# --------------------------------------------------------------------------------------------
# canonical JSONL
# --------------------------------------------------------------------------------------------


def load_jsonl(path: str | os.PathLike[str], name: str | None = None) -> Task:
    """Read a canonical JSONL file (a ``.json`` file holding one JSON array also works)."""
    path = Path(path)
    name = name or path.stem
    text = _read_text(path)
    records: Iterable[tuple[int, Any]]
    if text.lstrip().startswith("["):
        records, unit = _json_array(path, text), "record"
    else:
        records, unit = _json_lines(path, text), "line"
    questions: list[Question] = []
    first_seen: dict[str, int] = {}
    for pos, rec in records:
        where = f"{path}, {unit} {pos}"
        q = _canonical_question(rec, where, default_id=f"{name}-{pos:05d}")
        if q.id in first_seen:
            raise DataError(
                f"{where}: field 'id': duplicate id {quote(q.id)} (first used on {unit} "
                f"{first_seen[q.id]}); give every question a unique id"
            )
        first_seen[q.id] = pos
        questions.append(q)
    if not questions:
        raise DataError(f"{path}: contains no questions; expected one JSON object per line")
    return Task(name, tuple(questions), metadata={"source": "file", "path": str(path)})


def save_jsonl(task: Task, path: str | os.PathLike[str]) -> Path:
    """Write a Task as canonical JSONL atomically (temp file + rename)."""
    text = "".join(json.dumps(q.to_dict(), ensure_ascii=False) + "\n" for q in task)
    return atomic_write_text(path, text)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8"
        ) from exc


def _json_error(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc)  # nesting too deep, a number too long to read


def _json_lines(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    # split on "\n" only: str.splitlines also breaks at U+2028 etc., which JSON strings may hold
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield lineno, loads_json(line)
        except ValueError as exc:
            raise DataError(
                f"{path}, line {lineno}: invalid JSON ({_json_error(exc)}); "
                "each line must hold exactly one JSON object"
            ) from None


def _json_array(path: Path, text: str) -> list[tuple[int, Any]]:
    try:
        data = loads_json(text)
    except ValueError as exc:
        line = f", line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise DataError(f"{path}{line}: invalid JSON ({_json_error(exc)})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of question objects or JSON Lines")
    return list(enumerate(data, 1))


def _text_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a question or option text (None when it can)."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__} {quote(value)}"
    if not value.strip():
        return f"is empty or only whitespace ({quote(value)})"
    return None


def _canonical_question(rec: Any, where: str, default_id: str) -> Question:
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "answers" in rec:  # an open-ended row (see llmcal.tasks.openended)
        both = "both 'choices' and 'answers'" if "choices" in rec else "'answers' and no 'choices'"
        raise DataError(
            f"{where}: the row has {both}; open-ended rows ('answers' only) are read by "
            "`llmcal generate` / load_open_task, multiple-choice rows need 'choices' + 'answer'"
        )
    # fields beyond the schema are the file's own metadata: kept in Question.extra
    extra = {k: v for k, v in rec.items() if k not in CANONICAL_FIELDS}
    qid = rec.get("id")
    if qid is None:
        qid = default_id
    elif not isinstance(qid, str) or not qid.strip():
        raise DataError(
            f"{where}: field 'id' must be a non-empty string, got {quote(qid)}; quote it"
        )
    question: Any = rec.get("question")
    if "question" not in rec:
        raise DataError(f"{where}: field 'question' is missing; add the question text")
    problem = _text_problem(question)
    if problem is not None:
        raise DataError(f"{where}: field 'question' {problem}; give the question text")
    if "choices" not in rec:
        raise DataError(f"{where}: field 'choices' is missing; add a list of option strings")
    choices = rec["choices"]
    if not isinstance(choices, list):
        raise DataError(
            f"{where}: field 'choices' must be a list of strings, got "
            f"{type(choices).__name__} {quote(choices)}"
        )
    for j, c in enumerate(choices):
        problem = _text_problem(c)
        if problem is not None:
            raise DataError(
                f"{where}: field 'choices' must be a list of strings, none empty; option {j} "
                f"{problem}"
            )
    if len(choices) < 2:
        raise DataError(
            f"{where}: field 'choices' has {len(choices)} option(s); a question needs at least 2"
        )
    if len(choices) > len(LETTERS):
        raise DataError(f"{where}: field 'choices' has more than {len(LETTERS)} options")
    answer = rec.get("answer")
    if answer is not None:
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise DataError(
                f"{where}: field 'answer' must be a 0-based integer index or null, "
                f"got {quote(answer)}"
            )
        if not 0 <= answer < len(choices):
            raise DataError(
                f"{where}: field 'answer' is {quote(answer)}, outside 0..{len(choices) - 1} for "
                f"{len(choices)} choices; answers are 0-based indices into 'choices'"
            )
    for key in ("context", "subject"):
        value = rec.get(key)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: field {key!r} must be a string or null, got {quote(value)}")
    return Question(
        id=qid,
        question=question,
        choices=tuple(choices),
        answer=answer,
        context=rec.get("context") or None,
        subject=rec.get("subject") or None,
        extra=extra,
    )


# --------------------------------------------------------------------------------------------
# column mappings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnMapping:
    """Which source column holds each field of a Question.

    ``choices`` is one list-valued column or a sequence of per-option columns (trailing empty
    options are dropped); ``None`` only with ``answer_format="bool"`` (choices ``no``/``yes``).
    Column names may be dotted paths into nested records (``choices.text``). ``labels`` names
    a column with each option's label (ARC's ``choices.label``); the answer is then matched
    against those labels. ``answer_format`` says how to read ``answer``: ``index`` (integer,
    ``index_base`` 0 or 1), ``letter`` (``"A"``…), ``text`` (equal to one choice), ``bool``
    (False → 0, True → 1), ``label``, or ``auto``, which picks the one reading that fits every
    row and fails when several readings fit but disagree.
    """

    question: str
    choices: str | Sequence[str] | None = None
    answer: str | None = None
    id: str | None = None
    context: str | None = None
    subject: str | None = None
    labels: str | None = None
    answer_format: str = "auto"
    index_base: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question:
            raise ConfigError("column mapping: 'question' must name a column")
        if self.choices is not None and not isinstance(self.choices, str):
            object.__setattr__(self, "choices", tuple(self.choices))
        if isinstance(self.choices, tuple) and len(self.choices) < 2:
            raise ConfigError(
                "column mapping: per-option 'choices' needs at least 2 columns "
                f"(e.g. choices=A|B|C|D), got {list(self.choices)}"
            )
        if self.answer_format not in ANSWER_FORMATS:
            raise ConfigError(
                f"column mapping: answer_format {self.answer_format!r} is not one of "
                f"{', '.join(ANSWER_FORMATS)}"
            )
        if self.choices is None and self.answer_format != "bool":
            raise ConfigError(
                "column mapping: 'choices' is required (one list column or per-option columns "
                "A|B|C|D) unless answer_format=bool, which uses the choices 'no' and 'yes'"
            )
        if self.answer_format == "label" and self.labels is None:
            raise ConfigError("column mapping: answer_format=label needs a 'labels' column")
        if self.index_base not in (0, 1):
            raise ConfigError(f"column mapping: index_base must be 0 or 1, got {self.index_base!r}")

    def columns(self) -> list[str]:
        """Every source column this mapping reads."""
        cols = [self.question]
        if isinstance(self.choices, str):
            cols.append(self.choices)
        elif self.choices is not None:
            cols.extend(self.choices)
        cols += [c for c in (self.answer, self.id, self.context, self.subject, self.labels) if c]
        return cols


_MAPPING_KEYS = {f.name for f in fields(ColumnMapping)}


def parse_mapping(spec: str) -> ColumnMapping:
    """Parse ``"question=Q,choices=A|B|C|D,answer=label"`` (the CLI's ``--columns``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"--columns is empty; expected e.g. {_MAPPING_EXAMPLE!r}")
    values: dict[str, Any] = {}
    for item in spec.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ConfigError(
                f"--columns: {item.strip()!r} is not key=column; expected e.g. {_MAPPING_EXAMPLE!r}"
            )
        key = "answer_format" if key == "format" else key
        if key not in _MAPPING_KEYS:
            raise ConfigError(
                f"--columns: unknown key {key!r}; use {', '.join(sorted(_MAPPING_KEYS))}"
            )
        if key in values:
            raise ConfigError(f"--columns: {key!r} is given twice")
        if not value:
            raise ConfigError(f"--columns: {key!r} has no value")
        if key == "choices" and "|" in value:
            options = [v.strip() for v in value.split("|")]
            if not all(options):
                raise ConfigError(f"--columns: empty column name in choices={quote(value)}")
            values[key] = tuple(options)
        elif key == "index_base":
            if value not in ("0", "1"):
                raise ConfigError(f"--columns: index_base must be 0 or 1, got {quote(value)}")
            values[key] = int(value)
        else:
            values[key] = value
    if "question" not in values:
        raise ConfigError(f"--columns must name the question column, e.g. {_MAPPING_EXAMPLE!r}")
    return ColumnMapping(**values)


# --------------------------------------------------------------------------------------------
# tables and records
# --------------------------------------------------------------------------------------------


def load_table(
    path: str | os.PathLike[str], mapping: ColumnMapping | str, name: str | None = None
) -> Task:
    """Read a ``.csv`` / ``.tsv`` / ``.parquet`` (or non-canonical ``.jsonl``) file via a mapping."""
    path = Path(path)
    mapping = parse_mapping(mapping) if isinstance(mapping, str) else mapping
    name = name or path.stem
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    rows: Iterable[Mapping[str, Any]]
    if suffix in (".csv", ".tsv"):
        header, rows = _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
        _check_columns(str(path), mapping, header)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
        _check_columns(str(path), mapping, table.column_names)
        rows = table.to_pylist()
    elif suffix in (".jsonl", ".json"):
        text = _read_text(path)
        records = (
            _json_array(path, text) if text.lstrip().startswith("[") else _json_lines(path, text)
        )
        rows = [_as_row(str(path), pos, rec) for pos, rec in records]
    else:
        raise DataError(
            f"{path}: unsupported table type {suffix!r}; use one of {', '.join(TABLE_SUFFIXES)}"
        )
    return records_to_task(
        rows, mapping, name, source=str(path), metadata={"source": "file", "path": str(path)}
    )


def _read_csv(path: Path, delimiter: str) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8; re-save the file as UTF-8") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from exc
    return header, rows


def _as_row(source: str, pos: int, rec: Any) -> Mapping[str, Any]:
    if not isinstance(rec, dict):
        raise DataError(f"{source}, row {pos}: expected a JSON object, got {type(rec).__name__}")
    return rec


def _check_columns(source: str, mapping: ColumnMapping, available: Sequence[str]) -> None:
    have = set(available)
    for col in mapping.columns():
        if col not in have and col.split(".")[0] not in have:
            raise DataError(
                f"{source}: column {col!r} not found (columns: {shorten(', '.join(available))}); "
                "fix the column mapping (--columns)"
            )


class _NoValue(Exception):
    """A mapped column is absent from a record."""


def _get(row: Mapping[str, Any], path: str) -> Any:
    """``row[path]``, else follow a dotted path through nested dicts (and lists of dicts)."""
    if path in row:
        return row[path]
    cur: Any = row
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif (
            isinstance(cur, list) and cur and all(isinstance(x, Mapping) and part in x for x in cur)
        ):
            cur = [x[part] for x in cur]
        else:
            raise _NoValue(path)
    return cur


def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _as_text(value: Any) -> str | None:
    """Option text: strings as they are, numbers written out; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


@dataclass
class _Raw:
    row: int
    id: str
    question: str
    choices: list[str]
    answer: Any
    labels: list[str] | None
    context: str | None
    subject: str | None


def records_to_task(
    rows: Iterable[Mapping[str, Any]],
    mapping: ColumnMapping,
    name: str,
    source: str,
    metadata: dict[str, Any] | None = None,
) -> Task:
    """Turn mapped records into a Task; errors name ``source``, the 1-based row and the column."""
    raws = [_raw_row(row, i, mapping, name, source) for i, row in enumerate(rows, 1)]
    if not raws:
        raise DataError(f"{source}: contains no rows")
    answers = _resolve_answers(raws, mapping, source)
    questions: list[Question] = []
    first_seen: dict[str, int] = {}
    for raw, answer in zip(raws, answers, strict=True):
        if raw.id in first_seen:
            raise DataError(
                f"{source}, row {raw.row}, column {mapping.id!r}: duplicate id {quote(raw.id)} (first "
                f"in row {first_seen[raw.id]}); map 'id' to a unique column or leave it out"
            )
        first_seen[raw.id] = raw.row
        questions.append(
            Question(raw.id, raw.question, tuple(raw.choices), answer, raw.context, raw.subject)
        )
    return Task(name, tuple(questions), metadata=dict(metadata or {}))


def _raw_row(
    row: Mapping[str, Any], i: int, mapping: ColumnMapping, name: str, source: str
) -> _Raw:
    def fail(col: str, problem: str) -> DataError:
        return DataError(f"{source}, row {i}, column {col!r}: {problem}")

    def get(col: str) -> Any:
        try:
            return _get(row, col)
        except _NoValue:
            keys = shorten(", ".join(str(k) for k in list(row)[:20]))
            raise fail(col, f"not found (this row has: {keys}); fix the column mapping") from None

    question = get(mapping.question)
    problem = _text_problem(question)
    if problem is not None:
        raise fail(mapping.question, f"question {problem}")
    choices = _row_choices(mapping, get, fail)
    if len(choices) > len(LETTERS):
        raise fail(str(mapping.choices), f"{len(choices)} options; at most {len(LETTERS)}")
    labels: list[str] | None = None
    if mapping.labels:
        raw_labels = get(mapping.labels)
        if not isinstance(raw_labels, (list, tuple)) or len(raw_labels) != len(choices):
            raise fail(
                mapping.labels,
                f"labels must be a list with one label per option, got {quote(raw_labels)}",
            )
        labels = [str(x).strip() for x in raw_labels]
    qid: str
    if mapping.id:
        value = get(mapping.id)
        if _is_missing(value):
            raise fail(mapping.id, "id is empty; every row needs an id, or leave 'id' unmapped")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise fail(mapping.id, f"id must be text or an integer, got {quote(value)}")
        qid = str(value)
    else:
        qid = f"{name}-{i - 1:05d}"  # 0-based, the convention of the bundled data files
    optional: dict[str, str | None] = {}
    for key in ("context", "subject"):
        col = getattr(mapping, key)
        value = get(col) if col else None
        if not _is_missing(value) and not isinstance(value, str):
            raise fail(col, f"{key} must be text, got {quote(value)}")
        optional[key] = None if _is_missing(value) else value
    answer = get(mapping.answer) if mapping.answer else None
    return _Raw(i, qid, question, choices, answer, labels, optional["context"], optional["subject"])


def _row_choices(
    mapping: ColumnMapping, get: Callable[[str], Any], fail: Callable[[str, str], DataError]
) -> list[str]:
    if mapping.choices is None:
        return list(BOOL_CHOICES)
    if isinstance(mapping.choices, str):
        col = mapping.choices
        value = get(col)
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = loads_json(value)
            except ValueError as exc:
                raise fail(col, f"not a valid JSON list ({_json_error(exc)})") from None
        if not isinstance(value, (list, tuple)):
            raise fail(
                col,
                f"expected a list of options, got {quote(value)}; map one column per option "
                "(choices=A|B|C|D) or store the options as a list / JSON list",
            )
        texts = [_as_text(v) for v in value]
        for j, t in enumerate(texts):
            if t is None or not t.strip():
                raise fail(col, f"option {j} is empty or not text ({quote(value[j])})")
        choices = [t for t in texts if t is not None]
    else:
        values = [get(c) for c in mapping.choices]
        while values and _is_missing(values[-1]):  # fewer options in this row
            values.pop()
        choices = []
        for c, v in zip(mapping.choices[: len(values)], values, strict=True):
            text = _as_text(v)
            if text is None or not text.strip():
                raise fail(
                    c,
                    f"option is empty or not text ({quote(v)}); only trailing options may be empty",
                )
            choices.append(text)
        col = "|".join(mapping.choices)
    if len(choices) < 2:
        raise fail(col, f"{len(choices)} option(s); a question needs at least 2")
    return choices


class _Mismatch(Exception):
    """An answer value does not fit an answer format."""


def _read_answer(value: Any, fmt: str, raw: _Raw, index_base: int) -> int:
    n = len(raw.choices)
    if fmt == "index":
        if isinstance(value, bool):
            raise _Mismatch(f"{quote(value)} is a boolean, not an index")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if not isinstance(value, int):
            raise _Mismatch(f"{quote(value)} is not an integer index")
        k = value - index_base
        if not 0 <= k < n:
            raise _Mismatch(
                f"index {value} is outside {index_base}..{n - 1 + index_base} for {n} choices "
                f"({index_base}-based; set index_base if that is wrong)"
            )
        return k
    if fmt == "letter":
        if not (isinstance(value, str) and len(value.strip()) == 1 and value.strip() in LETTERS):
            raise _Mismatch(f"{quote(value)} is not a capital letter A-Z")
        k = LETTERS.index(value.strip())
        if k >= n:
            raise _Mismatch(f"letter {value.strip()} is beyond the {n} choices ({LETTERS[:n]})")
        return k
    if fmt == "text":
        if not isinstance(value, str):
            raise _Mismatch(f"{quote(value)} is not text")
        hits = [k for k, c in enumerate(raw.choices) if c.strip() == value.strip()]
        if not hits:
            raise _Mismatch(f"{quote(value)} is not one of the choices {quote(list(raw.choices))}")
        if len(hits) > 1:
            raise _Mismatch(f"{quote(value)} matches several identical choices")
        return hits[0]
    if fmt == "bool":
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            value = value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise _Mismatch(f"{quote(value)} is not a boolean (true/false)")
        if n != 2:
            raise _Mismatch(f"a boolean answer needs exactly 2 choices (no, yes), got {n}")
        return int(value)
    if fmt == "label":
        if raw.labels is None:
            raise _Mismatch("no labels column is mapped")
        key = str(value).strip()
        if key not in raw.labels:
            raise _Mismatch(f"{quote(value)} is not one of the option labels {quote(raw.labels)}")
        return raw.labels.index(key)
    raise AssertionError(fmt)


def _resolve_answers(raws: list[_Raw], mapping: ColumnMapping, source: str) -> list[int | None]:
    labelled = [r for r in raws if not _is_missing(r.answer)]
    if mapping.answer_format != "auto":
        formats = [mapping.answer_format]
    elif mapping.labels:
        formats = ["label"]
    else:
        formats = ["bool", "index", "letter", "text"]
    readings: dict[str, list[int]] = {}
    failures: dict[str, tuple[_Raw, str]] = {}
    for fmt in formats:
        out: list[int] = []
        for r in labelled:
            try:
                out.append(_read_answer(r.answer, fmt, r, mapping.index_base))
            except _Mismatch as exc:
                failures[fmt] = (r, str(exc))
                break
        else:
            readings[fmt] = out
    if not readings:
        fmt = formats[0] if len(formats) == 1 else _guess_format(labelled[0].answer)
        r, problem = failures[fmt]
        how = "" if mapping.answer_format != "auto" else f" (read as {fmt})"
        raise DataError(
            f"{source}, row {r.row}, column {mapping.answer!r}: answer {problem}{how}; "
            f"set answer_format to one of {', '.join(ANSWER_FORMATS[1:])} or fix the value"
        )
    chosen = next(iter(readings))
    for fmt, out in readings.items():
        if out != readings[chosen]:
            bad = next(
                k for k, (a, b) in enumerate(zip(readings[chosen], out, strict=True)) if a != b
            )
            r = labelled[bad]
            raise DataError(
                f"{source}, row {r.row}, column {mapping.answer!r}: answer {quote(r.answer)} is "
                f"ambiguous (as {chosen}: option {readings[chosen][bad]}; as {fmt}: option "
                f"{out[bad]}); set answer_format={chosen} or answer_format={fmt}"
            )
    it = iter(readings[chosen])
    return [None if _is_missing(r.answer) else next(it) for r in raws]


def _guess_format(value: Any) -> str:
    if isinstance(value, bool) or (
        isinstance(value, str) and value.strip().lower() in ("true", "false")
    ):
        return "bool"
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        return "index"
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip() in LETTERS:
        return "letter"
    return "text"


# --------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------


def load_hf(
    dataset: str | os.PathLike[str],
    split: str,
    mapping: ColumnMapping | str,
    config: str | None = None,
    name: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Task:
    """Load a Hugging Face dataset (hub id, local dataset folder or data file) via a mapping."""
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(
            "loading Hugging Face datasets needs the optional 'datasets' package: "
            "pip install 'llmcal[hub]'"
        ) from exc
    mapping = parse_mapping(mapping) if isinstance(mapping, str) else mapping
    where = f"{dataset}" + (f" (config {config}, split {split})" if config else f" (split {split})")
    local = Path(dataset)
    is_local = local.exists()
    name = name or (local.stem if is_local else str(dataset).rsplit("/", 1)[-1])
    cache = str(cache_dir) if cache_dir is not None else None
    try:
        if (
            is_local
            and local.is_dir()
            and any((local / f).exists() for f in ("dataset_dict.json", "state.json"))
        ):
            ds: Any = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{where}: no split {split!r}; it has {', '.join(ds)}")
                ds = ds[split]
        elif is_local and local.is_file():
            builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
            if local.suffix.lower() not in builder:
                raise DataError(f"{local}: unsupported data file type {local.suffix!r}")
            ds = datasets.load_dataset(
                builder[local.suffix.lower()],
                data_files={split: str(local)},
                split=split,
                cache_dir=cache,
            )
        else:
            ds = datasets.load_dataset(str(dataset), config, split=split, cache_dir=cache)
    except LLMCalError:
        raise
    except Exception as exc:  # datasets raises many unrelated types; report them uniformly
        offline = _hub_offline()
        hint = (
            " (HF_HUB_OFFLINE is set and it is not in the local cache; go online or use a local copy)"
            if offline and not is_local
            else ""
        )
        raise DataError(
            f"cannot load Hugging Face dataset {where}: {type(exc).__name__}: {exc}{hint}"
        ) from exc
    meta: dict[str, Any] = {"source": "file" if is_local else "hub", "split": split}
    meta.update({"path": str(local)} if is_local else {"dataset": str(dataset)})
    if config:
        meta["config"] = config
    return records_to_task(iter(ds), mapping, name, source=where, metadata=meta)


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
