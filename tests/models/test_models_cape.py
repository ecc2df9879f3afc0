"""CAPE permutation ensembles: mapping back to the original options, and a real-model run."""

from __future__ import annotations

from collections.abc import Sequence
from math import factorial

import numpy as np
import pytest

from llmcal import ConfigError, Question, Scores, Task
from llmcal.models import build_scores
from llmcal.models.cape import option_permutations, permute_question, score_cape
from llmcal.scores import softmax

QS = [
    Question("a", "pick", ("w", "x", "y", "z"), answer=2),
    Question("b", "pick", ("p", "q"), answer=0),
    Question("c", "pick", ("r", "s", "t"), answer=None),
]


class BiasedScorer:
    """Letter logits = content score of the option text + a bias for the slot it is shown in."""

    name = "biased"

    def __init__(self, content: dict[str, float], slot_bias: Sequence[float]) -> None:
        self.content, self.slot_bias = content, slot_bias
        self.calls = 0

    def score(self, task: Task, **kwargs: object) -> Scores:
        self.calls += 1
        rows = [
            [self.content[c] + self.slot_bias[j] for j, c in enumerate(q.choices)] for q in task
        ]
        return build_scores(task, rows, {"model": self.name, "mode": "letter"})


CONTENT = {"w": 0.0, "x": 1.0, "y": 2.0, "z": 0.5, "p": 1.0, "q": 0.0, "r": 0.3, "s": 0.0, "t": 0.9}


def test_cyclic_cape_averages_mapped_back_probabilities() -> None:
    bias = [3.0, 0.0, -1.0, 0.5]
    scorer = BiasedScorer(CONTENT, bias)
    out = score_cape(scorer, Task("t", QS))
    assert scorer.calls == 4  # the largest question has 4 cyclic shifts
    for i, q in enumerate(QS):
        k = len(q.choices)
        # by hand: shift s shows original option (j + s) % k in slot j
        expected = np.zeros(k)
        for s in range(k):
            shown = [(j + s) % k for j in range(k)]
            logits = [CONTENT[q.choices[o]] + bias[j] for j, o in enumerate(shown)]
            p = softmax(np.array(logits))
            for j, o in enumerate(shown):
                expected[o] += p[j] / k
        np.testing.assert_allclose(out.probs()[i, :k], expected, rtol=1e-12)
    assert out.labels.tolist() == [2, 0, -1]
    assert out.meta["logit_kind"] == "probs_log" and out.meta["cape"]["rounds"] == 4


def test_cape_removes_a_pure_position_bias() -> None:
    # every option has the same content score: a cyclic ensemble must give exactly uniform probs
    flat = dict.fromkeys(CONTENT, 1.0)
    out = score_cape(BiasedScorer(flat, [2.0, -1.0, 0.3, 0.0]), Task("t", QS))
    for i, q in enumerate(QS):
        np.testing.assert_allclose(out.probs()[i, : len(q.choices)], 1 / len(q.choices), rtol=1e-12)


def test_permutation_sets() -> None:
    assert option_permutations(3) == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    assert len(option_permutations(4, "all", cap=100)) == factorial(4)
    sample = option_permutations(5, "all", cap=10, seed=1)
    assert len(sample) == 10 and len(set(sample)) == 10 and sample[0] == (0, 1, 2, 3, 4)
    assert sample == option_permutations(5, "all", cap=10, seed=1)
    q = permute_question(QS[0], (3, 0, 1, 2))
    assert q.choices == ("z", "w", "x", "y") and q.choices[q.answer] == "y"  # type: ignore[index]
    with pytest.raises(ConfigError, match="letter"):
        score_cape(BiasedScorer(CONTENT, [0, 0, 0, 0]), Task("t", QS), mode="cloze")


@pytest.mark.model
def test_cape_with_the_bundled_model(smol) -> None:  # type: ignore[no-untyped-def]
    task = Task("t", QS[:2])
    out = score_cape(smol, task, mode="letter")
    q = QS[0]
    expected = np.zeros(4)
    for perm in option_permutations(4):
        p = smol.score(Task("t", [permute_question(q, perm)])).probs()[0]
        expected[list(perm)] += p / 4
    np.testing.assert_allclose(out.probs()[0], expected, atol=1e-5)
    assert not np.allclose(out.probs()[0], smol.score(task).probs()[0], atol=1e-3)


def test_common_prefix_len() -> None:
    from llmcal.models.hf import _common_prefix_len

    assert _common_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert _common_prefix_len([[1, 2, 3], [1, 2, 3]], keep_last=1) == 2  # a suffix stays
    assert _common_prefix_len([[7, 1], [8, 1]]) == 0


MIXED = [
    Question(
        "m4", "Which gas do plants take in?", ("oxygen", "carbon dioxide", "helium", "neon"), 1
    ),
    Question("m2", "Is ice cold?", ("no", "yes"), 1, context="Ice is frozen water at 0 C."),
    Question("m3", "2 + 2 =", ("3", "4", "22"), 1),
    Question("m4b", "Pick the colour.", ("red", "dog", "run", "seven"), 0),
]


@pytest.mark.model
def test_score_permuted_equals_scoring_each_ordering(smol) -> None:  # type: ignore[no-untyped-def]
    # one batch of prefixes of different lengths, 2-4 orderings each, one question with a
    # passage: every round must equal scoring the permuted questions the ordinary way
    task = Task("mixed", MIXED)
    orders = [option_permutations(len(q.choices)) for q in MIXED]
    smol.batch_size = 8
    try:
        rounds = smol.score_permuted(task, orders)
    finally:
        smol.batch_size = 4
    assert len(rounds) == 4
    for r, got in enumerate(rounds):
        qs = [permute_question(q, o[r]) for q, o in zip(MIXED, orders, strict=True) if r < len(o)]
        want = smol.score(Task("mixed", qs))
        assert got.ids.tolist() == want.ids.tolist() and got.labels.tolist() == want.labels.tolist()
        np.testing.assert_allclose(got.logits, want.logits, atol=1e-4)
        drop = ("created", "batch_size")
        assert {k: v for k, v in got.meta.items() if k not in drop} == {
            k: v for k, v in want.meta.items() if k not in drop
        }
    with pytest.raises(ConfigError, match="letter"):
        smol.score_permuted(task, orders, mode="cloze")
