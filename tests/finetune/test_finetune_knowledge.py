"""SliCK-style knowledge labels (hand-made logits, then the tiny model), CogCalib's refresh
schedule, and the CFT template with its letter convention chosen by mass."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny import tiny_task

from cli_helpers import run
from llmcal.errors import ConfigError
from llmcal.finetune.knowledge import CATEGORIES, slick_categories
from llmcal.tasks.templates import get_template
from llmcal.tasks.types import Question

NEG = -50.0


def test_slick_categories_on_hand_made_logits() -> None:
    # 3 prompts × 5 questions × 3 options; gold = option 0 everywhere
    right = [5.0, 0.0, 0.0]  # greedy right
    wrong_close = [1.0, 1.2, NEG]  # greedy wrong, p(gold | T = .5) = 1 / (1 + e^.4) ≈ 0.40
    hopeless = [NEG, 5.0, 0.0]  # gold never drawn
    prompts = [
        [right, right, wrong_close, hopeless, right],
        [right, wrong_close, wrong_close, hopeless, hopeless],
        [right, wrong_close, wrong_close, hopeless, right],
    ]
    used = np.ones((3, 5), dtype=bool)
    used[1, 4] = False  # question 4 was an exemplar of prompt 1: greedy right on the others
    cats, greedy, sample = slick_categories(prompts, [0] * 5, used, samples=16, seed=0)
    assert cats == ["highly-known", "maybe-known", "weakly-known", "unknown", "highly-known"]
    assert greedy.tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.0, 1.0])
    assert sample[3] == 0.0 and 0 < sample[2] < 1
    # no sampling: greedy-never-right is unknown
    cats0, _, _ = slick_categories(prompts, [0] * 5, used, samples=0)
    assert cats0[2] == "unknown"
    # sampled accuracy → the exact probability at T = 0.5 with many samples
    _, _, many = slick_categories([[wrong_close]], [0], samples=20000, seed=1)
    assert many[0] == pytest.approx(1 / (1 + math.exp(0.4)), abs=0.01)
    with pytest.raises(ConfigError, match="exemplar in every prompt"):
        slick_categories(prompts, [0] * 5, np.zeros((3, 5), dtype=bool))


needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="needs PEFT (llmcal[train])"
)


def test_knowledge_labels_agree_with_direct_scoring(tiny_model: Path) -> None:
    from llmcal.finetune.knowledge import knowledge_labels
    from llmcal.models.hf import HFScorer

    task = tiny_task(9, "k", seed=3)
    scorer = HFScorer(str(tiny_model), device="cpu", progress=False)
    labels = knowledge_labels(scorer, task, n_prompts=3, shots=1, samples=8, seed=4)
    by_id = {q.id: q for q in task}
    hits = {q.id: [] for q in task}
    for shot_ids in labels.settings["shot_ids"]:
        assert len(shot_ids) == 1
        rest = type(task)(task.name, [q for q in task if q.id not in shot_ids])
        scores = scorer.score(rest, template="fewshot-1", shots=[by_id[i] for i in shot_ids])
        for qid, ok in zip(scores.ids, scores.correct(), strict=True):
            hits[str(qid)].append(bool(ok))
    for qid, cat, g in zip(labels.ids, labels.categories, labels.p_greedy, strict=True):
        assert g == pytest.approx(sum(hits[qid]) / len(hits[qid]))
        if all(hits[qid]):
            assert cat == "highly-known"
        elif any(hits[qid]):
            assert cat == "maybe-known"
        else:
            assert cat in ("weakly-known", "unknown")
    assert sum(labels.counts().values()) == 9 and set(labels.counts()) == set(CATEGORIES)
    assert labels.known() == {
        i: c == "highly-known" for i, c in zip(labels.ids, labels.categories, strict=True)
    }
    assert labels.summary_line().startswith("knowledge: known share ")


@needs_peft
def test_finetune_reports_knowledge(
    capsys: pytest.CaptureFixture[str], tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "tiny.jsonl"
    data.write_text("\n".join(json.dumps(q.to_dict()) for q in tiny_task(10, "d")) + "\n")
    out = tmp_path / "adapter"
    argv = ["finetune", "--model", str(tiny_model), "--task", str(data), "--out", str(out)]
    # 5 steps: the first logging window (every 5 steps) carries the per-group diagnostics
    argv += ["--max-steps", "5", "--batch-size", "4", "--device", "cpu", "--no-eval"]
    argv += ["--report-knowledge", "--knowledge-prompts", "2", "--knowledge-shots", "1"]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert "knowledge: known share" in stdout
    record = json.loads((out / "llmcal_finetune.json").read_text())
    k = record["knowledge"]
    assert sum(k["counts"].values()) == record["n_train"] == 8
    assert k["known_share"] == pytest.approx(k["counts"]["highly-known"] / 8)
    assert k["settings"]["n_prompts"] == 2 and len(k["questions"]) == 8
    # the labels tag the training batches for the per-group diagnostics
    logged = [h for h in record["diagnostics"] if "ref_known_acc" in h or "ref_unknown_acc" in h]
    assert logged


def _gate_steps(model: Path, tmp: Path, **settings: Any) -> list[float]:
    from llmcal.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        method="cogcalib-ls",
        max_steps=10,
        batch_size=2,
        style_steps=1,
        lora_r=2,
        logging_steps=10,
        **settings,
    )
    res = finetune(
        str(model),
        tiny_task(8, "t", seed=1),  # 4 steps per epoch
        cfg,
        tmp / "adapter",
        cal=tiny_task(6, "c", seed=2),
        progress=False,
        device="cpu",
        training_args={"save_strategy": "no"},
    )
    return [g["step"] for g in res.gate_history]


@needs_peft
def test_threshold_refresh_every_epoch_or_n_steps_whichever_first(
    tiny_model: Path, tmp_path: Path
) -> None:
    """cogcalib.md §3: "Threshold refresh | every 500 steps or every epoch, whichever is
    first". t0 after style adaptation (step 1), epochs end at steps 4 and 8 (of 10)."""
    # epochs first (the default 500-step cap is never reached)
    assert _gate_steps(tiny_model, tmp_path / "a") == [1.0, 4.0, 8.0]
    # a 3-step cap: 4 (3 since t0; the epoch end at 4 does not refit twice), 7, 8 (epoch end)
    assert _gate_steps(tiny_model, tmp_path / "b", refresh_max_steps=3) == [1.0, 4.0, 7.0, 8.0]
    # an explicit interval replaces the schedule
    assert _gate_steps(tiny_model, tmp_path / "c", refresh_every=3) == [1.0, 4.0, 7.0, 10.0]


def test_cft_template_text() -> None:
    """cft_rcft.md §4.1: "### Question: {U(x)}\\n ### Answer:{letter}", U(x) = "Question: …
    Options: A. … Answer with only a single letter:"."""
    q = Question("a", "2+2?", ("3", "4", "5", "6"), 1)
    bare, space = get_template("cft"), get_template("cft-space")
    text = bare.letter_prompt(q)
    assert text == (
        "### Question: Question: 2+2?\n\nOptions:\nA. 3\nB. 4\nC. 5\nD. 6\n\n"
        "Answer with only a single letter:\n ### Answer:"
    )
    assert space.letter_prompt(q) == text
    assert (bare.answer_sep, space.answer_sep, get_template("daca1").answer_sep) == ("", " ", " ")


def test_letter_variant_is_the_one_with_more_mass(tiny_model: Path) -> None:
    from llmcal.finetune.data import letter_mass, resolve_letter_template
    from llmcal.models.hf import HFScorer

    task = tiny_task(6, "m", seed=0)
    scorer = HFScorer(str(tiny_model), device="cpu", progress=False)
    masses = {}
    for kind, name in (("bare", "cft"), ("space", "cft-space")):
        tmpl = get_template(name)
        # by hand: full-vocabulary softmax after each prompt, mass on its letter tokens
        import torch

        ids = scorer.option_token_ids(
            scorer.render_letter(task[0], tmpl), tmpl.answer_sep, 4, False
        )
        total = 0.0
        for q in task:
            seq = scorer.encode(scorer.render_letter(q, tmpl), False)
            with torch.no_grad():
                logits = scorer.model(input_ids=torch.tensor([seq])).logits[0, -1].double()
            total += float(torch.softmax(logits, -1)[ids[: len(q.choices)]].sum())
        masses[kind] = total / len(task)
        assert letter_mass(scorer, task, tmpl) == pytest.approx(masses[kind], rel=1e-4)
    chosen, measured = resolve_letter_template(scorer, task, get_template("cft"), "auto")
    assert measured == pytest.approx(masses, rel=1e-4)
    assert chosen.name == ("cft" if masses["bare"] > masses["space"] else "cft-space")
    forced, none = resolve_letter_template(scorer, task, get_template("cft"), "space")
    assert forced.name == "cft-space" and none == {}
    daca, _ = resolve_letter_template(scorer, task, get_template("daca1"), "auto")
    assert daca.name == "daca1"
