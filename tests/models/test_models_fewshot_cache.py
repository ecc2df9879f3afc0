"""Five-shot MMLU: the per-subject few-shot prefix is run once and its KV cache reused.

Reference: every full prompt scored on its own by a plain forward pass (no cache, no batching).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llmcal import ConfigError, Question, Task
from llmcal.models import HFScorer, score_by_subject
from llmcal.tasks import get_template, load_task, subject_shots

pytestmark = pytest.mark.model

SUBJECTS = ("abstract_algebra", "high_school_biology")


@pytest.fixture(scope="module")
def mmlu_5shot(data_dir: Path) -> tuple[Task, dict[str, list[Question]]]:
    """2 subjects × 3 test questions and each subject's five dev-set shots."""
    test = load_task("mmlu", data_dir=data_dir)
    parts = [q for s in SUBJECTS for q in test.filter(s).questions[:3]]
    # interleave the subjects so the rows come back in task order, not subject order
    task = Task("mmlu", [parts[0], parts[3], parts[1], parts[4], parts[2], parts[5]])
    shots = subject_shots(load_task("mmlu_dev", data_dir=data_dir), k=5)
    return task, shots


def _full_logprobs(scorer: HFScorer, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        out = scorer.model(input_ids=torch.tensor([ids]))
    return torch.log_softmax(out.logits[0].double(), dim=-1)


def test_subject_shots_are_the_first_five_dev_questions(data_dir: Path) -> None:
    dev = load_task("mmlu_dev", data_dir=data_dir)
    shots = subject_shots(dev, k=5)
    assert len(shots) == 57
    first = [q.id for q in dev if q.subject == "abstract_algebra"][:5]
    assert [q.id for q in shots["abstract_algebra"]] == first
    with pytest.raises(ConfigError, match="fewer than 6"):
        subject_shots(dev, k=6)


@pytest.mark.parametrize("mode", ["letter", "cloze"])
def test_cached_fewshot_prefix_equals_each_full_prompt(
    smol: HFScorer, mmlu_5shot: tuple[Task, dict[str, list[Question]]], mode: str
) -> None:
    task, shots = mmlu_5shot
    tmpl = get_template("fewshot-5")
    old = smol.batch_size
    smol.batch_size = 2  # several batches per subject: the prefix cache is reused across them
    try:
        scores = score_by_subject(smol, task, shots, mode=mode, normalization="sum")
    finally:
        smol.batch_size = old
    assert scores.ids.tolist() == task.ids
    assert scores.meta["n_shots"] == 5
    assert scores.meta["shot_ids"]["abstract_algebra"][0] == "mmlu-dev-abstract_algebra-0000"
    ref = np.zeros((len(task), 4))
    for i, q in enumerate(task):
        subject_shots_ = shots[str(q.subject)]
        if mode == "letter":
            prompt = tmpl.letter_prompt(q, subject_shots_)
            ids = smol.tokenizer(prompt)["input_ids"]
            logits = _full_logprobs(smol, ids)[-1]  # log-softmax: centre both below
            letters = [smol.tokenizer(prompt + f" {c}")["input_ids"][-1] for c in "ABCD"]
            ref[i] = logits[letters].numpy()
        else:
            context, conts = tmpl.cloze(q, subject_shots_)
            assert context.count("\n\nQuestion:") == 5  # five solved examples, then q
            for j, cont in enumerate(conts):
                ctx_ids, cont_ids = smol.encode_cloze(context, cont, chat=False)
                logp = _full_logprobs(smol, ctx_ids + cont_ids)
                pos = range(len(ctx_ids) - 1, len(ctx_ids) + len(cont_ids) - 1)
                ref[i, j] = sum(float(logp[p, t]) for p, t in zip(pos, cont_ids, strict=True))
    got = scores.logits
    if mode == "letter":  # raw logits vs log-probs differ by one constant per row
        got, ref = got - got.mean(1, keepdims=True), ref - ref.mean(1, keepdims=True)
    # summed cloze log-likelihoods reach -40 and more: float32 rounding grows with the sum
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-5)
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_shared_prefix_covers_the_five_shots(
    smol: HFScorer, mmlu_5shot: tuple[Task, dict[str, list[Question]]]
) -> None:
    task, shots = mmlu_5shot
    sub = task.filter("abstract_algebra")
    tmpl = get_template("fewshot-5")
    encoded = [
        smol.encode(tmpl.letter_prompt(q, shots["abstract_algebra"]), chat=False) for q in sub
    ]
    prefix = smol._shared_prefix(encoded)
    shots_only = smol.encode(tmpl.letter_prompt(sub[0], shots["abstract_algebra"]), chat=False)
    question_len = len(smol.encode(tmpl.question_block(sub[0]), chat=False))
    assert prefix is not None
    # everything but the question's own block is computed once for the subject
    assert prefix.length >= len(shots_only) - question_len - 2


def test_per_subject_scoring_needs_every_subjects_shots(
    smol: HFScorer, mmlu_5shot: tuple[Task, dict[str, list[Question]]]
) -> None:
    task, shots = mmlu_5shot
    with pytest.raises(ConfigError, match="high_school_biology"):
        score_by_subject(smol, task, {"abstract_algebra": shots["abstract_algebra"]})
