"""HFScorer on the real bundled models: option tokens, hand-computed logits, batching, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcal import ModelError, Question, Task
from llmcal.errors import ConfigError
from llmcal.models import HFScorer, resolve_model
from llmcal.models.hf import converted_dir, quiet_peft
from llmcal.tasks import get_template

pytestmark = pytest.mark.model

QUESTIONS = [
    Question("q1", "What is 2 + 3?", ("4", "5", "6", "7"), answer=1),
    Question("q2", "Which animal barks?", ("cat", "dog"), answer=1),
    Question(
        "q3",
        "Which of these is the largest planet in the solar system, by both mass and diameter?",
        ("Mercury", "Venus", "Jupiter", "Mars", "Earth"),
        answer=2,
    ),
    Question("q4", "Is ice cold?", ("no", "yes"), answer=1, context="Ice is frozen water."),
    Question("q5", "Unlabelled: pick one.", ("red", "green", "blue")),
]
TASK = Task("mini", QUESTIONS)


def _next_token_logits(scorer: HFScorer, text: str, special: bool = True) -> torch.Tensor:
    ids = scorer.tokenizer(text, add_special_tokens=special, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return scorer.model(input_ids=ids).logits[0, -1].double()


def test_letter_logits_equal_a_plain_forward_pass(smol: HFScorer) -> None:
    scores = smol.score(TASK, mode="letter", template="daca1")
    tokens = scores.meta["option_tokens"]
    ids = [tokens[letter]["id"] for letter in "ABCDE"]
    assert len(set(ids)) == 5
    # SmolLM2's BPE encodes " A" (with the space after "Answer:") as a single token
    assert smol.tokenizer.decode([ids[0]]) == " A"
    for i, q in enumerate(QUESTIONS):
        prompt = get_template("daca1").letter_prompt(q)
        ref = _next_token_logits(smol, prompt)[ids[: len(q.choices)]].numpy()
        np.testing.assert_allclose(scores.logits[i, : len(q.choices)], ref, atol=1e-4)
        assert np.isneginf(scores.logits[i, len(q.choices) :]).all()
    assert scores.labels.tolist() == [1, 1, 2, 1, -1]
    assert scores.meta["mode"] == "letter" and scores.meta["template"] == "daca1"
    assert scores.meta["logit_kind"] == "logits" and scores.meta["backend"] == "hf"


@pytest.mark.parametrize("mode", ["letter", "cloze"])
def test_batched_equals_unbatched(smol: HFScorer, mode: str) -> None:
    smol.batch_size = 1
    try:
        one = smol.score(TASK, mode=mode, normalization="sum")
    finally:
        smol.batch_size = 16
    try:
        many = smol.score(TASK, mode=mode, normalization="sum")
    finally:
        smol.batch_size = 4
    assert one.ids.tolist() == many.ids.tolist()
    assert one.equals(many, atol=1e-4)


def test_cloze_is_the_continuation_log_likelihood(smol: HFScorer) -> None:
    q = QUESTIONS[0]
    context, conts = get_template("daca1").cloze(q)
    by_norm = {
        n: smol.score(Task("one", [q]), mode="cloze", normalization=n)
        for n in ("sum", "mean", "char")
    }
    for j, cont in enumerate(conts):
        ctx_ids = smol.tokenizer(context)["input_ids"]
        whole = smol.tokenizer(context + cont)["input_ids"]
        cont_ids = whole[len(ctx_ids) :]
        with torch.inference_mode():
            logp = torch.log_softmax(
                smol.model(input_ids=torch.tensor([whole])).logits[0].double(), -1
            )
        total = sum(float(logp[len(ctx_ids) - 1 + t, tok]) for t, tok in enumerate(cont_ids))
        assert by_norm["sum"].logits[0, j] == pytest.approx(total, abs=1e-3)
        assert by_norm["mean"].logits[0, j] == pytest.approx(total / len(cont_ids), abs=1e-3)
        assert by_norm["char"].logits[0, j] == pytest.approx(total / len(cont), abs=1e-3)
    assert by_norm["sum"].meta["logit_kind"] == "loglikelihood"
    assert by_norm["mean"].meta["normalization"] == "mean"


@pytest.mark.parametrize("fixture", ["smol", "gemma"])
def test_cloze_with_shared_context_cache_equals_separate_sequences(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    # one batch holding contexts of different lengths and 2-5 options of 1+ tokens: the KV
    # cache of each left-padded context is repeated per option and continued; every option
    # must score what its full sequence scores alone, without padding or cache
    scorer: HFScorer = request.getfixturevalue(fixture)
    scorer.batch_size = 16
    try:
        got = scorer.score(TASK, mode="cloze", normalization="sum")
    finally:
        scorer.batch_size = 4
    tmpl = get_template("daca1")
    for i in (0, 2, 3):  # 4, 5 and 2 options, one with a passage
        q = QUESTIONS[i]
        context, conts = tmpl.cloze(q)
        for j, cont in enumerate(conts):
            ctx, tail = scorer.encode_cloze(context, cont, chat=False)
            with torch.inference_mode():
                out = scorer.model(input_ids=torch.tensor([ctx + tail])).logits[0].double()
            logp = torch.log_softmax(out, -1)
            want = sum(float(logp[len(ctx) - 1 + t, tok]) for t, tok in enumerate(tail))
            assert got.logits[i, j] == pytest.approx(want, abs=1e-3), (q.id, cont)


def test_chat_template_prompt(smol: HFScorer) -> None:
    scores = smol.score(Task("two", QUESTIONS[:2]), template="chat")
    prompt = scores.meta["example_prompt"]
    assert "<|im_start|>user" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert "Answer:" not in prompt
    # after the assistant header the option token is the bare letter
    assert smol.tokenizer.decode([scores.meta["option_tokens"]["A"]["id"]]) == "A"


def test_gemma_tokens_and_no_chat_template(gemma: HFScorer) -> None:
    scores = gemma.score(Task("two", QUESTIONS[:2]))
    assert [scores.meta["option_tokens"][c]["token"] for c in "ABCD"] == ["▁A", "▁B", "▁C", "▁D"]
    assert np.isfinite(scores.logits[0]).all()
    with pytest.raises(ModelError, match="no chat template"):
        gemma.score(Task("two", QUESTIONS[:2]), template="chat")


def test_local_directory_loads_identically(smol: HFScorer) -> None:
    local = converted_dir(resolve_model("smollm2-135m-instruct").location_path)
    assert (local / "config.json").is_file()
    scorer = HFScorer(str(local), progress=False, batch_size=smol.batch_size)
    assert scorer.source.kind == "directory"
    a = smol.score(TASK)
    b = scorer.score(TASK)
    assert np.array_equal(a.logits, b.logits)


def test_adapter_changes_scores_like_peft(smol: HFScorer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    peft = pytest.importorskip("peft")
    local = converted_dir(resolve_model("smollm2-135m-instruct").location_path)
    scorer = HFScorer(str(local), progress=False)
    cfg = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    torch.manual_seed(0)
    with quiet_peft():  # the reference's own PEFT call
        pm = peft.get_peft_model(scorer.model, cfg)
    pm.save_pretrained(tmp_path / "adapter")
    prompt = get_template("daca1").letter_prompt(QUESTIONS[0])
    ids = scorer.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        ref = pm(input_ids=ids).logits[0, -1].double()
    adapted = HFScorer(str(local), adapter=tmp_path / "adapter", progress=False)
    scores = adapted.score(Task("one", QUESTIONS[:1]))
    tok = [scores.meta["option_tokens"][c]["id"] for c in "ABCD"]
    np.testing.assert_allclose(scores.logits[0], ref[tok].numpy(), atol=1e-3)
    base = smol.score(Task("one", QUESTIONS[:1]))
    assert np.abs(base.logits[0] - scores.logits[0]).max() > 1e-3
    assert scores.meta["adapter"] == str(tmp_path / "adapter")


def test_model_resolution_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert resolve_model("smollm2-135m-instruct").kind == "alias"
    assert resolve_model("org/some-model").kind == "hub"
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match=r"no config\.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="network access"):
        HFScorer("llmcal-test/definitely-not-a-model", progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        HFScorer("smollm2-135m-instruct", batch_size=0)


def test_bad_mode_and_empty_task(smol: HFScorer) -> None:
    with pytest.raises(ConfigError, match="scoring mode"):
        smol.score(TASK, mode="generate")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no questions"):
        smol.score(Task("empty", []))
