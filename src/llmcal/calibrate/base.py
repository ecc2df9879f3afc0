"""The Calibrator base class, its JSON artefact and the registry of calibrator kinds.

A fitted calibrator is saved as a small JSON file (never pickle)::

    {"format": "llmcal-calibrator", "format_version": 1, "kind": "temperature",
     "llmcal_version": "0.1.0", "config": {...}, "params": {...}, "fit": {...}}

``config`` holds the constructor options, ``params`` the fitted parameters and ``fit`` what it
was fitted on and how. Floats are written with ``repr``, so a loaded calibrator transforms
bit-identically to the one that was saved.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from llmcal._io import atomic_write_text
from llmcal._version import __version__
from llmcal.errors import CalibrationError
from llmcal.scores import Scores

if TYPE_CHECKING:
    from typing_extensions import Self

FORMAT = "llmcal-calibrator"
FORMAT_VERSION = 1

#: kind → Calibrator subclass; filled in as subclasses are defined.
CALIBRATORS: dict[str, type[Calibrator]] = {}

#: Scores meta keys copied into an artefact's ``fit`` record.
_PROVENANCE = ("task", "model", "template", "mode", "backend", "logit_kind")

_MAX_INLINE_PARAMS = 2000  # characters of JSON; larger params are left out of Scores meta


class CalibrationWarning(UserWarning):
    """A fit finished but its result needs attention (divergence, non-convergence)."""


def warn(message: str) -> None:
    """Issue a :class:`CalibrationWarning` pointing at the caller's caller."""
    warnings.warn(message, CalibrationWarning, stacklevel=3)


def provenance(scores: Scores) -> dict[str, Any]:
    """The provenance entries of a Scores' meta (missing ones are None)."""
    return {k: scores.meta.get(k) for k in _PROVENANCE}


def require_labelled_rows(scores: Scores, who: str) -> None:
    """A supervised fit needs at least one row, and a label on every row."""
    if len(scores) == 0:
        raise CalibrationError(f"{who} needs at least one question, got empty Scores")
    scores.require_labels(who)


def require_two_classes(classes: npt.ArrayLike, who: str, what: str = "calibration labels") -> None:
    """Class-bias maps (VS, MS, Platt) cannot be learned when every example has one class."""
    values = np.unique(np.asarray(classes))
    if values.size < 2:
        only = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[int(values[0])] if values.size else "?"
        raise CalibrationError(
            f"{who}: all {np.asarray(classes).size} {what} are option {only}, so per-option "
            "weights and biases are not identifiable (they run off to infinity); use temperature "
            "scaling, or calibration data covering at least two options"
        )


def to_jsonable(obj: Any, where: str = "value") -> Any:
    """Plain JSON types from numpy scalars/arrays; non-finite floats become None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, where) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), where)
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, where) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"{where}: cannot store {type(obj).__name__} in a calibrator artefact")


def float_array(
    value: Any, shape: tuple[int, ...] | None, name: str, source: str
) -> npt.NDArray[np.float64]:
    """A finite float64 array from an artefact's params, with a clear error if malformed."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(
            f"{source}: parameter {name!r} is not numeric ({exc}); the file is corrupt, re-fit it"
        ) from exc
    if shape is not None and arr.shape != shape:
        raise CalibrationError(
            f"{source}: parameter {name!r} has shape {arr.shape}, expected {shape}; "
            "the file is corrupt, re-fit the calibrator"
        )
    if not np.isfinite(arr).all():
        raise CalibrationError(
            f"{source}: parameter {name!r} has non-finite values; the file is corrupt, re-fit it"
        )
    return arr


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


class Calibrator(ABC):
    """Base class: ``fit`` on Scores, ``transform`` Scores, ``save``/``load`` as JSON."""

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is not None:
            if kind in CALIBRATORS and CALIBRATORS[kind] is not cls:
                raise TypeError(f"calibrator kind {kind!r} is already registered")
            CALIBRATORS[kind] = cls

    def __init__(self) -> None:
        self.fit_info_: dict[str, Any] | None = None

    # -- to implement ------------------------------------------------------------------------
    @abstractmethod
    def fit(self, *args: Any, **kwargs: Any) -> Self:
        """Fit on Scores; returns ``self``."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The constructor options (JSON types); ``type(self)(**config)`` rebuilds it unfitted."""

    @abstractmethod
    def get_params(self) -> dict[str, Any]:
        """The fitted parameters as JSON types."""

    @abstractmethod
    def _set_params(self, params: dict[str, Any], source: str) -> None:
        """Restore fitted parameters from an artefact (validated)."""

    @abstractmethod
    def _transform_logits(self, scores: Scores) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
        """New logits for ``scores`` and extra meta for the applied-calibration record."""

    #: What the transformed numbers are (``Scores.meta["logit_kind"]``).
    output_logit_kind: ClassVar[str] = "logits"

    # -- public API --------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        """True once fitted or loaded."""
        return self.fit_info_ is not None

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise CalibrationError(
                f"{type(self).__name__} is not fitted; call .fit(...) first, or load a fitted "
                "one with llmcal.calibrate.load_calibrator(path)"
            )

    def transform(self, scores: Scores) -> Scores:
        """Calibrated Scores: new logits, meta records what was applied."""
        self._check_fitted()
        logits, extra = self._transform_logits(scores)
        meta = dict(scores.meta)
        entry: dict[str, Any] = {"kind": self.kind, "config": self.get_config()}
        params = self.get_params()
        if len(json.dumps(params)) <= _MAX_INLINE_PARAMS:
            entry["params"] = params
        assert self.fit_info_ is not None
        entry["fitted_on"] = {k: self.fit_info_.get(k) for k in ("task", "model", "n_used")}
        topk = meta.pop("topk", None)
        if topk is not None:
            entry["input_topk"] = topk  # floor entries are rescaled: the marker no longer holds
        entry.update(extra)
        meta["calibration"] = [*meta.get("calibration", []), to_jsonable(entry)]
        meta["logit_kind"] = self.output_logit_kind
        return Scores(
            ids=scores.ids,
            logits=logits,
            labels=scores.labels,
            meta=meta,
            subjects=scores.subjects,
            n_options=scores.n_options,
        )

    def fit_transform(self, scores: Scores, *args: Any, **kwargs: Any) -> Scores:
        """Fit on ``scores`` (and any further arguments), then transform ``scores``."""
        self.fit(scores, *args, **kwargs)
        return self.transform(scores)

    def to_dict(self) -> dict[str, Any]:
        """The JSON artefact as a dict."""
        self._check_fitted()
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "llmcal_version": __version__,
            "config": to_jsonable(self.get_config(), "config"),
            "params": self.get_params(),
            "fit": to_jsonable(self.fit_info_, "fit"),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>") -> Self:
        """Rebuild a fitted calibrator from :meth:`to_dict` output (checks format and kind)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CalibrationError(
                f"{source}: not an llmcal calibrator artefact (expected a JSON object with "
                f'"format": "{FORMAT}"); pass a file written by Calibrator.save() or `llmcal fit`'
            )
        version = d.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CalibrationError(
                f"{source}: invalid format_version {version!r}; the file is corrupt, re-fit it"
            )
        if version > FORMAT_VERSION:
            raise CalibrationError(
                f"{source}: calibrator format_version {version} was written by a newer llmcal "
                f"({d.get('llmcal_version', '?')}); this llmcal {__version__} reads version "
                f"{FORMAT_VERSION}. Upgrade llmcal (pip install -U llmcal) or re-fit with this one"
            )
        kind = d.get("kind")
        target = CALIBRATORS.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise CalibrationError(
                f"{source}: unknown calibrator kind {kind!r}; known kinds: {sorted(CALIBRATORS)}"
            )
        if cls is not Calibrator and target is not cls:
            raise CalibrationError(
                f"{source} holds a {kind!r} calibrator ({target.__name__}), not a {cls.kind!r} "
                f"one; load it with llmcal.calibrate.load_calibrator(path) or "
                f"{target.__name__}.load(path)"
            )
        config, params, fit = d.get("config", {}), d.get("params"), d.get("fit")
        if (
            not isinstance(config, dict)
            or not isinstance(params, dict)
            or not isinstance(fit, dict)
        ):
            raise CalibrationError(
                f"{source}: 'config', 'params' and 'fit' must be JSON objects; the file is "
                "corrupt, re-fit the calibrator"
            )
        try:
            obj = target(**config)
        except (TypeError, ValueError, CalibrationError) as exc:
            raise CalibrationError(
                f"{source}: invalid {kind!r} options {config}: {exc}; the file is corrupt or "
                "from an incompatible llmcal, re-fit the calibrator"
            ) from exc
        try:
            obj._set_params(params, source)
        except (KeyError, TypeError) as exc:
            raise CalibrationError(
                f"{source}: missing or malformed parameter ({exc!r}); the file is corrupt, "
                "re-fit the calibrator"
            ) from exc
        obj.fit_info_ = dict(fit)
        return obj  # type: ignore[return-value]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON artefact atomically (temp file + rename)."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read a JSON artefact written by :meth:`save` (the kind must match this class)."""
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"{path}: no such calibrator file")
        try:
            d = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise CalibrationError(
                f"{path}: not an llmcal calibrator file (not valid JSON: {exc}); pass a file "
                "written by Calibrator.save() or `llmcal fit`"
            ) from exc
        return cls.from_dict(d, source=str(path))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        state = "" if self.is_fitted else " (unfitted)"
        return f"{type(self).__name__}({args}){state}"


def load_calibrator(path: str | os.PathLike[str]) -> Calibrator:
    """Load any calibrator artefact, dispatching on its ``kind``."""
    return Calibrator.load(path)
