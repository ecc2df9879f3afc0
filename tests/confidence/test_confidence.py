"""Confidence methods → answer-view Scores; the calibrators and DACA on that view."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from llmcal.answers import Answers
from llmcal.calibrate import (
    DACA,
    HistogramBinning,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
)
from llmcal.confidence import (
    confidence,
    consistency,
    parse_probability,
    ptrue_task,
    seqlik,
)
from llmcal.errors import CalibrationError, ConfigError, ScoresError
from llmcal.metrics import evaluate
from llmcal.scores import Scores


def answers(n: int = 4, samples: tuple[tuple[str, ...], ...] = ()) -> Answers:
    texts = ("Paris", "Lyon", "Rome", "")[:n]
    return Answers(
        ids=tuple(f"q{i}" for i in range(n)),
        questions=tuple(f"Capital {i}?" for i in range(n)),
        references=(("Paris",),) * n,
        prompts=("p",) * n,
        texts=texts,
        token_ids=((1, 2), (3,), (4, 5, 6), (2,))[:n],
        token_logprobs=((-0.2, -0.4), (-1.0,), (-0.1, -0.2, -0.3), (-3.0,))[:n],
        stop_reasons=("newline", "eos", "length", "eos")[:n],
        correct=np.array([1, 0, 0, 0][:n]),
        samples=samples,
        meta={"model": "gen", "task": "t", "judge": {"kind": "matcher", "matcher": "exact"}},
    )


def test_seqlik_mean_and_total_by_hand() -> None:
    a = answers()
    mean = seqlik(a, "mean")
    total = seqlik(a, "total")
    assert mean.view == "answer" and mean.k == 2
    assert np.allclose(mean.confidences(), np.exp([-0.3, -1.0, -0.2, -3.0]))
    assert np.allclose(total.confidences(), np.exp([-0.6, -1.0, -0.6, -3.0]))
    assert total.correct().tolist() == [True, False, False, False]
    assert np.allclose(mean.probs().sum(axis=1), 1.0)
    assert mean.meta["confidence"]["method"] == "seqlik" and mean.meta["task"] == "t"
    assert mean.meta["judge"]["matcher"] == "exact"


def test_seqlik_needs_token_logprobs() -> None:
    a = answers().replace(token_ids=((),) * 4, token_logprobs=((), (-1.0,), (-1.0,), (-1.0,)))
    with pytest.raises(ScoresError, match="1 answers have none"):
        seqlik(a)


def test_consistency_is_the_share_of_matching_samples() -> None:
    a = answers(3, samples=(("paris", "Paris.", "Lyon"), ("Rome", "Rome", "Nice"), ("", "", "")))
    s = consistency(a, "exact")
    # clipped away from 0 and 1 so both logits stay finite
    assert np.allclose(s.confidences(), [2 / 3, 0.0 + 1e-6, 1e-6], atol=1e-12)
    assert np.isfinite(s.logits).all() and s.meta["confidence"]["n_samples"] == 3
    with pytest.raises(ConfigError, match="--samples"):
        consistency(answers())


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("85%", 0.85), ("0.85", 0.85), ("85", 0.85), (" 100 %", 1.0), ("1", 1.0), ("0", 0.0),
     ("about .3", 0.3), ("I think 7 % maybe", 0.07), ("150", None), ("no idea", None)],
)  # fmt: skip
def test_parse_probability(reply: str, expected: float | None) -> None:
    got = parse_probability(reply)
    assert got == (None if expected is None else pytest.approx(expected))


class _Replies:
    """A stand-in generator that replays fixed replies (the verbal method's only input)."""

    name = "replayer"

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.prompts: list[str] = []

    def complete(self, prompts: list[str], config: object) -> list[str]:
        self.prompts = list(prompts)
        return self.replies


def test_verbal_counts_unparseable_replies() -> None:
    gen = _Replies(["90%", "no clue", "0.2", "banana"])
    s = confidence("verbal", answers(), generator=gen)
    assert np.allclose(s.confidences(), [0.9, 0.5, 0.2, 0.5])
    info = s.meta["confidence"]
    assert info["unparseable"] == 2 and info["unparseable_ids"] == ["q1", "q3"]
    assert "Proposed answer: Paris" in gen.prompts[0]
    assert "Proposed answer: (no answer)" in gen.prompts[3]


def test_ptrue_task_is_a_true_false_question() -> None:
    task = ptrue_task(answers())
    q = task[0]
    assert q.choices == ("True", "False") and q.answer is None
    assert "Proposed answer: Paris" in q.question and q.id == "q0"


def test_methods_need_their_model() -> None:
    with pytest.raises(ConfigError, match="needs --model"):
        confidence("ptrue", answers())
    with pytest.raises(ConfigError, match="unknown confidence method"):
        confidence("vibes", answers())


def test_evaluate_reads_the_answer_view() -> None:
    s = seqlik(answers())
    r = evaluate(s, ci=False)
    assert r["view"] == "answer" and r["accuracy"] == pytest.approx(0.25)
    assert r["mean_confidence"] == pytest.approx(np.exp([-0.3, -1.0, -0.2, -3.0]).mean())


# -- calibrators on the answer view ---------------------------------------------------------
def random_answer_scores(n: int = 400, seed: int = 0) -> Scores:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    y = (rng.uniform(size=n) < p**2).astype(int)  # over-confident: truth is p²
    return Scores.from_confidence(p, y, meta={"model": "m"})


def test_isotonic_maps_p_true_like_sklearn() -> None:
    s = random_answer_scores()
    p, y = s.confidences(), s.labels
    out = IsotonicCalibration().fit(s).transform(s)
    ref = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y).predict(p)
    # p(True) → calibrated p(True), not max(p, 1 - p)
    assert np.allclose(out.confidences(), np.clip(ref, 2**-53, 1 - 2**-53), atol=1e-9)
    assert out.view == "answer" and np.isfinite(out.logits).all()


def test_histogram_bins_hold_the_share_of_right_answers() -> None:
    s = random_answer_scores()
    out = HistogramBinning(n_bins=5).fit(s).transform(s)
    p, y = s.confidences(), s.labels
    for lo in np.linspace(0, 0.8, 5):
        inside = (p >= lo) & (p < lo + 0.2)
        assert np.allclose(out.confidences()[inside], y[inside].mean())


def test_platt_on_answer_view_equals_logistic_regression() -> None:
    s = random_answer_scores()
    logit = np.log(s.confidences()) - np.log1p(-s.confidences())
    lr = LogisticRegression(C=1e12, tol=1e-12, max_iter=10_000).fit(logit[:, None], s.labels)
    out = PlattScaling().fit(s).transform(s)
    assert np.allclose(out.confidences(), lr.predict_proba(logit[:, None])[:, 1], atol=1e-6)


def test_temperature_scaling_lowers_the_answer_view_ece() -> None:
    s = random_answer_scores()
    out = TemperatureScaling().fit(s).transform(s)
    assert evaluate(out, ci=False)["ece"] < evaluate(s, ci=False)["ece"]


def test_calibrators_refuse_the_other_view() -> None:
    s = random_answer_scores()
    cal = IsotonicCalibration().fit(s)
    with pytest.raises(CalibrationError, match="fitted on answer-view"):
        cal.transform(s.as_options())


def test_daca_on_answer_view_recovers_a_scaled_copy() -> None:
    rng = np.random.default_rng(1)
    z_ref = rng.normal(0, 1.5, (300, 2))
    ids = [f"q{i}" for i in range(300)]
    reference = Scores(np.array(ids, dtype=object), z_ref, np.full(300, -1), {"view": "answer"})
    target = Scores(np.array(ids, dtype=object), 3.0 * z_ref, np.full(300, -1), {"view": "answer"})
    daca = DACA().fit(target=target, reference=reference)
    assert daca.temperature == pytest.approx(3.0, rel=1e-4)
    out = daca.transform(target)
    assert out.view == "answer" and np.allclose(out.probs(), reference.probs(), atol=1e-4)
    with pytest.raises(CalibrationError, match="same view"):
        DACA().fit(target=target, reference=reference.as_options())
    naive = DACA(mask="none").fit(target=target, reference=reference)
    assert math.isfinite(naive.temperature)


def test_platt_on_answers_of_one_class_says_so() -> None:
    s = Scores.from_confidence([0.2, 0.7, 0.9], [0, 0, 0])
    with pytest.raises(CalibrationError, match="all 3 calibration answers are wrong"):
        PlattScaling().fit(s)
