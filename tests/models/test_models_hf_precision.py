"""Option logits are read in float32 whatever the weights' dtype; refused pickles are ModelErrors."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmcal.errors import ModelError
from llmcal.tasks import get_template, synthetic_task

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smol_bf16() -> Any:
    from llmcal.models import HFScorer

    return HFScorer(
        "smollm2-135m-instruct", dtype="bfloat16", device="cpu", batch_size=4, progress=False
    )


def test_bf16_weights_give_float32_option_logits_close_to_the_float32_model(
    smol: Any, smol_bf16: Any
) -> None:
    import torch

    task = synthetic_task(n=8, seed=3)
    ref = smol.score(task).logits  # float32 weights
    got = smol_bf16.score(task)
    assert got.meta["dtype"] == "bfloat16" and got.meta["head_dtype"] == "float32"
    # the naive read: the bf16 model's own lm-head output, one question at a time
    tmpl = get_template("daca1")
    naive = []
    for q in task:
        prompt = smol_bf16.render_letter(q, tmpl)
        ids = smol_bf16.encode(prompt, False)
        tok = smol_bf16.option_token_ids(prompt, tmpl.answer_sep, len(q.choices), False)
        with torch.inference_mode():
            out = smol_bf16.model(input_ids=torch.tensor([ids]))
        naive.append(out.logits[0, -1, tok].double().numpy())
    naive_arr = np.array(naive)
    on_grid = torch.tensor(got.logits).bfloat16().double().numpy() == got.logits
    assert on_grid.mean() < 0.2  # the float32 path is not a bf16 number rounded to 8 bits
    assert not np.array_equal(got.logits, naive_arr)

    # compared as the probabilities see them: each row centred (a shift of a whole row, which
    # bf16 weights cause by a CPU-dependent amount, changes no probability)
    def centred(z: np.ndarray) -> np.ndarray:
        return z - z.mean(axis=1, keepdims=True)

    err_f32 = np.abs(centred(got.logits) - centred(ref))
    err_naive = np.abs(centred(naive_arr) - centred(ref))
    assert err_f32.max() < 0.5
    assert err_f32.mean() < err_naive.mean()
    print(f"mean |error| vs float32 model: float32 head {err_f32.mean():.4f}, "
          f"bf16 read {err_naive.mean():.4f}")  # fmt: skip


def test_bf16_cloze_agrees_with_the_float32_model(smol: Any, smol_bf16: Any) -> None:
    task = synthetic_task(n=3, seed=4)
    ref = smol.score(task, mode="cloze").logits
    got = smol_bf16.score(task, mode="cloze").logits
    assert np.abs(got - ref).max() < 0.3


def test_pickled_weights_transformers_refuses_are_a_model_error(smol: Any, tmp_path: Path) -> None:
    from transformers import LlamaConfig

    model_dir = tmp_path / "pickled"
    model_dir.mkdir()
    smol.tokenizer.save_pretrained(model_dir)
    LlamaConfig(vocab_size=len(smol.tokenizer), hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                ).save_pretrained(model_dir)  # fmt: skip
    # a pickle that names a global torch.load(weights_only=True) does not allow
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Path("x")}))
    from llmcal.models import HFScorer

    with pytest.raises(ModelError, match="could not load model") as err:
        HFScorer(str(model_dir), device="cpu", progress=False)
    assert "\n" not in str(err.value)
    print(err.value)
