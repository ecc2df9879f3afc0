"""evaluate(): keys, consistency with the individual metrics, subjects, padding, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from llmcal.errors import ConfigError, ScoresError
from llmcal.metrics import ece, evaluate
from llmcal.scores import Scores

KEYS = {
    "n", "k", "accuracy", "ece", "ece_ci", "ece_l2", "mce", "classwise_ece", "smooth_ece", "brier",
    "top_label_brier", "nll", "auroc", "aurc", "mean_confidence", "overconfidence", "n_bins",
    "binning",
}  # fmt: skip


def _scores(n: int = 60, seed: int = 0, subjects: bool = True) -> Scores:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 4)) * 2.0
    logits[::3, 3] = -np.inf  # every third question has only 3 options
    labels = np.array([rng.integers(0, 3 if i % 3 == 0 else 4) for i in range(n)])
    subj = np.array([["algebra", "biology", None][i % 3] for i in range(n)], dtype=object)
    return Scores(
        ids=np.array([f"q{i}" for i in range(n)], dtype=object),
        logits=logits,
        labels=labels,
        subjects=subj if subjects else None,
    )


def test_evaluate_small_scores_with_padding_and_subjects() -> None:
    s = _scores()
    out = evaluate(s, n_resamples=200)
    assert set(out) >= KEYS
    json.dumps(out, allow_nan=False)  # plain JSON: no numpy types, no NaN

    # recompute from the logits by hand
    z = s.logits
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    pred = z.argmax(axis=1)
    correct = pred == s.labels
    conf = p.max(axis=1)
    assert out["n"] == 60 and out["k"] == 4
    assert out["accuracy"] == pytest.approx(correct.mean(), abs=1e-15)
    assert out["mean_confidence"] == pytest.approx(conf.mean(), abs=1e-14)
    assert out["overconfidence"] == pytest.approx(conf.mean() - correct.mean(), abs=1e-14)
    onehot = np.eye(4)[s.labels]
    assert out["brier"] == pytest.approx(np.mean(((p - onehot) ** 2).sum(axis=1)), abs=1e-14)
    assert out["nll"] == pytest.approx(-np.mean(np.log(p[np.arange(60), s.labels])), abs=1e-12)
    assert out["top_label_brier"] == pytest.approx(np.mean((conf - correct) ** 2), abs=1e-14)
    assert out["ece"] == pytest.approx(ece(conf, correct), abs=1e-15)
    low, high = out["ece_ci"]
    assert low <= high
    assert out["n_bins"] == 15 and out["binning"] == "width"
    assert out["reliability"]["count"] and sum(out["reliability"]["count"]) == 60

    subjects = out["subjects"]
    assert sorted(subjects) == ["(none)", "algebra", "biology"]
    assert sum(v["n"] for v in subjects.values()) == 60
    alg = np.arange(60) % 3 == 0
    assert subjects["algebra"]["n"] == 20
    assert subjects["algebra"]["accuracy"] == pytest.approx(correct[alg].mean(), abs=1e-15)
    assert subjects["algebra"]["ece"] == pytest.approx(ece(conf[alg], correct[alg]), abs=1e-15)


def test_evaluate_options() -> None:
    s = _scores(subjects=False)
    out = evaluate(s, ci=False, n_bins=5, binning="mass")
    assert out["ece_ci"] is None and out["ci"] is None
    assert "subjects" not in out
    assert out["n_bins"] == 5 and out["binning"] == "mass"
    assert "subjects" not in evaluate(_scores(), ci=False, by_subject=False)


def test_evaluate_auroc_undefined_is_none() -> None:
    s = Scores(
        ids=np.array(["a", "b"], dtype=object),
        logits=np.array([[2.0, 0.0], [0.0, 1.0]]),
        labels=np.array([0, 1]),
    )
    out = evaluate(s, n_resamples=50)
    assert out["accuracy"] == 1.0 and out["auroc"] is None
    json.dumps(out, allow_nan=False)


def test_evaluate_errors() -> None:
    s = _scores()
    unlabelled = s.replace(labels=np.where(np.arange(60) == 5, -1, s.labels))
    with pytest.raises(ScoresError, match="evaluate\\(\\) needs labels, but 1 of 60 rows"):
        evaluate(unlabelled)
    with pytest.raises(ScoresError, match="empty"):
        evaluate(s.select(np.zeros(60, dtype=bool)))
    with pytest.raises(ConfigError, match="n_bins"):
        evaluate(s, n_bins=0)
    with pytest.raises(ConfigError, match="binning"):
        evaluate(s, binning="equal")  # type: ignore[arg-type]
    with pytest.raises(ScoresError, match="Scores object"):
        evaluate({"logits": []})  # type: ignore[arg-type]


def test_importing_metrics_and_report_stays_light() -> None:
    code = (
        "import sys, llmcal.metrics, llmcal.report; from llmcal.metrics import evaluate; "
        "heavy = [m for m in ('torch', 'matplotlib', 'scipy', 'sklearn') if m in sys.modules]; "
        "print(heavy)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
