"""Accuracy, Brier and NLL against scikit-learn and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from llmcal.errors import ConfigError, DataError
from llmcal.metrics import accuracy, brier, nll, top_label_brier
from llmcal.scores import log_softmax, softmax


def _probs(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = softmax(rng.normal(size=(n, k)) * 1.5)
    return p, rng.integers(0, k, size=n)


def test_brier_binary_is_twice_sklearn() -> None:
    p, y = _probs(0, 300, 2)
    # both columns carry the same squared error, so the multi-class sum doubles the binary score
    assert brier(p, y) == pytest.approx(2.0 * brier_score_loss(y, p[:, 1]), abs=1e-14)


@pytest.mark.parametrize("k", [3, 4, 7])
def test_brier_multiclass_matches_sklearn_and_one_hot_mse(k: int) -> None:
    p, y = _probs(k, 400, k)
    onehot = np.eye(k)[y]
    assert brier(p, y) == pytest.approx(k * float(np.mean((p - onehot) ** 2)), abs=1e-14)
    assert brier(p, y) == pytest.approx(brier_score_loss(y, p, labels=list(range(k))), abs=1e-14)


def test_brier_hand_and_padding() -> None:
    # row 0: (.7-1)^2 + .2^2 + .1^2 = .09 + .04 + .01 = .14; row 1 (padded, 0 adds nothing):
    # .5^2 + (.5-1)^2 = .5 -> mean .32
    probs = [[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]]
    assert brier(probs, [0, 1]) == pytest.approx(0.32, abs=1e-15)
    assert brier(probs, [0, 1], weights=[3, 1]) == pytest.approx((3 * 0.14 + 0.5) / 4, abs=1e-15)


def test_brier_keeps_precision_for_confident_rows() -> None:
    eps = 1e-12
    # true score 2 eps^2 = 2e-24; expanding the square would leave ~1e-16 of rounding noise
    assert brier([[1 - eps, eps]], [0]) == pytest.approx(2 * eps**2, rel=1e-3)


def test_top_label_brier_hand() -> None:
    # (.9-1)^2 + (.6-0)^2 = .01 + .36 -> .185
    assert top_label_brier([0.9, 0.6], [1, 0]) == pytest.approx(0.185, abs=1e-15)
    assert top_label_brier([0.9, 0.6], [True, False]) == pytest.approx(0.185, abs=1e-15)


def test_nll_matches_sklearn_log_loss() -> None:
    p, y = _probs(1, 500, 5)
    assert nll(p, y) == pytest.approx(log_loss(y, p, labels=list(range(5))), abs=1e-12)


def test_nll_inputs_agree_and_logits_avoid_underflow() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=(50, 4)) * 3
    y = rng.integers(0, 4, size=50)
    want = float(np.mean(-log_softmax(z)[np.arange(50), y]))
    assert nll(z, y, kind="logits") == pytest.approx(want, abs=1e-14)
    assert nll(log_softmax(z), y, kind="log_probs") == pytest.approx(want, abs=1e-14)
    assert nll(softmax(z), y) == pytest.approx(want, abs=1e-12)
    # label logit 800 below the top: the probability underflows to 0 but the log-prob is exact
    z2 = np.array([[0.0, -800.0]])
    assert nll(z2, [1], kind="logits") == pytest.approx(800.0, rel=1e-15)
    assert math.isinf(nll(softmax(z2), [1]))


def test_nll_with_padding() -> None:
    z = np.array([[2.0, 1.0, -np.inf], [0.0, 0.0, 0.0]])
    y = np.array([1, 2])
    row0 = -(1.0 - math.log(math.exp(2.0) + math.exp(1.0)))
    row1 = math.log(3.0)
    assert nll(z, y, kind="logits") == pytest.approx((row0 + row1) / 2, abs=1e-15)
    assert nll(softmax(z), y) == pytest.approx((row0 + row1) / 2, abs=1e-14)


def test_accuracy_hand_and_ties() -> None:
    # argmax takes the first index on ties (like Scores.predictions)
    probs = [[0.5, 0.5], [0.2, 0.8], [0.6, 0.4]]
    assert accuracy(probs, [0, 1, 1]) == pytest.approx(2 / 3)
    assert accuracy(probs, [1, 1, 1]) == pytest.approx(1 / 3)
    assert accuracy(probs, [0, 1, 1], weights=[1, 0, 1]) == pytest.approx(0.5)


def test_validation_errors() -> None:
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.1"):
        brier([[0.5, 0.5]], [2])
    with pytest.raises(DataError, match="labels has 2 entries"):
        brier([[0.5, 0.5]], [0, 1])
    with pytest.raises(DataError, match="rows must sum to 1"):
        nll([[0.5, 0.6]], [0])
    with pytest.raises(DataError, match="log_probs row 0 is not normalised"):
        nll([[0.0, 0.0]], [0], kind="log_probs")
    with pytest.raises(DataError, match="NaN or \\+inf"):
        nll([[np.inf, 0.0]], [0], kind="logits")
    with pytest.raises(ConfigError, match="kind must be"):
        nll([[0.5, 0.5]], [0], kind="odds")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="integer class indices"):
        accuracy([[0.5, 0.5]], [0.5])
    with pytest.raises(DataError, match="2-D"):
        accuracy([0.5, 0.5], [0, 1])
