"""The Calibrator base class, its JSON artefact and the registry of calibrator kinds.

A fitted calibrator is saved as a small JSON file (never pickle)::

    {"format": "llmcal-calibrator", "format_version": 1, "kind": "temperature",
     "llmcal_version": "0.1.0", "config": {...}, "params": {...}, "fit": {...}}

``config`` holds the constructor options, ``params`` the fitted parameters and ``fit`` what it
was fitted on and how. Floats are written with ``repr``, so a loaded calibrator transforms
bit-identically to the one that was saved.

Names follow scikit-learn: ``get_params()`` / ``set_params()`` are the constructor options (the
artefact's ``config``), fitted values end in ``_`` (``temperature_``) and
``get_fitted_params()`` returns them as JSON types (the artefact's ``params``). Besides Scores,
``fit`` / ``predict_proba`` / ``predict`` take plain arrays: ``fit(logits, labels)`` with an
n × K logit array (or a 1-D array of binary logits ``z`` meaning P(option 1) = σ(z)).
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

from llmcal._io import atomic_write_text, loads_json
from llmcal._version import __version__
from llmcal.errors import CalibrationError, LLMCalWarning, quote
from llmcal.scores import Scores

if TYPE_CHECKING:
    from typing_extensions import Self

FORMAT = "llmcal-calibrator"
FORMAT_VERSION = 1

#: kind → Calibrator subclass; filled in as subclasses are defined.
CALIBRATORS: dict[str, type[Calibrator]] = {}
#: Calibrators that wrap another one (e.g. cross-fitting): loadable, but not a ``llmcal fit`` kind.
WRAPPERS: dict[str, type[Calibrator]] = {}

#: Scores meta keys copied into an artefact's ``fit`` record.
_PROVENANCE = ("task", "model", "template", "mode", "backend", "logit_kind")

_MAX_INLINE_PARAMS = 2000  # characters of JSON; larger params are left out of Scores meta


class CalibrationWarning(LLMCalWarning):
    """A fit finished but its result needs attention (divergence, non-convergence)."""


def warn(message: str) -> None:
    """Issue a :class:`CalibrationWarning` pointing at the caller's caller."""
    warnings.warn(message, CalibrationWarning, stacklevel=3)


def provenance(scores: Scores) -> dict[str, Any]:
    """The provenance entries of a Scores' meta (missing ones are None) and its view."""
    return {**{k: scores.meta.get(k) for k in _PROVENANCE}, "view": scores.view}


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


def _numeric_problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` is not a (nested) list of plain JSON numbers, or None when it is."""
    if isinstance(value, bool):
        return f"holds the boolean {json.dumps(value)} where a number is expected"
    if isinstance(value, (int, float, np.integer, np.floating)):
        try:
            f = float(value)
        except OverflowError:
            return "holds a number too large for a float"
        if not math.isfinite(f):
            return "has non-finite values"
        if f != 0.0 and abs(f) < np.finfo(np.float64).tiny:
            return f"holds the denormal number {f!r}, too close to 0 to compute with"
        return None
    if isinstance(value, (list, tuple)):
        if depth >= 3:
            return "is nested too deeply for a parameter array"
        for v in value:
            problem = _numeric_problem(v, depth + 1)
            if problem is not None:
                return problem
        return None
    return f"is not numeric (it holds the {type(value).__name__} {quote(value)})"


def float_array(
    value: Any, shape: tuple[int, ...] | None, name: str, source: str
) -> npt.NDArray[np.float64]:
    """A finite float64 array from an artefact's params, with a clear error if malformed.

    Only JSON numbers are accepted: booleans, strings and denormal numbers (``1e-310``) are
    refused, so a corrupt value is named here instead of surfacing later as an overflow.
    """
    problem = _numeric_problem(value)
    if problem is not None:
        raise CalibrationError(
            f"{source}: parameter {name!r} {problem}; the file is corrupt, re-fit the calibrator"
        )
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(
            f"{source}: parameter {name!r} is a ragged list, not an array of numbers; the file "
            "is corrupt, re-fit the calibrator"
        ) from None
    if shape is not None and arr.shape != shape:
        raise CalibrationError(
            f"{source}: parameter {name!r} has shape {arr.shape}, expected {shape}; "
            "the file is corrupt, re-fit the calibrator"
        )
    return arr


def as_scores(x: Any, labels: Any = None, who: str = "fit") -> Scores:
    """``x`` if it is Scores, else Scores built from an array of logits (and optional labels).

    A 2-D array is n × K option logits (``-inf`` pads short rows on the right); a 1-D array is
    binary logits ``z`` with P(option 1) = σ(z), stored as the rows ``[0, z]``. ``labels`` are
    option indices (−1 = unknown); ids are ``"0" … "n-1"``.
    """
    if isinstance(x, Scores):
        if labels is not None:
            raise CalibrationError(
                f"{who}: labels are read from the Scores; pass labels only with an array of logits"
            )
        return x
    try:
        z = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{who}: logits must be a numeric array ({exc})") from exc
    if z.ndim == 1:
        z = np.stack([np.zeros_like(z), z], axis=1)
    if z.ndim != 2:
        raise CalibrationError(
            f"{who}: logits must be an n × K array (or 1-D binary logits), got shape {z.shape}"
        )
    n = z.shape[0]
    if labels is None:
        y = np.full(n, -1, dtype=np.int64)
    else:
        raw = np.asarray(labels)
        if raw.shape != (n,):
            raise CalibrationError(f"{who}: labels must have shape ({n},), got {raw.shape}")
        if raw.size and not np.all(np.mod(raw.astype(np.float64), 1.0) == 0.0):
            raise CalibrationError(f"{who}: labels must be integer option indices")
        y = raw.astype(np.int64)
    return Scores.from_logits(z, y, meta={"logit_kind": "logits", "source": "array"})


def check_config(target: type[Calibrator], config: dict[str, Any], source: str) -> None:
    """Each saved option must have the JSON type of the constructor's default for it."""
    import inspect

    params = inspect.signature(target.__init__).parameters
    for key, value in config.items():
        param = params.get(key)
        if param is None or param.default is inspect.Parameter.empty:
            continue  # unknown options are reported by the constructor itself
        default = param.default
        if "dict" in str(param.annotation):  # a nested option (e.g. a wrapped calibrator)
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            want = "true or false"
        elif isinstance(default, (int, float)):
            ok = _numeric_problem(value) is None and not isinstance(value, list)
            want = "a finite number"
        elif isinstance(default, str):
            ok = isinstance(value, str)
            want = "a string"
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, list) and _numeric_problem(value) is None
            want = "a list of finite numbers"
        else:
            continue
        if not ok:
            raise CalibrationError(
                f"{source}: option {key!r} of the {target.kind!r} calibrator must be {want}, "
                f"got {quote(value)}; the file is corrupt, re-fit the calibrator"
            )


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


class Calibrator(ABC):
    """Base class: ``fit`` on Scores, ``transform`` Scores, ``save``/``load`` as JSON."""

    kind: ClassVar[str]

    def __init_subclass__(cls, wrapper: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is not None:
            registry = WRAPPERS if wrapper else CALIBRATORS
            if kind in {**CALIBRATORS, **WRAPPERS} and registry.get(kind) is not cls:
                raise TypeError(f"calibrator kind {kind!r} is already registered")
            registry[kind] = cls

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
    def get_fitted_params(self) -> dict[str, Any]:
        """The fitted parameters as JSON types (the artefact's ``params``)."""

    @abstractmethod
    def _set_params(self, params: dict[str, Any], source: str) -> None:
        """Restore fitted parameters from an artefact (validated)."""

    @abstractmethod
    def _transform_logits(self, scores: Scores) -> tuple[npt.NDArray[np.float64], dict[str, Any]]:
        """New logits for ``scores`` and extra meta for the applied-calibration record."""

    #: What the transformed numbers are (``Scores.meta["logit_kind"]``).
    output_logit_kind: ClassVar[str] = "logits"

    # -- public API --------------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor options, as scikit-learn's ``get_params`` (same as :meth:`get_config`)."""
        return self.get_config()

    def set_params(self, **params: Any) -> Self:
        """Change constructor options (validated as by the constructor); returns ``self``."""
        config = self.get_config()
        unknown = sorted(set(params) - set(config))
        if unknown:
            raise CalibrationError(
                f"{type(self).__name__} has no option(s) {unknown}; its options are {sorted(config)}"
            )
        fresh = type(self)(**{**config, **params})
        for name in params:
            setattr(self, name, getattr(fresh, name))
        return self

    def clone(self) -> Self:
        """An unfitted copy with the same constructor options."""
        return type(self)(**self.get_config())

    def predict_proba(self, x: Any) -> npt.NDArray[np.float64]:
        """Calibrated probabilities (n × K) of Scores or an array of logits."""
        return self.transform(as_scores(x, who=f"{type(self).__name__}.predict_proba")).probs()

    def predict(self, x: Any) -> npt.NDArray[np.int64]:
        """The predicted option per row after calibration (argmax of :meth:`predict_proba`)."""
        return np.asarray(np.argmax(self.predict_proba(x), axis=1), dtype=np.int64)

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

    def transform(self, scores: Scores | npt.ArrayLike) -> Scores:
        """Calibrated Scores (of Scores or an array of logits): new logits, meta records what was applied."""
        self._check_fitted()
        scores = as_scores(scores, who=f"{type(self).__name__}.transform")
        logits, extra = self._transform_logits(scores)
        meta = dict(scores.meta)
        entry: dict[str, Any] = {"kind": self.kind, "config": self.get_config()}
        params = self.get_fitted_params()
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

    def fit_transform(self, scores: Any, *args: Any, **kwargs: Any) -> Scores:
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
            "params": self.get_fitted_params(),
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
                f"{source}: invalid format_version {quote(version)}; the file is corrupt, re-fit it"
            )
        if version > FORMAT_VERSION:
            raise CalibrationError(
                f"{source}: calibrator format_version {version} was written by a newer llmcal "
                f"({quote(d.get('llmcal_version', '?'))}); this llmcal {__version__} reads version "
                f"{FORMAT_VERSION}. Upgrade llmcal (pip install -U llmcal) or re-fit with this one"
            )
        kind = d.get("kind")
        known = {**CALIBRATORS, **WRAPPERS}
        target = known.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise CalibrationError(
                f"{source}: unknown calibrator kind {quote(kind)}; known kinds: {sorted(known)}"
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
        check_config(target, config, source)
        try:
            obj = target(**config)
        except (TypeError, ValueError, CalibrationError) as exc:
            raise CalibrationError(
                f"{source}: invalid {kind!r} options {quote(config)}: {exc}; the file is corrupt or "
                "from an incompatible llmcal, re-fit the calibrator"
            ) from exc
        try:
            obj._set_params(params, source)
        except (KeyError, TypeError) as exc:
            raise CalibrationError(
                f"{source}: missing or malformed parameter ({quote(exc)}); the file is corrupt, "
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
            d = loads_json(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
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
