"""Scores: the option logits of n questions, their labels and provenance.

Everything downstream of a scorer works on a ``Scores`` object. Each row has ``n_options``
values (stored explicitly); rows with fewer than K options are padded with ``-inf`` on the right,
and ``-inf`` inside a row is a legal value (probability exactly 0). ``labels`` uses ``-1`` for
unknown. ``meta`` records what the numbers are (model, task, template, mode, backend,
``logit_kind``, ``view``) and is stored as JSON in the Parquet schema metadata, so a saved file is
self-describing.

Two views (``meta["view"]``):

* ``"options"`` (the default): a question with K options; the confidence is that of the chosen
  (argmax) option and an answer is correct when the argmax is the label.
* ``"answer"``: a given (e.g. generated, free-form) answer; two columns, 0 = "the answer is
  wrong", 1 = "the answer is right"; the confidence is p(column 1) whatever the argmax, and the
  label is 1 when the answer is correct. Metrics read p(right) against correctness over [0, 1].
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from llmcal._io import atomic_write
from llmcal._version import __version__
from llmcal.errors import ScoresError

FORMAT_VERSION = 2
#: Formats :meth:`Scores.load` reads (1: option counts implied by the finite prefix of each row).
READABLE_FORMATS = (1, 2)
_META_KEY = b"llmcal"
#: The two views a Scores can hold (``meta["view"]``); see the module docstring.
VIEWS = ("options", "answer")
#: Longest llmcal metadata header (bytes) that :meth:`Scores.load` accepts.
_MAX_META_BYTES = 16 * 2**20

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


def _derived_n_options(z: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Options per row when not given: up to the last finite entry (trailing -inf is padding)."""
    if z.ndim != 2 or z.shape[1] == 0:
        return np.zeros(z.shape[0] if z.ndim else 0, dtype=np.int64)
    finite = np.isfinite(z)
    last = z.shape[1] - np.argmax(finite[:, ::-1], axis=1)
    return np.where(finite.any(axis=1), last, 0).astype(np.int64)


def _as_ids(ids: npt.ArrayLike | None, n: int) -> npt.NDArray[np.object_]:
    """Ids as strings: generated ``"0" … "n-1"`` when absent; integer ids turned into text."""
    if ids is None:
        return np.array([str(i) for i in range(n)], dtype=object)
    out = []
    for i in np.asarray(ids, dtype=object).tolist():
        if isinstance(i, (bool, np.bool_)):
            raise ScoresError(f"ids must be strings or integers, got {i!r}")
        if isinstance(i, (int, np.integer)):
            i = str(int(i))
        out.append(i)
    return np.array(out, dtype=object)


def _as_labels(labels: npt.ArrayLike | None, n: int) -> npt.NDArray[np.int64]:
    """Labels as int64 (-1 = unknown); None means all unknown; non-integers are an error."""
    if labels is None:
        return np.full(n, -1, dtype=np.int64)
    raw = np.asarray(labels)
    if raw.dtype == bool:
        return raw.astype(np.int64)
    if raw.dtype.kind == "f":
        bad = ~np.isfinite(raw) | (raw != np.round(raw))
        if bad.any():
            raise ScoresError(f"labels must be whole numbers, got {raw[bad][0]!r}")
    elif raw.dtype.kind not in "iu":
        raise ScoresError(f"labels must be integers (-1 = unknown), got dtype {raw.dtype}")
    return raw.astype(np.int64)


@dataclass(frozen=True, eq=False)
class Scores:
    """Option logits (n × K, float64), labels (n, −1 = unknown), ids, subjects, option counts, meta.

    ``n_options`` (n) is how many of each row's K columns are options; the rest are ``-inf``
    padding. Omitted, it is derived: every column up to the row's last finite value.
    """

    ids: npt.NDArray[np.object_]
    logits: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]
    meta: dict[str, Any] = field(default_factory=dict)
    subjects: npt.NDArray[np.object_] | None = None
    n_options: npt.NDArray[np.int64] = field(default=None)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=object)
        logits = np.array(self.logits, dtype=np.float64, copy=True)
        if logits.ndim == 1 and logits.shape[0] == 0:
            logits = logits.reshape(0, 2)
        labels = np.asarray(self.labels if self.labels is not None else [], dtype=np.int64).copy()
        if self.n_options is None:
            n_opt = _derived_n_options(logits)
        else:
            raw = np.asarray(self.n_options)
            if raw.dtype.kind not in "iu":
                raise ScoresError(f"n_options must be integers, got dtype {raw.dtype}")
            n_opt = raw.astype(np.int64).copy()
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "n_options", n_opt)
        if self.subjects is not None:
            object.__setattr__(self, "subjects", np.asarray(self.subjects, dtype=object))
        if not isinstance(self.meta, dict):
            raise ScoresError(f"meta must be a dict, got {type(self.meta).__name__}")
        object.__setattr__(self, "meta", dict(self.meta))
        self._validate()
        for arr in (self.ids, self.logits, self.labels, self.subjects, self.n_options):
            if arr is not None:
                arr.flags.writeable = False

    # -- validation -------------------------------------------------------------------------
    def _validate(self) -> None:
        ids, z, y, n_opt = self.ids, self.logits, self.labels, self.n_options
        if ids.ndim != 1:
            raise ScoresError(f"ids must be 1-D, got shape {ids.shape}")
        n = ids.shape[0]
        if z.ndim != 2 or z.shape[0] != n:
            raise ScoresError(f"logits must have shape (n={n}, K), got {z.shape}")
        if n and z.shape[1] < 2:
            raise ScoresError(f"logits need at least 2 options per row, got K={z.shape[1]}")
        if y.shape != (n,):
            raise ScoresError(f"labels must have shape ({n},), got {y.shape}")
        if n_opt.shape != (n,):
            raise ScoresError(f"n_options must have shape ({n},), got {n_opt.shape}")
        if self.subjects is not None and self.subjects.shape != (n,):
            raise ScoresError(f"subjects must have shape ({n},), got {self.subjects.shape}")
        if self.subjects is not None:
            bad_s = [s for s in self.subjects.tolist() if s is not None and not isinstance(s, str)]
            if bad_s:
                raise ScoresError(f"subjects must be strings or None, got {bad_s[0]!r:.60}")
        bad_ids = [i for i in ids if not isinstance(i, str) or not i]
        if bad_ids:
            raise ScoresError(f"every id must be a non-empty string, got {bad_ids[0]!r:.60}")
        if len(set(ids.tolist())) != n:
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise ScoresError(f"ids must be unique; {dup!r:.60} appears more than once")
        if np.isnan(z).any():
            row = int(np.argwhere(np.isnan(z))[0, 0])
            raise ScoresError(f"logits contain NaN (first at row {row}, id {ids[row]!r:.60})")
        if np.isposinf(z).any():
            row = int(np.argwhere(np.isposinf(z))[0, 0])
            raise ScoresError(f"logits contain +inf (first at row {row}, id {ids[row]!r:.60})")
        if not n:
            self._validate_view()
            return
        k = z.shape[1]
        if ((n_opt < 2) | (n_opt > k)).any():
            row = int(np.argwhere((n_opt < 2) | (n_opt > k))[0, 0])
            raise ScoresError(
                f"row {row} (id {ids[row]!r:.60}): n_options is {n_opt[row]}, expected 2..{k} "
                "(a row needs at least two options with a finite logit among them)"
            )
        inside = np.arange(k)[None, :] < n_opt[:, None]
        pad_bad = ~inside & np.isfinite(z)
        if pad_bad.any():
            row = int(np.argwhere(pad_bad)[0, 0])
            raise ScoresError(
                f"row {row} (id {ids[row]!r:.60}): a value beyond its {n_opt[row]} options is "
                "finite; padding columns must be -inf"
            )
        has_finite = (inside & np.isfinite(z)).any(axis=1)
        if not has_finite.all():
            row = int(np.argmin(has_finite))
            raise ScoresError(
                f"row {row} (id {ids[row]!r:.60}): every option logit is -inf; at least one "
                "option needs a finite logit (probability > 0)"
            )
        if ((y < -1) | (y >= n_opt)).any():
            row = int(np.argwhere((y < -1) | (y >= n_opt))[0, 0])
            raise ScoresError(
                f"row {row} (id {ids[row]!r:.60}): label {y[row]} is outside -1..{n_opt[row] - 1}"
            )
        self._validate_view()

    def _validate_view(self) -> None:
        view = self.meta.get("view", "options")
        if view not in VIEWS:
            raise ScoresError(f"meta['view'] must be one of {list(VIEWS)}, got {view!r:.60}")
        if view == "answer" and len(self) and (self.k != 2 or (self.n_options != 2).any()):
            raise ScoresError(
                f"answer-view Scores need exactly two columns (wrong, right) per row, got K={self.k}"
            )
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ScoresError(f"meta must be JSON-serialisable: {str(exc)[:200]}") from None

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
    def view(self) -> str:
        """``"options"`` (confidence of the chosen option) or ``"answer"`` (p that an answer is right)."""
        return str(self.meta.get("view", "options"))

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
        """Confidence per row: the top option's probability; in the answer view p(right)."""
        if self.view == "answer":
            return np.asarray(self.probs()[:, 1], dtype=np.float64)
        return np.asarray(self.probs().max(axis=1), dtype=np.float64)

    def correct(self) -> npt.NDArray[np.bool_]:
        """Whether each answer is right (argmax == label; answer view: label == 1); needs labels."""
        self.require_labels("correct()")
        if self.view == "answer":
            return np.asarray(self.labels == 1)
        return np.asarray(self.predictions() == self.labels)

    def as_options(self) -> Scores:
        """The binary top-label (options) view of answer-view Scores: which of wrong/right is likelier."""
        if self.view == "options":
            return self
        return self.replace(meta={"view": "options", "view_from": "answer"})

    def require_labels(self, what: str) -> None:
        """Raise a clear error when some rows are unlabelled."""
        missing = int((self.labels < 0).sum())
        if missing:
            raise ScoresError(
                f"{what} needs labels, but {missing} of {len(self)} rows are unlabelled (label -1); "
                "score a labelled task or drop those rows with scores.labelled_only()"
            )

    # -- construction from arrays and tables ---------------------------------------------------
    @classmethod
    def from_logits(
        cls,
        logits: npt.ArrayLike,
        labels: npt.ArrayLike | None = None,
        ids: npt.ArrayLike | None = None,
        meta: dict[str, Any] | None = None,
        subjects: npt.ArrayLike | None = None,
        n_options: npt.ArrayLike | None = None,
        view: str = "options",
    ) -> Scores:
        """Scores from an (n, K) array of logits or log-probs; ids ``"0"…`` when not given."""
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2:
            raise ScoresError(f"logits must be a 2-D (n, K) array, got shape {z.shape}")
        return cls(
            ids=_as_ids(ids, z.shape[0]),
            logits=z,
            labels=_as_labels(labels, z.shape[0]),
            meta={"logit_kind": "logits", **(meta or {}), "view": view},
            subjects=None if subjects is None else np.asarray(subjects, dtype=object),
            n_options=None if n_options is None else np.asarray(n_options),  # type: ignore[arg-type]
        )

    @classmethod
    def from_probs(
        cls,
        probs: npt.ArrayLike,
        labels: npt.ArrayLike | None = None,
        ids: npt.ArrayLike | None = None,
        meta: dict[str, Any] | None = None,
        subjects: npt.ArrayLike | None = None,
        view: str = "options",
        n_options: npt.ArrayLike | None = None,
    ) -> Scores:
        """Scores from probabilities: (n, K) rows summing to 1, or 1-D p = P(label 1) of a binary task.

        Rows are renormalised after a check that they sum to 1 within 1e-6; a probability of 0
        becomes a logit of ``-inf``.
        """
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim == 1:
            p = np.stack([1.0 - p, p], axis=1)
        if p.ndim != 2:
            raise ScoresError(f"probs must be 1-D (binary) or 2-D (n, K), got shape {p.shape}")
        if p.size and (~np.isfinite(p) | (p < 0) | (p > 1)).any():
            row = int(np.argwhere(~np.isfinite(p) | (p < 0) | (p > 1))[0, 0])
            raise ScoresError(
                f"row {row}: probabilities must lie in [0, 1], got {p[row].tolist()!s:.120}"
            )
        sums = p.sum(axis=1)
        if p.size and (np.abs(sums - 1.0) > 1e-6).any():
            row = int(np.argmax(np.abs(sums - 1.0)))
            raise ScoresError(
                f"row {row}: probabilities sum to {sums[row]:.6g}, not 1; pass full rows (or "
                "from_logits for unnormalised scores)"
            )
        with np.errstate(divide="ignore"):
            logits = np.log(p / sums[:, None]) if p.size else p
        if n_options is None:  # every given column is an option; a 0 is a value, not padding
            n_options = np.full(p.shape[0], p.shape[1], dtype=np.int64)
        meta = {"logit_kind": "probs_log", **(meta or {})}
        return cls.from_logits(logits, labels, ids, meta, subjects, n_options, view=view)

    @classmethod
    def from_confidence(
        cls,
        confidence: npt.ArrayLike,
        correct: npt.ArrayLike | None = None,
        ids: npt.ArrayLike | None = None,
        meta: dict[str, Any] | None = None,
        subjects: npt.ArrayLike | None = None,
    ) -> Scores:
        """Answer-view Scores from p(answer is right) per row and, optionally, whether it was."""
        c = np.asarray(confidence, dtype=np.float64)
        if c.ndim != 1:
            raise ScoresError(f"confidence must be 1-D, got shape {c.shape}")
        labels = None
        if correct is not None:
            raw = np.asarray(correct)
            if raw.shape != c.shape:
                raise ScoresError(f"correct must have shape {c.shape}, got {raw.shape}")
            labels = _as_labels(raw, len(c))
            if ((labels < -1) | (labels > 1)).any():
                raise ScoresError("correct must be 0/1 (or -1 = unknown), or booleans")
        return cls.from_probs(c, labels, ids, meta, subjects, view="answer")

    def to_pandas(self) -> Any:
        """A pandas DataFrame: id, label, n_options, subject, logits (list) and prob_0 … prob_{K-1}."""
        import pandas as pd

        data: dict[str, Any] = {
            "id": self.ids.tolist(),
            "label": self.labels.tolist(),
            "n_options": self.n_options.tolist(),
            "logits": [
                row[:m].tolist() for row, m in zip(self.logits, self.n_options, strict=True)
            ],
        }
        if self.subjects is not None:
            data["subject"] = self.subjects.tolist()
        probs = self.probs()
        for j in range(self.k):
            data[f"prob_{j}"] = probs[:, j]
        df = pd.DataFrame(data)
        df.attrs["llmcal"] = dict(self.meta)
        return df

    @classmethod
    def from_pandas(
        cls, df: Any, meta: dict[str, Any] | None = None, source: str = "DataFrame"
    ) -> Scores:
        """Scores from a DataFrame as :meth:`to_pandas` writes it, or any table with id (optional),
        label (optional) and ``logits`` / ``probs`` list columns, ``logit_0…`` / ``prob_0…``
        columns, or a ``confidence`` column (answer view, with ``correct`` or ``label``)."""

        def cell(v: Any) -> Any:  # pandas writes missing values as NaN
            return None if isinstance(v, float) and v != v else v

        columns = {str(c): [cell(v) for v in df[c].tolist()] for c in df.columns}
        merged = {**getattr(df, "attrs", {}).get("llmcal", {}), **(meta or {})}
        return _from_columns(columns, merged, source)

    @classmethod
    def read_table(cls, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> Scores:
        """Scores from a CSV or Parquet table that llmcal did not write (see :meth:`from_pandas`).

        List columns in a CSV are JSON arrays (``"[0.2, 0.8]"``). Warns (``ScoresWarning``) that
        model, task and template are unknown unless ``meta`` gives them.
        """
        path = Path(path)
        if not path.is_file():
            raise ScoresError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            columns = _parquet_columns(path)
        elif suffix in (".csv", ".tsv"):
            columns = _csv_columns(path, "\t" if suffix == ".tsv" else ",")
        else:
            raise ScoresError(f"{path}: expected a .csv, .tsv or .parquet table")
        scores = _from_columns(columns, dict(meta or {}), str(path))
        unknown = [k for k in ("model", "task", "template") if k not in scores.meta]
        if unknown:
            warnings.warn(
                f"{path}: a table without llmcal metadata; {', '.join(unknown)} unknown, so "
                "reports and calibrators cannot check what these scores came from",
                ScoresWarning,
                stacklevel=2,
            )
        return scores

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
            n_options=self.n_options[idx],
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
                f"{len(missing)} requested ids are not in these Scores (e.g. {missing[0]!r:.60})"
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
            "n_options": self.n_options,
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
        views = {p.view for p in parts}
        if len(views) > 1:
            raise ScoresError(f"cannot concatenate Scores of different views {sorted(views)}")
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
            n_options=np.concatenate([p.n_options for p in parts]),
        )

    def equals(self, other: Scores, atol: float = 0.0) -> bool:
        """Same ids, labels, subjects, option counts and logits (to ``atol``); meta not compared."""
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
            and np.array_equal(self.n_options, other.n_options)
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
                f"Scores are saved as Parquet; use a .parquet path, not {path.name!r:.80}"
            )
        meta = {**self.meta, "llmcal_version": self.meta.get("llmcal_version", __version__)}
        columns: dict[str, Any] = {
            "id": pa.array(self.ids.tolist(), type=pa.string()),
            "logits": pa.array(self.logits.tolist(), type=pa.list_(pa.float64())),
            "label": pa.array(self.labels, type=pa.int64()),
            "n_options": pa.array(self.n_options, type=pa.int64()),
        }
        if self.subjects is not None:
            columns["subject"] = pa.array(self.subjects.tolist(), type=pa.string())
        header = {"format": FORMAT_VERSION, "meta": meta}
        table = pa.table(columns).replace_schema_metadata({_META_KEY: json.dumps(header).encode()})
        return atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Scores:
        """Read and validate a Scores Parquet file written by :meth:`save` (formats 1 and 2)."""
        path = Path(path)
        if not path.is_file():
            raise ScoresError(f"{path}: no such Scores file")
        table = _read_parquet(path)
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise ScoresError(
                f"{path}: Parquet file has no llmcal metadata; it was not written by llmcal "
                "(create Scores with llmcal score or Scores(...).save(), or read a foreign "
                "table with Scores.read_table)"
            )
        if len(raw) > _MAX_META_BYTES:
            raise ScoresError(
                f"{path}: llmcal metadata is {len(raw)} bytes; at most {_MAX_META_BYTES}"
            )
        try:
            header = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:120]
            raise ScoresError(f"{path}: llmcal metadata is not valid JSON ({why})") from None
        if not isinstance(header, dict) or not isinstance(header.get("meta", {}), dict):
            raise ScoresError(f"{path}: llmcal metadata must be a JSON object with a 'meta' object")
        fmt = header.get("format")
        if isinstance(fmt, bool) or fmt not in READABLE_FORMATS:
            raise ScoresError(
                f"{path}: Scores format {fmt!r:.40} is not supported by llmcal "
                f"{__version__} (reads {', '.join(map(str, READABLE_FORMATS))})"
            )
        missing = {"id", "logits", "label"} - set(table.column_names)
        if missing:
            raise ScoresError(f"{path}: missing column(s) {sorted(missing)}")
        try:
            fast = _typed_arrays(table, with_counts=fmt != 1)
            if fast is not None:  # well-typed columns: vectorised, no per-cell Python
                return cls(meta=header.get("meta", {}), **fast)
            # otherwise read cell by cell, so the error names the row and column at fault
            columns = _table_columns(table, path)
            if fmt == 1:
                columns.pop("n_options", None)
            return _from_columns(columns, header.get("meta", {}), str(path), strict=True)
        except ScoresError as exc:
            raise ScoresError(f"{path}: {exc}") from None


class ScoresWarning(UserWarning):
    """Something about a Scores table is unknown or suspicious (e.g. no llmcal metadata)."""


def _read_parquet(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ScoresError(f"{path}: not a readable Parquet file ({str(exc)[:160]})") from None


def _typed_arrays(table: Any, with_counts: bool) -> dict[str, Any] | None:
    """The Scores arrays of a table whose columns have the types llmcal writes, else None."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def plain(name: str, ok: Any) -> Any:
        col = table.column(name).combine_chunks() if name in table.column_names else None
        return col if col is not None and ok(col.type) and not col.null_count else None

    ids = plain("id", pa.types.is_string)
    labels = plain("label", pa.types.is_integer)
    logits = plain("logits", lambda t: pa.types.is_list(t) and pa.types.is_floating(t.value_type))
    if ids is None or labels is None or logits is None:
        return None
    widths = pc.list_value_length(logits).to_numpy(zero_copy_only=False)
    values = logits.flatten()
    if values.null_count or (len(widths) and (widths != widths[0]).any()):
        return None
    k = int(widths[0]) if len(widths) else 2
    out: dict[str, Any] = {
        "ids": np.array(ids.to_pylist(), dtype=object),
        "logits": values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(ids), k),
        "labels": labels.to_numpy(zero_copy_only=False).astype(np.int64),
    }
    if with_counts and "n_options" in table.column_names:
        counts = plain("n_options", pa.types.is_integer)
        if counts is None:
            return None
        out["n_options"] = counts.to_numpy(zero_copy_only=False).astype(np.int64)
    if "subject" in table.column_names:
        subj = table.column("subject").combine_chunks()
        if not (pa.types.is_string(subj.type) or pa.types.is_null(subj.type)):
            return None
        out["subjects"] = np.array(subj.to_pylist(), dtype=object)
    return out


def _table_columns(table: Any, path: Path) -> dict[str, list[Any]]:
    """Each column of an Arrow table as a Python list (nested lists stay lists)."""
    try:
        return {name: table.column(name).to_pylist() for name in table.column_names}
    except Exception as exc:  # pyarrow raises assorted types for exotic columns
        raise ScoresError(f"{path}: a column cannot be read ({str(exc)[:160]})") from None


def _parquet_columns(path: Path) -> dict[str, list[Any]]:
    return _table_columns(_read_parquet(path), path)


def _csv_columns(path: Path, delimiter: str) -> dict[str, list[Any]]:
    import csv

    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter=delimiter))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ScoresError(f"{path}: not a readable CSV file ({str(exc)[:160]})") from None
    if not rows:
        raise ScoresError(f"{path}: the file is empty; expected a header row")
    header, body = rows[0], rows[1:]
    for line, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise ScoresError(f"{path}: line {line} has {len(r)} fields, the header {len(header)}")
    columns: dict[str, list[Any]] = {}
    for j, name in enumerate(header):
        values: list[Any] = []
        for line, r in enumerate(body, start=2):
            values.append(_csv_cell(r[j], name, line))
        columns[name.strip()] = values
    return columns


def _csv_cell(text: str, column: str, line: int) -> Any:
    """A CSV cell: a JSON array for list columns, a number, or text."""
    t = text.strip()
    if t.startswith("["):
        try:
            return json.loads(t)
        except (json.JSONDecodeError, RecursionError):
            raise ScoresError(
                f"line {line}, column {column!r:.40}: {t!r:.60} is not a JSON array"
            ) from None
    if t == "":
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


_LABEL_COLUMNS = ("label", "labels", "answer", "target")


def _from_columns(
    columns: dict[str, list[Any]], meta: dict[str, Any], source: str, strict: bool = False
) -> Scores:
    """Scores from named columns; every cell is type-checked and a bad one is named by row."""
    names = list(columns)
    n = len(next(iter(columns.values()))) if columns else 0
    ids = _id_column(columns.get("id"), n, strict)
    label_col = next((c for c in _LABEL_COLUMNS if c in columns), None)
    if label_col is None and "correct" in columns:
        label_col = "correct"
    labels = (
        _int_column(columns[label_col], label_col, ids, allow_null=not strict)
        if label_col
        else None
    )
    n_options = None
    if "n_options" in columns:
        n_options = _int_column(columns["n_options"], "n_options", ids, allow_null=False)
    subjects: npt.NDArray[np.object_] | None = None
    if "subject" in columns:
        subj = columns["subject"]
        bad = next(
            (i for i, s in enumerate(subj) if s is not None and not isinstance(s, str)), None
        )
        if bad is not None:
            raise ScoresError(
                f"row {bad} (id {ids[bad]!r:.60}): subject must be text, got {subj[bad]!r:.60}"
            )
        subjects = np.array(subj, dtype=object)
    view = meta.get("view", "options")
    kind: str
    if "logits" in columns:
        matrix, kind = _list_column(columns["logits"], "logits", ids, n_options), "logits"
    elif "probs" in columns:
        matrix, kind = _list_column(columns["probs"], "probs", ids, n_options), "probs"
    elif any(c.startswith("logit_") for c in names):
        matrix, kind = _wide_columns(columns, "logit_", ids), "logits"
    elif any(c.startswith("prob_") for c in names):
        matrix, kind = _wide_columns(columns, "prob_", ids), "probs"
    elif "confidence" in columns:
        conf = _list_column([[c] for c in columns["confidence"]], "confidence", ids, None)[:, 0]
        rest = {k: v for k, v in meta.items() if k != "view"}
        return Scores.from_confidence(conf, labels, ids, rest, subjects)
    else:
        raise ScoresError(
            f"{source}: no score columns; expected 'logits' or 'probs' (lists), 'logit_0…' / "
            f"'prob_0…' columns, or 'confidence' (found {names[:12]})"
        )
    if kind == "probs":
        if n_options is None:  # cells left empty at the end of a row are missing options
            n_options = _derived_n_options(matrix)
        matrix = np.where(np.isneginf(matrix), 0.0, matrix)
        rest = {k: v for k, v in meta.items() if k != "view"}
        return Scores.from_probs(matrix, labels, ids, rest, subjects, view, n_options)
    return Scores(
        ids=ids,
        logits=matrix,
        labels=labels if labels is not None else np.full(n, -1, dtype=np.int64),
        meta=meta,
        subjects=subjects,
        n_options=n_options,  # type: ignore[arg-type]
    )


def _id_column(values: list[Any] | None, n: int, strict: bool) -> npt.NDArray[np.object_]:
    if values is None:
        if strict:
            raise ScoresError("missing column 'id'")
        return _as_ids(None, n)
    bad = next(
        (i for i, v in enumerate(values) if not isinstance(v, (str, int)) or isinstance(v, bool)),
        None,
    )
    if bad is not None or (strict and any(not isinstance(v, str) for v in values)):
        row = (
            bad
            if bad is not None
            else next(i for i, v in enumerate(values) if not isinstance(v, str))
        )
        raise ScoresError(f"row {row}: id must be text, got {values[row]!r:.60}")
    return _as_ids(values, n)


def _int_column(
    values: list[Any], name: str, ids: npt.NDArray[np.object_], allow_null: bool
) -> npt.NDArray[np.int64]:
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if v is None and allow_null:
            out[i] = -1
        elif (
            (isinstance(v, bool) and name == "correct")
            or (isinstance(v, (int, np.integer)) and not isinstance(v, bool))
            or (isinstance(v, float) and v.is_integer())
        ):
            out[i] = int(v)
        else:
            raise ScoresError(
                f"row {i} (id {ids[i]!r:.60}): {name} must be an integer, got {v!r:.60}"
            )
    return out


def _list_column(
    values: list[Any],
    name: str,
    ids: npt.NDArray[np.object_],
    n_options: npt.NDArray[np.int64] | None,
) -> npt.NDArray[np.float64]:
    """A column of number lists as an (n, K) float64 matrix, short rows padded with -inf."""
    rows: list[list[float]] = []
    for i, v in enumerate(values):
        if not isinstance(v, (list, tuple)):
            raise ScoresError(
                f"row {i} (id {ids[i]!r:.60}): {name} must be a list of numbers, got {v!r:.60}"
            )
        row: list[float] = []
        for x in v:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise ScoresError(
                    f"row {i} (id {ids[i]!r:.60}): {name} holds {x!r:.60}, not a number"
                )
            row.append(float(x))
        rows.append(row)
    k = max((len(r) for r in rows), default=2)
    if n_options is not None:
        short = next((i for i, r in enumerate(rows) if len(r) < n_options[i]), None)
        if short is not None:
            raise ScoresError(
                f"row {short} (id {ids[short]!r:.60}): n_options is {n_options[short]} but "
                f"{name} has only {len(rows[short])} values"
            )
    out = np.full((len(rows), k), -np.inf)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _wide_columns(
    columns: dict[str, list[Any]], prefix: str, ids: npt.NDArray[np.object_]
) -> npt.NDArray[np.float64]:
    """``prefix0, prefix1, …`` columns as one matrix (empty cells are missing options)."""
    found = sorted(
        (int(c[len(prefix) :]), c)
        for c in columns
        if c.startswith(prefix) and c[len(prefix) :].isdigit()
    )
    if not found or [j for j, _ in found] != list(range(len(found))):
        raise ScoresError(f"columns {prefix}0, {prefix}1, … must be numbered from 0 without gaps")
    cells = [[columns[c][i] for _, c in found] for i in range(len(ids))]
    trimmed = []
    for row in cells:
        while row and row[-1] is None:
            row = row[:-1]
        trimmed.append(row)
    return _list_column(trimmed, prefix.rstrip("_"), ids, None)


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
