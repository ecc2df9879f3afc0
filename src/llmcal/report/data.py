"""The content of a calibration report, built once and rendered as HTML, JSON or Markdown.

:func:`build_report` evaluates every run with :func:`llmcal.metrics.evaluate` (the numbers
``llmcal eval`` prints for the same settings), adds selective accuracy on a coverage grid, the
drift between runs (:mod:`llmcal.report.drift`) and the provenance of every number, and returns
a :class:`Report`: ``report.data`` is a JSON-ready dict; the Scores are kept for the plots.

**Drift pairs.** Each calibrated run (a run with ``calibrated_from``) is compared with the run
it was calibrated from; every other run with the nearest earlier run that is not a calibrated
run. Pairs that share no question id are listed with the reason instead of statistics.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from llmcal._io import atomic_write_text
from llmcal._version import __version__
from llmcal.errors import ConfigError, ScoresError
from llmcal.metrics import calibration as cal
from llmcal.metrics._validate import check_binning, check_n_bins
from llmcal.metrics.evaluate import evaluate
from llmcal.metrics.selective import selective_accuracy
from llmcal.report.drift import DEFAULT_TOLERANCE, calibration_drift
from llmcal.scores import Scores

__all__ = [
    "COVERAGE_GRID",
    "FORMATS",
    "LOGIT_KIND_TEXT",
    "Report",
    "ReportRun",
    "build_report",
    "drift_pairs",
    "format_for_path",
]

ReportFormat = Literal["html", "json", "md"]
#: Output formats and their file suffixes.
FORMATS: dict[str, tuple[str, ...]] = {
    "html": (".html", ".htm"),
    "json": (".json",),
    "md": (".md", ".markdown"),
}
#: Coverages at which the selective-accuracy curve is tabulated.
COVERAGE_GRID = tuple(round(0.05 * i, 2) for i in range(1, 21))

#: What ``Scores.meta["logit_kind"]`` means, for the provenance table.
LOGIT_KIND_TEXT = {
    "logits": "raw next-token logits of the option tokens",
    "logprobs": "full-vocabulary log-probabilities of the option tokens",
    "topk_logprobs": "top-k API log-probabilities (options outside the top k filled in)",
    "loglikelihood": "log-likelihood of each option's text (cloze scoring)",
    "probs_log": "logarithms of probabilities (an ensemble or a binning calibrator)",
}


@dataclass(frozen=True)
class ReportRun:
    """One run of a report: display name, Scores, and where they came from."""

    name: str
    scores: Scores
    file: str | None = None
    calibrator_file: str | None = None
    calibrated_from: str | None = None


@dataclass(frozen=True)
class Report:
    """A built report: ``data`` (JSON-ready) and the runs it was built from (for plots)."""

    data: dict[str, Any]
    runs: tuple[ReportRun, ...]

    def to_json(self) -> str:
        """The report data as indented JSON."""
        return json.dumps(self.data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    def to_markdown(self) -> str:
        """The report as GitHub-flavoured Markdown (tables, no images)."""
        from llmcal.report.markdown import render_markdown

        return render_markdown(self.data)

    def to_html(self) -> str:
        """The report as one self-contained HTML document (inline images, CSS and JS)."""
        from llmcal.report.html import render_html

        return render_html(self)

    def render(self, fmt: str) -> str:
        """The report as ``"html"``, ``"json"`` or ``"md"`` text."""
        if fmt == "html":
            return self.to_html()
        if fmt == "json":
            return self.to_json()
        if fmt == "md":
            return self.to_markdown()
        raise ConfigError(f"report format must be one of {sorted(FORMATS)}, got {fmt!r}")

    def save(self, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
        """Write the report atomically; the format follows the suffix unless given."""
        fmt = fmt or format_for_path(path)
        return atomic_write_text(path, self.render(fmt))


def format_for_path(path: str | os.PathLike[str]) -> str:
    """The report format implied by a file suffix (.html, .json, .md)."""
    suffix = Path(path).suffix.lower()
    for fmt, suffixes in FORMATS.items():
        if suffix in suffixes:
            return fmt
    known = ", ".join(s for ss in FORMATS.values() for s in ss)
    raise ConfigError(f"cannot tell the report format of {str(path)!r}: use one of {known}")


def drift_pairs(runs: Sequence[ReportRun]) -> list[tuple[int, int]]:
    """Index pairs (before, after) compared in the drift section (see the module docstring)."""
    index = {r.name: i for i, r in enumerate(runs)}
    pairs: list[tuple[int, int]] = []
    for i, run in enumerate(runs):
        if run.calibrated_from is not None:
            if run.calibrated_from not in index:
                raise ConfigError(
                    f"run {run.name!r} is calibrated from {run.calibrated_from!r}, "
                    "which is not a run of this report"
                )
            pairs.append((index[run.calibrated_from], i))
            continue
        earlier = [j for j in range(i) if runs[j].calibrated_from is None]
        if earlier:
            pairs.append((earlier[-1], i))
    return pairs


def _as_runs(runs: Mapping[str, Scores] | Sequence[ReportRun]) -> tuple[ReportRun, ...]:
    if isinstance(runs, Mapping):
        out = tuple(ReportRun(name=str(k), scores=v) for k, v in runs.items())
    else:
        out = tuple(runs)
    if not out:
        raise ConfigError("a report needs at least one run")
    names = [r.name for r in out]
    for r in out:
        if not isinstance(r, ReportRun) or not isinstance(r.scores, Scores):
            raise ConfigError("runs must map names to Scores, or be a sequence of ReportRun")
        if not r.name.strip():
            raise ConfigError("every run needs a non-empty name")
        if names.count(r.name) > 1:
            raise ConfigError(f"run names must be unique; {r.name!r} appears more than once")
        where = r.file or r.name
        if len(r.scores) == 0:
            raise ScoresError(f"{where}: the Scores are empty; a report needs scored questions")
        missing = int((r.scores.labels < 0).sum())
        if missing:
            raise ScoresError(
                f"{where}: a report needs labelled Scores, but {missing} of {len(r.scores)} "
                "rows are unlabelled (label -1); score a labelled task or drop them with "
                "scores.labelled_only()"
            )
    return out


def _provenance(run: ReportRun) -> dict[str, Any]:
    meta = run.scores.meta
    kind = meta.get("logit_kind")
    calibration = [
        {
            "kind": c.get("kind"),
            "fitted_on": c.get("fitted_on"),
            **({"temperature": c["params"]["temperature"]} if _has_temperature(c) else {}),
        }
        for c in meta.get("calibration", [])
        if isinstance(c, dict)
    ]
    return {
        "file": run.file,
        "calibrator_file": run.calibrator_file,
        "calibrated_from": run.calibrated_from,
        "model": meta.get("model"),
        "task": meta.get("task"),
        "template": meta.get("template"),
        "mode": meta.get("mode"),
        "normalization": meta.get("normalization"),
        "n_shots": meta.get("n_shots"),
        "logit_kind": kind,
        "logit_kind_text": LOGIT_KIND_TEXT.get(str(kind)) if kind is not None else None,
        "backend": meta.get("backend"),
        "device": meta.get("device"),
        "dtype": meta.get("dtype"),
        "seconds": meta.get("seconds"),
        "prompt": meta.get("example_prompt"),
        "adapter": meta.get("adapter"),
        "calibration": calibration,
        "scores_llmcal_version": meta.get("llmcal_version"),
        "n": len(run.scores),
        "k": run.scores.k,
        "has_subjects": run.scores.subjects is not None,
    }


def _has_temperature(entry: dict[str, Any]) -> bool:
    params = entry.get("params")
    return isinstance(params, dict) and isinstance(params.get("temperature"), float | int)


#: Subjects with fewer questions are left out of the subject table (their ECE is mostly noise).
DEFAULT_MIN_SUBJECT_N = 20


#: What "confidence", Brier and NLL mean in each Scores view (see llmcal.scores).
_VIEW_TERMS = {
    "options": {
        "confidence": "top-label confidence: the largest softmax probability over the options",
        "brier": "multi-class Brier score Σ_k (p_k − y_k)², averaged",
        "nll": "mean −log p(correct option)",
        "moved": "top-label confidence",
    },
    "answer": {
        "confidence": "p(answer is right) of each free-form answer (its confidence method: "
        "P(True), sequence likelihood, …)",
        "brier": "binary Brier score (p − y)², averaged",
        "nll": "mean −log p(the judged outcome)",
        "moved": "p(answer is right)",
    },
    "mixed": {
        "confidence": "top-label confidence (multiple-choice runs) or p(answer is right) "
        "(free-form runs)",
        "brier": "multi-class Brier (multiple choice) or binary Brier (free-form), averaged",
        "nll": "mean −log p(correct option / judged outcome)",
        "moved": "confidence",
    },
}


def _settings(
    n_bins: int,
    binning: str,
    n_resamples: int,
    seed: int | None,
    alpha: float,
    tolerance: float,
    view: str = "options",
) -> dict[str, Any]:
    if binning == "width":
        bins = f"{n_bins} equal-width bins ((b/B, (b+1)/B], confidence 0 in the first bin)"
    else:
        bins = f"{n_bins} equal-mass bins (ranked by confidence, ties kept in one bin)"
    level = f"{100 * (1 - alpha):g}%"
    terms = _VIEW_TERMS[view]
    return {
        "n_bins": n_bins,
        "binning": binning,
        "confidence": terms["confidence"],
        "ece": f"L1 ECE, Σ_b (n_b/n)·|accuracy_b − confidence_b|, over {bins}",
        "mce": "largest |accuracy_b − confidence_b| over the non-empty bins",
        "smooth_ece": "SmoothECE (Błasiok & Nakkiran 2023), reflected Gaussian kernel, "
        "bandwidth at the fixed point smECE_σ = σ",
        "brier": terms["brier"],
        "nll": terms["nll"],
        "auroc": "AUROC of confidence as a score for correctness (ties count half)",
        "gap": "mean confidence − accuracy (> 0: over-confident, < 0: under-confident)",
        "ci": {
            "method": "percentile bootstrap over questions",
            "level": level,
            "alpha": alpha,
            "n_resamples": n_resamples,
            "seed": seed,
        },
        "drift": {
            "method": "paired bootstrap: each replicate resamples the question indices once "
            "and applies them to both runs",
            "statistic": "ΔECE = ECE(after) − ECE(before), on the common questions",
            "p_value": "two-sided: min(1, 2·min(P*(ΔECE* ≤ 0), P*(ΔECE* ≥ 0))); "
            f"0 means below 1/{n_resamples}",
            "n_resamples": n_resamples,
            "seed": seed,
            "alpha": alpha,
            "tolerance": tolerance,
            "moves": f"a question moved up (down) when its {terms['moved']} rose (fell) "
            f"by more than {tolerance:g}",
        },
        "coverage_grid": list(COVERAGE_GRID),
    }


def _view(items: Sequence[ReportRun]) -> str:
    """``options`` / ``answer`` when every run is of that view, else ``mixed``."""
    views = {run.scores.view for run in items}
    return views.pop() if len(views) == 1 else "mixed"


def _environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    env: dict[str, Any] = {"llmcal": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "matplotlib"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    return env


def build_report(
    runs: Mapping[str, Scores] | Sequence[ReportRun],
    n_bins: int = 15,
    binning: cal.Binning = "width",
    n_resamples: int = 1000,
    seed: int | None = 0,
    alpha: float = 0.05,
    tolerance: float = DEFAULT_TOLERANCE,
    title: str = "Calibration report",
    guarantees: Mapping[str, Any] | None = None,
    min_subject_n: int = DEFAULT_MIN_SUBJECT_N,
) -> Report:
    """Evaluate every run, compare runs on shared questions and record the provenance.

    ``runs`` maps display names to labelled Scores, or is a sequence of :class:`ReportRun`
    (which also carries files and calibrators). Metric options are those of
    :func:`llmcal.metrics.evaluate`; ``tolerance`` is the confidence change below which a
    question counts as unchanged in the drift section. ``guarantees`` (from
    :func:`llmcal.report.guarantees.guarantees_data`) adds the conformal / selective section.
    The subject × run table keeps subjects with at least ``min_subject_n`` questions (in some
    run), with bootstrap CIs.
    """
    items = _as_runs(runs)
    if isinstance(min_subject_n, bool) or not isinstance(min_subject_n, int) or min_subject_n < 1:
        raise ConfigError(f"min_subject_n must be a positive integer, got {min_subject_n!r}")
    b = check_n_bins(n_bins)
    check_binning(binning)
    if isinstance(tolerance, bool) or not (
        isinstance(tolerance, float | int) and 0.0 <= tolerance < 1.0
    ):
        raise ConfigError(f"tolerance must be a number in [0, 1), got {tolerance!r}")
    pairs = drift_pairs(items)
    run_data: list[dict[str, Any]] = []
    for run in items:
        s = run.scores
        metrics = evaluate(
            s, n_bins=b, binning=binning, n_resamples=n_resamples, seed=seed, alpha=alpha
        )
        conf, corr = s.confidences(), s.correct()
        curve = [selective_accuracy(conf, corr, coverage=c) for c in COVERAGE_GRID]
        run_data.append(
            {
                "name": run.name,
                "provenance": _provenance(run),
                "metrics": metrics,
                "selective_accuracy_curve": {"coverage": list(COVERAGE_GRID), "accuracy": curve},
            }
        )
    drift_data: list[dict[str, Any]] = []
    for i, j in pairs:
        entry: dict[str, Any] = {"before": items[i].name, "after": items[j].name}
        try:
            entry.update(
                calibration_drift(
                    items[i].scores,
                    items[j].scores,
                    b,
                    binning,
                    n_resamples,
                    seed,
                    alpha,
                    tolerance,
                )
            )
        except ScoresError as exc:
            entry["skipped"] = str(exc)
        drift_data.append(entry)
    data: dict[str, Any] = {
        "format": "llmcal-report",
        "format_version": 1,
        "title": title,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "llmcal_version": __version__,
        "environment": _environment(),
        "settings": _settings(b, binning, n_resamples, seed, alpha, tolerance, _view(items)),
        "runs": run_data,
        "drift": drift_data,
        "has_subjects": any(r.scores.subjects is not None for r in items),
        "subject_table": subject_table(items, b, binning, n_resamples, seed, alpha, min_subject_n),
    }
    if guarantees:
        if guarantees.get("run") not in {r.name for r in items}:
            raise ConfigError(
                f"guarantees are for run {guarantees.get('run')!r}, not in the report"
            )
        data["guarantees"] = dict(guarantees)
    return Report(data=data, runs=items)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x))


def subject_table(
    runs: Sequence[ReportRun],
    n_bins: int,
    binning: cal.Binning,
    n_resamples: int,
    seed: int | None,
    alpha: float,
    min_n: int,
) -> dict[str, Any]:
    """Subject × run: n, accuracy and ECE with percentile bootstrap CIs, gap.

    A subject is listed when some run has at least ``min_n`` of its questions; a run with
    fewer gets None in that row (its ECE would be mostly noise). ``hidden`` names the rest.
    """
    from llmcal.metrics.bootstrap import bootstrap_ci

    per_run: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
    for run in runs:
        s = run.scores
        groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if s.subjects is not None:
            names = np.array(["(none)" if x is None else str(x) for x in s.subjects.tolist()])
            conf, corr = s.confidences(), s.correct().astype(np.float64)
            for name in sorted(set(names.tolist())):
                rows = names == name
                groups[name] = (conf[rows], corr[rows])
        per_run.append(groups)
    subjects = sorted({name for g in per_run for name in g})
    shown, hidden = [], []
    for name in subjects:
        sizes = [len(g[name][0]) if name in g else 0 for g in per_run]
        if max(sizes) < min_n:
            hidden.append(name)
            continue
        cells: dict[str, Any] = {}
        for run, g in zip(runs, per_run, strict=True):
            if name not in g or len(g[name][0]) < min_n:
                cells[run.name] = None
                continue
            conf, corr = g[name]
            acc, acc_lo, acc_hi = bootstrap_ci(
                _mean, corr, n_resamples=n_resamples, alpha=alpha, seed=seed
            )
            ece, ece_lo, ece_hi = bootstrap_ci(
                cal.ece, conf, corr, n_bins=n_bins, binning=binning,
                n_resamples=n_resamples, alpha=alpha, seed=seed,
            )  # fmt: skip
            cells[run.name] = {
                "n": int(conf.shape[0]),
                "accuracy": acc,
                "accuracy_ci": [acc_lo, acc_hi],
                "ece": ece,
                "ece_ci": [ece_lo, ece_hi],
                "overconfidence": float(conf.mean() - corr.mean()),
            }
        shown.append({"subject": name, "runs": cells})
    return {"min_n": min_n, "rows": shown, "hidden": hidden}


def confidences_and_correct(report: Report) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{run name: (confidence, correct)}`` of a report's runs, for the plots."""
    return {r.name: (r.scores.confidences(), r.scores.correct()) for r in report.runs}
