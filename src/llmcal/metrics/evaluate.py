"""``evaluate(scores)``: every metric of a labelled Scores object in one JSON-ready dict."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llmcal.errors import ScoresError
from llmcal.metrics import calibration as cal
from llmcal.metrics import scoring, selective
from llmcal.metrics._validate import FloatArray, check_binning, check_n_bins
from llmcal.metrics.bootstrap import bootstrap_ci
from llmcal.scores import Scores

__all__ = ["SELECTIVE_COVERAGES", "evaluate"]

#: Coverages at which ``evaluate`` reports selective accuracy.
SELECTIVE_COVERAGES = (0.5, 0.8, 0.9)
_NO_SUBJECT = "(none)"


def _num(x: float) -> float | None:
    """A plain float, or None for NaN (JSON has no NaN)."""
    x = float(x)
    return None if math.isnan(x) else x


def _core(
    conf: FloatArray,
    correct: FloatArray,
    log_probs: FloatArray,
    labels: Any,
    n_bins: int,
    binning: cal.Binning,
    answer_view: bool,
) -> dict[str, Any]:
    acc = float(correct.mean())
    # answer view: the binary Brier of p(right); options view: the multi-class Brier
    brier = (
        scoring.top_label_brier(conf, correct)
        if answer_view
        else scoring.brier(np.exp(log_probs), labels)
    )
    mean_conf = float(conf.mean())
    return {
        "n": int(conf.shape[0]),
        "accuracy": acc,
        "mean_confidence": mean_conf,
        "overconfidence": mean_conf - acc,
        "ece": cal.ece(conf, correct, n_bins, binning),
        "mce": cal.mce(conf, correct, n_bins, binning),
        "brier": brier,
        "nll": scoring.nll(log_probs, labels, kind="log_probs"),
        "auroc": _num(selective.auroc(conf, correct)),
    }


def evaluate(
    scores: Scores,
    n_bins: int = 15,
    binning: cal.Binning = "width",
    ci: bool = True,
    n_resamples: int = 1000,
    seed: int | None = 0,
    by_subject: bool = True,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Accuracy, calibration, proper scores and ranking metrics of labelled Scores.

    Confidence-vs-correctness quantities use ``scores.confidences()`` and ``scores.correct()``:
    the top-label view for multiple choice; in the answer view (``scores.view == "answer"``)
    p(answer right) against correctness over [0, 1], with the binary Brier and NLL of that
    probability and no class-wise ECE. ``view`` in the result says which. binned metrics
    use ``n_bins`` / ``binning``; ``ece_ci`` is the percentile bootstrap interval (``alpha``,
    ``n_resamples``, ``seed``) or None with ``ci=False``. Undefined values (AUROC with one
    class) are None. With ``by_subject`` and ``scores.subjects`` set, ``subjects`` maps each
    subject (rows without one under ``"(none)"``) to its own n, accuracy, ECE, … .
    """
    if not isinstance(scores, Scores):
        raise ScoresError(f"evaluate() needs a llmcal Scores object, got {type(scores).__name__}")
    b = check_n_bins(n_bins)
    check_binning(binning)
    if len(scores) == 0:
        raise ScoresError("evaluate() needs at least one row, but the Scores are empty")
    scores.require_labels("evaluate()")
    conf = scores.confidences()
    correct = scores.correct().astype(np.float64)
    log_probs = scores.log_probs()
    labels = scores.labels
    probs = np.exp(log_probs)

    answer_view = scores.view == "answer"
    out: dict[str, Any] = {"n": len(scores), "k": scores.k, "view": scores.view}
    core = _core(conf, correct, log_probs, labels, b, binning, answer_view)
    out.update(core)
    if ci:
        _, low, high = bootstrap_ci(
            cal.ece,
            conf,
            correct,
            n_bins=b,
            binning=binning,
            n_resamples=n_resamples,
            alpha=alpha,
            seed=seed,
        )
        out["ece_ci"] = [_num(low), _num(high)]
    else:
        out["ece_ci"] = None
    out.update(
        {
            "ece_l2": cal.ece(conf, correct, b, binning, norm="l2"),
            "debiased_l2_ece": cal.debiased_l2_ece(conf, correct, b, binning),
            "classwise_ece": None
            if answer_view
            else cal.classwise_ece(probs, labels, b, binning, n_options=scores.n_options),
            "smooth_ece": cal.smooth_ece(conf, correct),
            "top_label_brier": scoring.top_label_brier(conf, correct),
            "aurc": selective.aurc(conf, correct),
            "selective_accuracy": {
                str(c): selective.selective_accuracy(conf, correct, coverage=c)
                for c in SELECTIVE_COVERAGES
            },
            "n_bins": b,
            "binning": binning,
            "ci": {"method": "percentile", "alpha": alpha, "n_resamples": n_resamples, "seed": seed}
            if ci
            else None,
            "reliability": cal.reliability_data(conf, correct, b, binning).to_dict(),
        }
    )
    if by_subject and scores.subjects is not None:
        names = np.array(
            [_NO_SUBJECT if s is None else str(s) for s in scores.subjects.tolist()], dtype=object
        )
        subjects: dict[str, Any] = {}
        for name in sorted(set(names.tolist())):
            rows = names == name
            subjects[name] = _core(
                conf[rows], correct[rows], log_probs[rows], labels[rows], b, binning, answer_view
            )
        out["subjects"] = subjects
    return out
