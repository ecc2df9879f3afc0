"""Distribution-free guarantees fitted on a calibration split, saved as JSON artefacts.

A guarantee does not change the Scores (it is not a :class:`~llmcal.calibrate.Calibrator`); it
turns them into decisions: conformal prediction sets (:mod:`llmcal.calibrate.conformal`) or
answer / abstain with a bound on the error rate (:mod:`llmcal.calibrate.selective_risk`). The
artefact has the calibrator layout under its own format name, never pickle::

    {"format": "llmcal-guarantee", "format_version": 1, "kind": "conformal",
     "llmcal_version": "0.1.0", "config": {...}, "params": {...}, "fit": {...}}

The decisions are written as Parquet files whose ``llmcal`` schema metadata names their format
(``llmcal-prediction-sets`` or ``llmcal-selective``), so ``llmcal eval`` can tell them apart
from Scores.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from llmcal._io import atomic_write_text, loads_json
from llmcal._version import __version__
from llmcal.calibrate.base import _reject_constant, provenance, to_jsonable
from llmcal.errors import CalibrationError, ConfigError, ScoresError
from llmcal.scores import Scores

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "GUARANTEES",
    "Guarantee",
    "artefact_format",
    "check_unit_interval",
    "id_uniforms",
    "load_guarantee",
    "parquet_format",
    "scores_view",
]

FORMAT = "llmcal-guarantee"
FORMAT_VERSION = 1
META_KEY = b"llmcal"

#: kind → Guarantee subclass.
GUARANTEES: dict[str, type[Guarantee]] = {}


def check_unit_interval(value: Any, name: str, flag: str) -> float:
    """A float strictly inside (0, 1), or a ConfigError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ConfigError(
            f"{name} ({flag}) must be a number strictly between 0 and 1, got {value!r}"
        )
    return float(value)


def scores_view(scores: Scores) -> str:
    """``"options"`` (multiple choice) or ``"answer"`` (P(True) of a given answer)."""
    return str(getattr(scores, "view", None) or scores.meta.get("view") or "options")


def id_uniforms(ids: npt.ArrayLike, seed: int, salt: str) -> npt.NDArray[np.float64]:
    """One Uniform(0, 1) number per question id, from a hash of (seed, salt, id).

    A question's number does not depend on which other questions are in the file, nor on
    their order, so a randomised decision is reproducible question by question.
    """
    out = np.empty(len(np.asarray(ids, dtype=object)), dtype=np.float64)
    for i, qid in enumerate(np.asarray(ids, dtype=object).tolist()):
        h = hashlib.blake2b(f"{seed}\x00{salt}\x00{qid}".encode(), digest_size=8).digest()
        out[i] = (int.from_bytes(h, "big") + 0.5) / 2.0**64
    return out


def require_calibration_labels(scores: Scores, who: str) -> None:
    """A guarantee is fitted on a labelled calibration split."""
    if len(scores) == 0:
        raise CalibrationError(f"{who} needs at least one calibration question, got empty Scores")
    missing = int((scores.labels < 0).sum())
    if missing:
        raise CalibrationError(
            f"{who} needs labelled calibration Scores, but {missing} of {len(scores)} rows are "
            "unlabelled (label -1); fit on a labelled split (score a labelled task), or drop "
            "those rows with scores.labelled_only()"
        )


class Guarantee(ABC):
    """Base class: ``fit`` on labelled Scores, ``save``/``load`` as a JSON artefact."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is not None:
            if kind in GUARANTEES and GUARANTEES[kind] is not cls:
                raise TypeError(f"guarantee kind {kind!r} is already registered")
            GUARANTEES[kind] = cls

    def __init__(self) -> None:
        self.fit_info_: dict[str, Any] | None = None

    @abstractmethod
    def fit(self, scores: Scores) -> Self:
        """Fit on a labelled calibration split; returns ``self``."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The constructor options (JSON types)."""

    @abstractmethod
    def get_params(self) -> dict[str, Any]:
        """The fitted parameters as JSON types."""

    @abstractmethod
    def _set_params(self, params: dict[str, Any], source: str) -> None:
        """Restore fitted parameters from an artefact (validated)."""

    @property
    def is_fitted(self) -> bool:
        """True once fitted or loaded."""
        return self.fit_info_ is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise CalibrationError(
                f"{type(self).__name__} is not fitted; call .fit(scores) first, or load one "
                "with llmcal.calibrate.load_guarantee(path)"
            )

    def _fit_record(self, scores: Scores, **extra: Any) -> dict[str, Any]:
        return {**provenance(scores), "view": scores_view(scores), "n": len(scores), **extra}

    def summary(self) -> dict[str, Any]:
        """What was fitted, for the meta of the decisions it makes."""
        self._check_fitted()
        assert self.fit_info_ is not None
        return to_jsonable(
            {
                "kind": self.kind,
                "config": self.get_config(),
                "params": self.get_params(),
                "fitted_on": {k: self.fit_info_.get(k) for k in ("task", "model", "n")},
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON artefact as a dict."""
        self._check_fitted()
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "llmcal_version": __version__,
            "config": to_jsonable(self.get_config(), "config"),
            "params": to_jsonable(self.get_params(), "params"),
            "fit": to_jsonable(self.fit_info_, "fit"),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>") -> Self:
        """Rebuild a fitted guarantee from :meth:`to_dict` output (checks format and kind)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CalibrationError(
                f"{source}: not an llmcal guarantee artefact (expected a JSON object with "
                f'"format": "{FORMAT}"); pass a file written by `llmcal fit conformal` or '
                "`llmcal fit selective`"
            )
        version = d.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CalibrationError(f"{source}: invalid format_version {version!r}; re-fit it")
        if version > FORMAT_VERSION:
            raise CalibrationError(
                f"{source}: guarantee format_version {version} was written by a newer llmcal "
                f"({d.get('llmcal_version', '?')}); this llmcal {__version__} reads version "
                f"{FORMAT_VERSION}. Upgrade llmcal or re-fit with this one"
            )
        kind = d.get("kind")
        target = GUARANTEES.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise CalibrationError(
                f"{source}: unknown guarantee kind {kind!r}; known kinds: {sorted(GUARANTEES)}"
            )
        if cls is not Guarantee and target is not cls:
            raise CalibrationError(
                f"{source} holds a {kind!r} guarantee, not a {cls.kind!r} one; load it with "
                "llmcal.calibrate.load_guarantee(path)"
            )
        config, params, fit = d.get("config"), d.get("params"), d.get("fit")
        if not all(isinstance(x, dict) for x in (config, params, fit)):
            raise CalibrationError(
                f"{source}: 'config', 'params' and 'fit' must be JSON objects; the file is "
                "corrupt, re-fit it"
            )
        assert isinstance(config, dict) and isinstance(params, dict) and isinstance(fit, dict)
        try:
            obj = target(**config)
        except (TypeError, ValueError, ConfigError) as exc:
            raise CalibrationError(
                f"{source}: invalid {kind!r} options {config}: {exc}; re-fit it"
            ) from exc
        try:
            obj._set_params(params, source)
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(
                f"{source}: missing or malformed parameter ({exc!r}); the file is corrupt, re-fit it"
            ) from exc
        obj.fit_info_ = dict(fit)
        return obj  # type: ignore[return-value]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON artefact atomically."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read a JSON artefact written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"{path}: no such guarantee file")
        try:
            d = loads_json(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise CalibrationError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(d, source=str(path))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args}){'' if self.is_fitted else ' (unfitted)'}"


def load_guarantee(path: str | os.PathLike[str]) -> Guarantee:
    """Load a conformal or selective artefact, dispatching on its ``kind``."""
    return Guarantee.load(path)


def artefact_format(path: str | os.PathLike[str]) -> str | None:
    """The ``format`` field of a JSON artefact, or None when it is not one."""
    try:
        d = loads_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    value = d.get("format") if isinstance(d, dict) else None
    return value if isinstance(value, str) else None


def parquet_format(path: str | os.PathLike[str]) -> str | None:
    """The named format of an llmcal decisions Parquet file (None for Scores or other files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError):
        return None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        return None
    try:
        header = loads_json(raw)
    except ValueError:
        return None
    fmt = header.get("format") if isinstance(header, dict) else None
    return fmt if isinstance(fmt, str) else None


def read_header(path: Path, expected: str) -> tuple[Any, dict[str, Any]]:
    """The table and llmcal header of a decisions Parquet file of format ``expected``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ScoresError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ScoresError(f"{path}: not a readable Parquet file ({exc})") from exc
    raw = (table.schema.metadata or {}).get(META_KEY)
    try:
        header = loads_json(raw) if raw is not None else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != expected:
        found = header.get("format") if isinstance(header, dict) else None
        raise ScoresError(
            f"{path}: not an {expected} file (llmcal format {found!r}); write one with "
            "`llmcal apply`"
        )
    if int(header.get("format_version", 0)) > FORMAT_VERSION:
        raise ScoresError(f"{path}: written by a newer llmcal; upgrade llmcal to read it")
    return table, header


def write_table(
    path: str | os.PathLike[str], columns: dict[str, Any], header: dict[str, Any]
) -> Path:
    """Write a decisions table with its llmcal header, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmcal._io import atomic_write

    path = Path(path)
    if path.suffix != ".parquet":
        raise ConfigError(
            f"decisions are written as Parquet; use a .parquet path, not {path.name!r}"
        )
    table = pa.table(columns).replace_schema_metadata(
        {META_KEY: json.dumps(to_jsonable(header)).encode()}
    )
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))
