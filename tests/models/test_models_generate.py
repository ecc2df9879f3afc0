"""Generation: greedy output equals model.generate token for token; samples, stops, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmcal.errors import ConfigError
from llmcal.models.checkpoint import ChunkedRun, checkpoint_path
from llmcal.models.generate import (
    GenerationConfig,
    HFGenerator,
    find_stop,
    generate_answers,
    open_prompt,
)
from llmcal.tasks import synthetic_open_task


def test_find_stop_skips_a_leading_newline() -> None:
    assert find_stop("\n Paris\nRome", (), True) == (7, "newline")
    assert find_stop(" Paris", (), True) is None
    assert find_stop(" Paris. Rome", (".",), True) == (6, "stop")
    assert find_stop(" Paris\n", (), False) is None


def test_generation_config_is_validated() -> None:
    for bad in ({"max_new_tokens": 0}, {"temperature": -1.0}, {"samples": -1},
                {"stop": ("",)}, {"template": "nope"}):  # fmt: skip
        with pytest.raises(ConfigError):
            GenerationConfig(**bad)  # type: ignore[arg-type]


def test_chunked_run_resumes_and_refuses_other_settings(tmp_path: Path) -> None:
    out = tmp_path / "a.parquet"
    ids = [f"q{i}" for i in range(5)]
    calls: list[tuple[int, int]] = []

    def compute(a: int, b: int) -> tuple[list[Any], dict[str, Any]]:
        calls.append((a, b))
        if a == 4 and len(calls) == 3:
            raise KeyboardInterrupt  # killed during the last chunk
        return [{"i": i, "x": i / 3} for i in range(a, b)], {"chunk_meta": a}

    run = ChunkedRun(checkpoint_path(out), {"what": "t"}, ids, chunk_size=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run.run(compute)
    run2 = ChunkedRun(checkpoint_path(out), {"what": "t"}, ids, chunk_size=2, progress=False)
    rows, meta, created = run2.run(compute)
    assert calls == [(0, 2), (2, 4), (4, 5), (4, 5)]  # only the missing chunk is recomputed
    assert run2.resumed_rows == 4 and run2.computed_rows == 1
    assert [r["i"] for r in rows] == list(range(5)) and rows[1]["x"] == 1 / 3
    assert meta == {"chunk_meta": 0} and created
    other = ChunkedRun(checkpoint_path(out), {"what": "other"}, ids, chunk_size=2)
    with pytest.raises(ConfigError, match="other settings"):
        other.run(compute)
    moved = ChunkedRun(checkpoint_path(out), {"what": "t"}, ids[::-1], chunk_size=2)
    with pytest.raises(ConfigError):  # the ids hash is part of the key
        moved.run(compute)


@pytest.mark.model
def test_greedy_equals_model_generate_token_for_token(smol: Any) -> None:
    import torch

    gen = HFGenerator(smol)
    task = synthetic_open_task(n=4, seed=0)
    shots, rest = task.shots_split(1, seed=0)
    prompts = [open_prompt(q, shots) for q in rest]
    encoded = [smol.encode(p, False) for p in prompts]
    cfg = GenerationConfig(max_new_tokens=6, stop_at_newline=False)
    batched = gen.generate_ids(encoded, cfg, [None] * len(encoded), 0.0)  # shared prefix path
    for ids, mine in zip(encoded, batched, strict=True):
        ref = smol.model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=6,
            pad_token_id=smol.tokenizer.pad_token_id,
        )[0, len(ids) :].tolist()
        assert mine.token_ids == ref
        logits = smol.model(torch.tensor([ids + ref[:-1]])).logits[0, len(ids) - 1 :].double()
        lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ref)[:, None])[:, 0]
        assert np.allclose(mine.token_logprobs, lp.tolist(), atol=2e-4)


@pytest.mark.model
def test_answers_samples_and_resume(smol: Any, tmp_path: Path) -> None:
    gen = HFGenerator(smol)
    task = synthetic_open_task(n=3, seed=2)
    cfg = GenerationConfig(max_new_tokens=4, samples=2, seed=5)
    out = tmp_path / "ans.parquet"
    a, counts = generate_answers(gen, task, cfg, out=out, chunk_size=2, progress=False)
    assert counts == {"resumed": 0, "generated": 3} and checkpoint_path(out).is_file()
    assert a.n_samples == 2 and all(len(s) == 2 for s in a.sample_logprobs)
    assert set(a.stop_reasons) <= {"eos", "newline", "length"}
    assert all(len(t) <= 4 for t in a.token_ids) and (a.correct == -1).all()
    assert a.meta["generation"]["samples"] == 2 and a.meta["backend"] == "hf"
    again, counts = generate_answers(gen, task, cfg, out=out, chunk_size=2, progress=False)
    assert counts == {"resumed": 3, "generated": 0}
    assert again.texts == a.texts and again.samples == a.samples
    # samples depend on the seed, question and index only, not on the batch they ran in
    smol.batch_size, old = 1, smol.batch_size
    try:
        alone, _ = generate_answers(gen, task[:1], cfg, progress=False)
    finally:
        smol.batch_size = old
    assert alone.samples[0] == a.samples[0] and alone.texts[0] == a.texts[0]
