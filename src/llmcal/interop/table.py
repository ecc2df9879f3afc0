"""Read a CSV / Parquet table of probabilities (or logits) that llmcal did not write.

Without a mapping the table must use :meth:`llmcal.scores.Scores.read_table`'s column names
(``id``, ``label``, ``probs`` / ``logits`` lists, ``prob_0…`` / ``logit_0…``, ``confidence`` with
``correct``, ``subject``, ``n_options``). A mapping renames your columns to those:
``"id=qid,label=gold,probs=p_a|p_b|p_c|p_d"`` (``|`` lists one column per option).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from llmcal.errors import ConfigError, ScoresError
from llmcal.scores import Scores, ScoresWarning, _csv_columns, _from_columns, _parquet_columns

TARGETS = ("id", "label", "subject", "n_options", "logits", "probs", "confidence", "correct")
#: What a table without llmcal metadata does not say (unless given as meta).
UNKNOWN = ("model", "task", "template")


def parse_table_mapping(text: str) -> dict[str, list[str]]:
    """``"id=qid,probs=a|b"`` → ``{"id": ["qid"], "probs": ["a", "b"]}`` (validated)."""
    out: dict[str, list[str]] = {}
    for part in text.split(","):
        target, sep, source = part.strip().partition("=")
        target = target.strip()
        sources = [s.strip() for s in source.split("|")]
        if not sep or not target or not all(sources):
            raise ConfigError(
                f"--columns {text!r}: expected FIELD=COLUMN pairs, e.g. "
                "id=qid,label=gold,probs=p_a|p_b|p_c"
            )
        if target not in TARGETS:
            raise ConfigError(f"--columns {text!r}: unknown field {target!r}; use {TARGETS}")
        if target in out:
            raise ConfigError(f"--columns {text!r}: field {target!r} is given twice")
        if len(sources) > 1 and target not in ("probs", "logits"):
            raise ConfigError(f"--columns {text!r}: only probs / logits take several columns")
        out[target] = sources
    if not {"probs", "logits", "confidence"} & set(out):
        raise ConfigError(f"--columns {text!r}: map probs, logits or confidence to your columns")
    return out


def _columns(path: Path) -> dict[str, list[Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_columns(path)
    if suffix in (".csv", ".tsv"):
        return _csv_columns(path, "\t" if suffix == ".tsv" else ",")
    raise ScoresError(f"{path}: expected a .csv, .tsv or .parquet table")


def read_foreign_table(
    path: str | os.PathLike[str],
    mapping: str | dict[str, list[str]] | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[Scores, list[str]]:
    """Scores from a foreign table, and the provenance fields nobody recorded (model, task, …)."""
    path = Path(path)
    if not path.is_file():
        raise ScoresError(f"{path}: no such file")
    meta = {"imported_from": "table", "source_file": path.name, **(meta or {})}
    if mapping is None:
        with warnings.catch_warnings():  # the caller reports what is unknown, once
            warnings.simplefilter("ignore", ScoresWarning)
            scores = Scores.read_table(path, meta=meta)
    else:
        fields = parse_table_mapping(mapping) if isinstance(mapping, str) else mapping
        raw = _columns(path)
        renamed: dict[str, list[Any]] = {}
        for target, sources in fields.items():
            absent = [s for s in sources if s not in raw]
            if absent:
                raise ScoresError(
                    f"{path}: no column {absent[0]!r} (for {target}); the table has "
                    f"{list(raw)[:20]}"
                )
            if len(sources) == 1:
                renamed[target] = raw[sources[0]]
            else:
                prefix = "prob_" if target == "probs" else "logit_"
                for j, s in enumerate(sources):
                    renamed[f"{prefix}{j}"] = raw[s]
        scores = _from_columns(renamed, meta, str(path))
    return scores, [k for k in UNKNOWN if not scores.meta.get(k)]
