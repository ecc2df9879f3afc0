"""``max_length``: prompts lose their start, keep their ``Answer:`` end, and the user is told."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from tiny import tiny_task

from llmcal.errors import LLMCalWarning


def _encoded(tiny_model: Path, max_length: int | None, cloze: bool) -> tuple[list, list[str]]:
    from llmcal.finetune.data import ClozeFormat, encode_cloze_task, encode_task, letter_format
    from llmcal.models.hf import HFScorer
    from llmcal.tasks.templates import get_template

    scorer = HFScorer(str(tiny_model), device="cpu", progress=False)
    task, template = tiny_task(12, varied=True), get_template("daca1")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        if cloze:
            fmt = ClozeFormat(template, "mean", task.max_choices)
            rows = encode_cloze_task(scorer, task, fmt, max_length, what="cal")
        else:
            rows = encode_task(scorer, task, letter_format(scorer, task, template), max_length)
    return rows, [str(w.message) for w in seen if issubclass(w.category, LLMCalWarning)]


@pytest.mark.parametrize("cloze", [False, True], ids=["letter", "cloze"])
def test_truncation_keeps_the_end_and_warns_with_the_count(tiny_model: Path, cloze: bool) -> None:
    full, quiet = _encoded(tiny_model, None, cloze)
    assert quiet == []
    key = "context" if cloze else "input_ids"
    lengths = sorted(len(r[key]) for r in full)
    limit = lengths[len(lengths) // 2] + (max(len(o) for o in full[0]["options"]) if cloze else 0)
    cut, said = _encoded(tiny_model, limit, cloze)
    n_cut = 0
    for a, b in zip(full, cut, strict=True):
        assert a[key][-len(b[key]) :] == b[key]  # a suffix: the answer end is kept
        n_cut += len(b[key]) < len(a[key])
        if cloze:
            assert b["options"] == a["options"] and b["divisor"] == a["divisor"]
            assert len(b["context"]) + max(map(len, b["options"])) <= limit
        else:
            assert len(b["input_ids"]) <= limit and b["input_ids"][-1] == a["input_ids"][-1]
    assert 0 < n_cut < len(full)
    what = "cal" if cloze else "training"
    assert said == [
        f"--max-length {limit} cut the start off {n_cut} of {len(full)} {what} prompts "
        "(the model does not see their whole question); raise it to keep them"
    ]
