"""Cloze-mode fine-tuning: the trained option logits are ``llmcal score --mode cloze``'s numbers.

Each question becomes one row per option (context + continuation, left-padded in one batch);
an option's logit is its continuation's summed log-probability over the full vocabulary,
divided by 1, its token count or its character count. The hand computation below runs each
``context + option`` sequence alone, unpadded, in float64, independent of the trainer's batching.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny import logged_loss, tiny_task

from cli_helpers import run

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def hand(tiny_model: Path) -> dict[str, Any]:
    """Per question and option: summed log-prob, tokens, characters; gold-sequence token NLLs."""
    import torch

    from llmcal.models.hf import HFScorer
    from llmcal.tasks.templates import get_template

    train = tiny_task(8, "t", seed=1, varied=True)  # 3 / 4 options of 1–3 words
    scorer = HFScorer(str(tiny_model), device="cpu", progress=False)
    tmpl = get_template("daca1")
    rows = []
    for q in train:
        context, conts = tmpl.cloze(q)
        opts = []
        for cont in conts:
            whole = scorer.tokenizer(context + cont, add_special_tokens=True)["input_ids"]
            ctx = scorer.tokenizer(context, add_special_tokens=True)["input_ids"]
            with torch.no_grad():
                logits = scorer.model(input_ids=torch.tensor([whole])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            token_nll = [-float(logp[t - 1, whole[t]]) for t in range(1, len(whole))]
            n_cont = len(whole) - len(ctx)
            opts.append(
                {
                    "sum": -sum(token_nll[-n_cont:]),
                    "tokens": n_cont,
                    "chars": len(cont),
                    "nll": token_nll,
                }
            )
        rows.append({"q": q, "opts": opts})
    return {"train": train, "rows": rows, "scorer": scorer}


def _z(opts: list[dict[str, Any]], how: str) -> list[float]:
    div = {"sum": lambda o: 1, "mean": lambda o: o["tokens"], "char": lambda o: o["chars"]}[how]
    return [o["sum"] / div(o) for o in opts]


@pytest.mark.parametrize("how", ["sum", "mean", "char"])
def test_hand_option_logits_are_the_scorers_cloze_scores(hand: dict[str, Any], how: str) -> None:
    scores = hand["scorer"].score(hand["train"], mode="cloze", normalization=how)
    for r, row in enumerate(hand["rows"]):
        k = len(row["opts"])
        want = np.array(_z(row["opts"], how))
        got = scores.log_probs()[r, :k]
        np.testing.assert_allclose(got, want - np.logaddexp.reduce(want), rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["packed", "rows"])
def test_cloze_losses_match_the_hand_computation(
    tiny_model: Path, tmp_path: Path, hand: dict[str, Any], layout: str
) -> None:
    rows, train = hand["rows"], hand["train"]

    def option_ce(how: str) -> float:
        total = 0.0
        for row in rows:
            z = _z(row["opts"], how)
            total += -(z[row["q"].answer] - float(np.logaddexp.reduce(z)))
        return total / len(rows)

    gold = [row["opts"][row["q"].answer] for row in rows]
    completion = sum(-o["sum"] for o in gold) / sum(o["tokens"] for o in gold)
    every = [t for o in gold for t in o["nll"]]
    assert len({o["tokens"] for r in rows for o in r["opts"]}) > 1  # lengths differ: divisors bite
    want = {
        "sft-sum": ({"normalization": "sum"}, option_ce("sum")),
        "sft-mean": ({"normalization": "mean"}, option_ce("mean")),
        "sft-char": ({"normalization": "char"}, option_ce("char")),
        # CFT: completion-only SFT = the gold continuation's tokens
        "cft": ({"method": "cft"}, completion),
        # the full-sequence SFT of RCFT, on the gold rows only
        "full": ({"base_loss": "full"}, sum(every) / len(every)),
    }
    for name, (settings, value) in want.items():
        got = logged_loss(
            tiny_model, tmp_path / name, train, mode="cloze", cloze_layout=layout, **settings
        )
        assert got == pytest.approx(value, rel=2e-6), name
    assert option_ce("sum") != pytest.approx(option_ce("mean"), rel=1e-3)


def test_gradient_accumulation_is_exact_in_cloze_mode(tiny_model: Path, tmp_path: Path) -> None:
    """One step on 8 questions = 2 × 4 accumulated, for the gated, token and RCFT objectives."""
    from ddp_worker import run_layouts

    methods = ("cogcalib-ls-cloze", "cft-cloze", "rcft-cloze")
    got = run_layouts(str(tiny_model), tmp_path, [(8, 1), (2, 4)], methods, varied=True)
    for method in methods:
        one, acc = got[f"{method}/8x1"], got[f"{method}/2x4"]
        assert acc["loss"] == pytest.approx(one["loss"], rel=1e-6), method
        assert one["grads"].keys() == acc["grads"].keys() and one["grads"]
        for name, g in one["grads"].items():
            np.testing.assert_allclose(acc["grads"][name], g, rtol=0, atol=1e-6)
        assert max(max(map(abs, g)) for g in one["grads"].values()) > 1e-4, method
    assert got["cogcalib-ls-cloze/8x1"]["threshold"] == pytest.approx(
        got["cogcalib-ls-cloze/2x4"]["threshold"], abs=1e-6
    )
    e_steps = [got[f"rcft-cloze/{lay}"]["e_step"] for lay in ("8x1", "2x4")]
    assert e_steps[0][0]["counts"] == e_steps[1][0]["counts"]
    assert sum(e_steps[0][0]["counts"]) == 8 and math.isfinite(got["rcft-cloze/8x1"]["loss"])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(q.to_dict()) + "\n" for q in tiny_task(20, "d", 5, True)))
    return path


def test_cli_trains_evaluates_and_warns_about_the_scoring_mode(
    capsys: pytest.CaptureFixture[str], tiny_model: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    base = ["--model", str(tiny_model), "--task", str(data), "--device", "cpu"]
    code, stdout, err = run(
        capsys,
        *["finetune", *base, "--out", str(out), "--mode", "cloze", "--normalization", "sum"],
        *["--max-steps", "2", "--batch-size", "4", "--eval-limit", "4"],
    )
    assert code == 0, err
    summary = json.loads((out / "llmcal_finetune.json").read_text())
    assert summary["mode"] == "cloze" and summary["normalization"] == "sum"
    assert summary["option_ids"] is None and summary["config"]["mode"] == "cloze"
    assert "+ sft adapter" in stdout
    # the before / after table is scored in cloze mode: equal to a direct cloze score
    from llmcal.finetune.run import evaluation_metrics
    from llmcal.models.hf import HFScorer

    before = summary["evaluation"]["before"]
    scorer = HFScorer(str(tiny_model), device="cpu", progress=False)
    from llmcal.finetune.command import split_task
    from llmcal.tasks import load_task

    task = load_task(str(data))
    test = split_task(task.subset(len(task), seed=0), 0.0, 0.2, 0)["test"].subset(4, seed=0)
    direct = evaluation_metrics(scorer.score(test, mode="cloze", normalization="sum"))
    assert before["nll"] == pytest.approx(direct["nll"], rel=1e-9)

    scores = tmp_path / "s.parquet"
    score = ["score", *base, "--adapter", str(out), "--out", str(scores)]
    code, _, err = run(capsys, *score)
    assert code == 0, err
    assert "trained in cloze (sum) mode but is scored in letter mode" in err
    assert "--mode cloze --normalization sum" in err
    code, _, err = run(capsys, *score, "--mode", "cloze", "--normalization", "sum")
    assert code == 0 and "trained in" not in err


def test_layout_falls_back_to_rows_where_a_4d_mask_would_be_wrong() -> None:
    from types import SimpleNamespace

    from llmcal.finetune.data import cloze_layout

    examples = [{"context": [1] * 30, "options": [[2] * 5, [3] * 4]}]  # 39 packed tokens

    def model(attn: str, window: int | None) -> Any:
        return SimpleNamespace(
            config=SimpleNamespace(_attn_implementation=attn, sliding_window=window)
        )

    assert cloze_layout(model("sdpa", None), examples) == "packed"
    assert cloze_layout(model("eager", 64), examples) == "packed"
    assert cloze_layout(model("sdpa", 32), examples) == "rows"  # the window would be ignored
    assert cloze_layout(model("flash_attention_2", None), examples) == "rows"
    assert cloze_layout(model("flash_attention_2", None), examples, "packed") == "packed"
