"""AUROC, risk–coverage and selective accuracy: scikit-learn, hand cases and tie handling."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from llmcal.errors import ConfigError
from llmcal.metrics import aurc, auroc, risk_coverage_curve, selective_accuracy

FAST = settings(max_examples=40, deadline=None)


def test_auroc_matches_sklearn_with_and_without_ties() -> None:
    rng = np.random.default_rng(0)
    conf = rng.random(700)
    correct = rng.random(700) < conf
    assert auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=1e-14)
    tied = np.round(conf, 1)  # many ties: counted as half a win, like sklearn's trapezoids
    assert auroc(tied, correct) == pytest.approx(roc_auc_score(correct, tied), abs=1e-14)
    w = rng.integers(0, 4, size=700).astype(float)
    want = roc_auc_score(correct, tied, sample_weight=w)
    assert auroc(tied, correct, weights=w) == pytest.approx(want, abs=1e-14)


def test_auroc_hand_and_single_class() -> None:
    # pairs (correct, wrong): (.9,.8) win, (.9,.6) win, (.7,.8) loss, (.7,.6) win -> 3/4
    assert auroc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == 0.75
    assert auroc([0.5, 0.5], [1, 0]) == 0.5
    assert math.isnan(auroc([0.9, 0.2], [1, 1]))
    assert math.isnan(auroc([0.9, 0.2], [0, 0]))


def test_aurc_and_curve_hand() -> None:
    conf, correct = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    # error rates of the top k: 0/1, 1/2, 1/3, 2/4 -> mean 1/3
    assert aurc(conf, correct) == pytest.approx(1 / 3, abs=1e-15)
    cov, risk, thr = risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 0.5, 1 / 3, 0.5])
    np.testing.assert_allclose(thr, [0.9, 0.8, 0.7, 0.6])
    cov, risk, thr = risk_coverage_curve([0.5, 0.9, 0.5], [1, 0, 0])
    np.testing.assert_allclose(cov, [1 / 3, 1.0])
    np.testing.assert_allclose(risk, [1.0, 2 / 3])


def _naive_aurc(conf: np.ndarray, correct: np.ndarray) -> float:
    order = np.argsort(-conf, kind="stable")
    err = 1.0 - correct[order]
    return float(np.mean(np.cumsum(err) / np.arange(1, len(conf) + 1)))


@FAST
@given(
    st.lists(
        st.tuples(st.sampled_from([0.2, 0.5, 0.7, 0.9]), st.booleans()), min_size=1, max_size=6
    )
)
def test_aurc_with_ties_is_the_mean_over_tie_orderings(rows: list[tuple[float, bool]]) -> None:
    conf = np.array([c for c, _ in rows])
    correct = np.array([y for _, y in rows], dtype=float)
    orderings = [
        _naive_aurc(conf[list(p)], correct[list(p)])
        for p in itertools.permutations(range(len(rows)))
    ]
    assert aurc(conf, correct) == pytest.approx(float(np.mean(orderings)), abs=1e-12)


def test_aurc_without_ties_equals_the_usual_definition() -> None:
    rng = np.random.default_rng(3)
    conf = rng.random(200)
    correct = (rng.random(200) < conf).astype(float)
    assert aurc(conf, correct) == pytest.approx(_naive_aurc(conf, correct), abs=1e-14)


def test_selective_accuracy() -> None:
    conf, correct = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    assert selective_accuracy(conf, correct, coverage=0.5) == 0.5
    assert selective_accuracy(conf, correct, coverage=0.25) == 1.0
    assert selective_accuracy(conf, correct, coverage=0.75) == pytest.approx(2 / 3)
    assert selective_accuracy(conf, correct, coverage=1.0) == 0.5
    assert selective_accuracy(conf, correct, threshold=0.75) == 0.5
    assert selective_accuracy(conf, correct, threshold=0.7) == pytest.approx(2 / 3)
    assert math.isnan(selective_accuracy(conf, correct, threshold=0.95))
    # top 2 of [.9 | .5 .5 .5]: 0.9 (right) plus one of a tie with 1 right of 3 -> (1 + 1/3)/2
    assert selective_accuracy([0.9, 0.5, 0.5, 0.5], [1, 1, 0, 0], coverage=0.5) == pytest.approx(
        2 / 3
    )
    # 0.7 * 10 is 7.000000000000001 in floating point; the cut is still 7 samples
    conf10 = np.linspace(1.0, 0.1, 10)
    correct10 = np.array([1] * 7 + [0] * 3)
    assert selective_accuracy(conf10, correct10, coverage=0.7) == 1.0


def test_selective_accuracy_arguments() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        selective_accuracy([0.5], [1])
    with pytest.raises(ConfigError, match="exactly one"):
        selective_accuracy([0.5], [1], coverage=0.5, threshold=0.5)
    with pytest.raises(ConfigError, match="coverage must be in"):
        selective_accuracy([0.5], [1], coverage=0.0)
