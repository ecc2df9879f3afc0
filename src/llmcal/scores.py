"""Scores: the option logits of n questions, their labels and provenance.

Everything downstream of a scorer works on a ``Scores`` object. Rows with fewer than K options
are padded with ``-inf`` on the right; ``labels`` uses ``-1`` for unknown. ``meta`` records what
the numbers are (model, task, template, mode, backend, ``logit_kind``) and is stored as JSON in
the Parquet schema metadata, so a saved file is self-describing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from llmcal._io import atomic_write
from llmcal._version import __version__
from llmcal.errors import ScoresError

FORMAT_VERSION = 1
_META_KEY = b"llmcal"

#: What the numbers in ``logits`` are; recorded as ``meta["logit_kind"]``.
LOGIT_KINDS = ("logits", "logprobs", "topk_logprobs", "loglikelihood", "probs_log")


def log_softmax(logits: npt.ArrayLike, axis: int = -1) -> npt.NDArray[np.float64]:
    """Row-wise log-softmax in float64; ``-inf`` entries (padding) stay ``-inf``."""
    z = np.asarray(logits, dtype=np.float64)
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        lse = m + np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True))
    return np.asarray(z - lse, dtype=np.float64)


def softmax(logits: npt.ArrayLike, axis: int = -1) -> npt.NDArray[np.float64]:
    """Row-wise softmax in float64 via log-sum-exp; ``-inf`` entries get probability 0."""
    return np.exp(log_softmax(logits, axis=axis))


@dataclass(frozen=True, eq=False)
class Scores:
    """Option logits (n × K, float64), labels (n, −1 = unknown), ids, subjects and meta."""

    ids: npt.NDArray[np.object_]
    logits: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]
    meta: dict[str, Any] = field(default_factory=dict)
    subjects: npt.NDArray[np.object_] | None = None

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=object)
        logits = np.array(self.logits, dtype=np.float64, copy=True)
        labels = np.asarray(self.labels if self.labels is not None else [], dtype=np.int64).copy()
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "labels", labels)
        if self.subjects is not None:
            object.__setattr__(self, "subjects", np.asarray(self.subjects, dtype=object))
        object.__setattr__(self, "meta", dict(self.meta))
        self._validate()
        for arr in (self.ids, self.logits, self.labels, self.subjects):
            if arr is not None:
                arr.flags.writeable = False

    # -- validation -------------------------------------------------------------------------
    def _validate(self) -> None:
        ids, z, y = self.ids, self.logits, self.labels
        if ids.ndim != 1:
            raise ScoresError(f"ids must be 1-D, got shape {ids.shape}")
        n = ids.shape[0]
        if z.ndim != 2 or z.shape[0] != n:
            raise ScoresError(f"logits must have shape (n={n}, K), got {z.shape}")
        if n and z.shape[1] < 2:
            raise ScoresError(f"logits need at least 2 options per row, got K={z.shape[1]}")
        if y.shape != (n,):
            raise ScoresError(f"labels must have shape ({n},), got {y.shape}")
        if self.subjects is not None and self.subjects.shape != (n,):
            raise ScoresError(f"subjects must have shape ({n},), got {self.subjects.shape}")
        bad_ids = [i for i in ids if not isinstance(i, str) or not i]
        if bad_ids:
            raise ScoresError(f"every id must be a non-empty string, got {bad_ids[0]!r}")
        if len(set(ids.tolist())) != n:
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ScoresError(f"ids must be unique; {dup!r} appears more than once")
        if np.isnan(z).any():
            row = int(np.argwhere(np.isnan(z))[0, 0])
            raise ScoresError(f"logits contain NaN (first at row {row}, id {ids[row]!r})")
        if np.isposinf(z).any():
            row = int(np.argwhere(np.isposinf(z))[0, 0])
            raise ScoresError(f"logits contain +inf (first at row {row}, id {ids[row]!r})")
        finite = np.isfinite(z)
        n_opt = finite.sum(axis=1)
        # finite entries must form a prefix: padding is only on the right
        if n and not np.array_equal(finite, np.arange(z.shape[1])[None, :] < n_opt[:, None]):
            row = int(
                np.argwhere(~np.all(finite == (np.arange(z.shape[1]) < n_opt[:, None]), axis=1))[
                    0, 0
                ]
            )
            raise ScoresError(
                f"row {row} (id {ids[row]!r}): -inf may only pad the right end of a row, got {z[row].tolist()}"
            )
        if n and n_opt.min() < 2:
            row = int(np.argmin(n_opt))
            raise ScoresError(f"row {row} (id {ids[row]!r}) has fewer than 2 finite option logits")
        if ((y < -1) | (y >= np.maximum(n_opt, 1))).any():
            row = int(np.argwhere((y < -1) | (y >= n_opt))[0, 0])
            raise ScoresError(
                f"row {row} (id {ids[row]!r}): label {y[row]} is outside -1..{n_opt[row] - 1}"
            )
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise ScoresError(f"meta must be JSON-serialisable: {exc}") from exc

    # -- shape and derived quantities ---------------------------------------------------------
    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n(self) -> int:
        """Number of questions."""
        return len(self)

    @property
    def k(self) -> int:
        """Number of option columns (the largest option count)."""
        return int(self.logits.shape[1])

    @property
    def n_options(self) -> npt.NDArray[np.int64]:
        """Options per row (the finite prefix of each logit row)."""
        return np.isfinite(self.logits).sum(axis=1).astype(np.int64)

    @property
    def has_labels(self) -> bool:
        """True when every row is labelled."""
        return bool(len(self) and (self.labels >= 0).all())

    @property
    def labelled(self) -> npt.NDArray[np.bool_]:
        """Mask of rows with a known label."""
        return np.asarray(self.labels >= 0)

    def probs(self) -> npt.NDArray[np.float64]:
        """Softmax probabilities over each row's options (padding gets 0)."""
        return softmax(self.logits)

    def log_probs(self) -> npt.NDArray[np.float64]:
        """Log-softmax over each row's options."""
        return log_softmax(self.logits)

    def predictions(self) -> npt.NDArray[np.int64]:
        """Argmax option per row (first index on ties)."""
        return np.asarray(np.argmax(self.logits, axis=1), dtype=np.int64)

    def confidences(self) -> npt.NDArray[np.float64]:
        """Top-label confidence: the largest option probability of each row."""
        return np.asarray(self.probs().max(axis=1), dtype=np.float64)

    def correct(self) -> npt.NDArray[np.bool_]:
        """Whether each prediction is right; needs every label."""
        self.require_labels("correct()")
        return np.asarray(self.predictions() == self.labels)

    def require_labels(self, what: str) -> None:
        """Raise a clear error when some rows are unlabelled."""
        missing = int((self.labels < 0).sum())
        if missing:
            raise ScoresError(
                f"{what} needs labels, but {missing} of {len(self)} rows are unlabelled (label -1); "
                "score a labelled task or drop those rows with scores.labelled_only()"
            )

    # -- selection and derivation -------------------------------------------------------------
    def select(self, index: npt.ArrayLike | slice) -> Scores:
        """Rows by integer index array, boolean mask or slice (meta kept)."""
        idx = index if isinstance(index, slice) else np.asarray(index)
        if not isinstance(idx, slice) and idx.dtype == bool and idx.shape != (len(self),):
            raise ScoresError(f"boolean mask must have shape ({len(self)},), got {idx.shape}")
        sub = Scores(
            ids=self.ids[idx],
            logits=self.logits[idx],
            labels=self.labels[idx],
            meta=self.meta,
            subjects=None if self.subjects is None else self.subjects[idx],
        )
        return sub._trim()

    __getitem__ = select

    def _trim(self) -> Scores:
        """Drop option columns that are padding in every row."""
        if len(self) == 0:
            return self
        k = int(self.n_options.max())
        if k == self.k:
            return self
        return self.replace(logits=self.logits[:, :k])

    def labelled_only(self) -> Scores:
        """The rows with a known label."""
        return self.select(self.labelled)

    def by_ids(self, ids: Sequence[str]) -> Scores:
        """Rows in the order of ``ids``; every id must be present."""
        pos = {k: i for i, k in enumerate(self.ids.tolist())}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise ScoresError(
                f"{len(missing)} requested ids are not in these Scores (e.g. {missing[0]!r})"
            )
        return self.select(np.array([pos[i] for i in ids], dtype=np.int64))

    def replace(self, **changes: Any) -> Scores:
        """A copy with some fields changed (``meta`` given here is merged, not replaced)."""
        meta = {**self.meta, **changes.pop("meta", {})}
        fields: dict[str, Any] = {
            "ids": self.ids,
            "logits": self.logits,
            "labels": self.labels,
            "subjects": self.subjects,
        }
        fields.update(changes)
        return Scores(meta=meta, **fields)

    def with_logits(self, logits: npt.ArrayLike, **meta: Any) -> Scores:
        """Same questions with new logits (e.g. after calibration); ``meta`` entries merged."""
        z = np.asarray(logits, dtype=np.float64)
        if z.shape != self.logits.shape:
            raise ScoresError(f"new logits have shape {z.shape}, expected {self.logits.shape}")
        return self.replace(logits=z, meta=meta)

    @classmethod
    def concat(cls, parts: Sequence[Scores], meta: dict[str, Any] | None = None) -> Scores:
        """Stack Scores row-wise, padding option columns; meta from the first unless given."""
        if not parts:
            raise ScoresError("concat needs at least one Scores")
        k = max(p.k for p in parts)
        logits = np.full((sum(len(p) for p in parts), k), -np.inf)
        row = 0
        for p in parts:
            logits[row : row + len(p), : p.k] = p.logits
            row += len(p)
        subjects = None
        if any(p.subjects is not None for p in parts):
            subjects = np.concatenate(
                [p.subjects if p.subjects is not None else np.full(len(p), None) for p in parts]
            )
        return cls(
            ids=np.concatenate([p.ids for p in parts]),
            logits=logits,
            labels=np.concatenate([p.labels for p in parts]),
            meta=dict(parts[0].meta if meta is None else meta),
            subjects=subjects,
        )

    def equals(self, other: Scores, atol: float = 0.0) -> bool:
        """Same ids, labels, subjects and logits (to ``atol``); meta is not compared."""
        if self.logits.shape != other.logits.shape:
            return False
        same_subj = (self.subjects is None and other.subjects is None) or (
            self.subjects is not None
            and other.subjects is not None
            and self.subjects.tolist() == other.subjects.tolist()
        )
        inf_a, inf_b = np.isinf(self.logits), np.isinf(other.logits)
        return bool(
            self.ids.tolist() == other.ids.tolist()
            and np.array_equal(self.labels, other.labels)
            and same_subj
            and np.array_equal(inf_a, inf_b)
            and np.allclose(self.logits[~inf_a], other.logits[~inf_b], rtol=0.0, atol=atol)
        )

    # -- I/O ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write Parquet atomically (temp file + rename): no half-written file on failure."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        if path.suffix != ".parquet":
            raise ScoresError(
                f"Scores are saved as Parquet; use a .parquet path, not {path.name!r}"
            )
        meta = {**self.meta, "llmcal_version": self.meta.get("llmcal_version", __version__)}
        columns: dict[str, Any] = {
            "id": pa.array(self.ids.tolist(), type=pa.string()),
            "logits": pa.array(self.logits.tolist(), type=pa.list_(pa.float64())),
            "label": pa.array(self.labels, type=pa.int64()),
        }
        if self.subjects is not None:
            columns["subject"] = pa.array(self.subjects.tolist(), type=pa.string())
        header = {"format": FORMAT_VERSION, "meta": meta}
        table = pa.table(columns).replace_schema_metadata({_META_KEY: json.dumps(header).encode()})
        return atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Scores:
        """Read and validate a Scores Parquet file written by :meth:`save`."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.is_file():
            raise ScoresError(f"{path}: no such Scores file")
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise ScoresError(f"{path}: not a readable Parquet file ({exc})") from exc
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise ScoresError(
                f"{path}: Parquet file has no llmcal metadata; it was not written by llmcal "
                "(create Scores with llmcal score or Scores(...).save())"
            )
        try:
            header = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ScoresError(f"{path}: llmcal metadata is not valid JSON ({exc})") from exc
        if header.get("format") != FORMAT_VERSION:
            raise ScoresError(
                f"{path}: Scores format {header.get('format')!r} is not supported by llmcal "
                f"{__version__} (expects {FORMAT_VERSION})"
            )
        missing = {"id", "logits", "label"} - set(table.column_names)
        if missing:
            raise ScoresError(f"{path}: missing column(s) {sorted(missing)}")
        rows = table.column("logits").to_pylist()
        widths = {len(r) for r in rows}
        if len(widths) > 1:
            raise ScoresError(f"{path}: logit rows have different lengths {sorted(widths)}")
        k = widths.pop() if widths else 2
        logits = np.array(rows, dtype=np.float64).reshape(len(rows), k)
        subjects = None
        if "subject" in table.column_names:
            subjects = np.array(table.column("subject").to_pylist(), dtype=object)
        try:
            return cls(
                ids=np.array(table.column("id").to_pylist(), dtype=object),
                logits=logits,
                labels=np.array(table.column("label").to_pylist(), dtype=np.int64),
                meta=header.get("meta", {}),
                subjects=subjects,
            )
        except ScoresError as exc:
            raise ScoresError(f"{path}: {exc}") from exc


def align(a: Scores, b: Scores, how: str = "inner") -> tuple[Scores, Scores]:
    """Rows of ``a`` and ``b`` with the same ids, in ``a``'s order.

    ``how="inner"`` keeps the common ids (error if none); ``how="exact"`` requires identical id
    sets. Labels, where both know them, must agree.
    """
    if how not in ("inner", "exact"):
        raise ScoresError(f"align how must be 'inner' or 'exact', got {how!r}")
    ids_b = set(b.ids.tolist())
    common = [i for i in a.ids.tolist() if i in ids_b]
    if how == "exact" and (len(common) != len(a) or len(common) != len(b)):
        only_a = [i for i in a.ids.tolist() if i not in ids_b]
        only_b = sorted(ids_b - set(a.ids.tolist()))
        raise ScoresError(
            f"Scores do not cover the same questions: {len(only_a)} ids only in the first "
            f"(e.g. {only_a[:3]}), {len(only_b)} only in the second (e.g. {only_b[:3]})"
        )
    if not common:
        raise ScoresError(
            "the two Scores share no question id; score the same task (and --limit/seed) with both models"
        )
    a2, b2 = a.by_ids(common), b.by_ids(common)
    both = (a2.labels >= 0) & (b2.labels >= 0)
    if (a2.labels[both] != b2.labels[both]).any():
        bad = int(np.argwhere(both & (a2.labels != b2.labels))[0, 0])
        raise ScoresError(
            f"labels disagree for id {common[bad]!r}: {a2.labels[bad]} vs {b2.labels[bad]}"
        )
    return a2, b2
