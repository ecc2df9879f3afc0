"""``llmcal import openai``: saved chat / completions responses with top log-probs become Scores.

The fixture holds real responses of the llama.cpp server (tests/models' fixture server) on the
bundled SmolLM2, and the option logits llmcal's HTTPScorer computed from the same server at the
same time (tests/fixtures/openai/make_fixture.py), so the import is checked against the scorer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmcal.cli import main
from llmcal.errors import DataError
from llmcal.interop.openai import read_openai_responses
from llmcal.models.http import TOPK_FLOOR
from llmcal.scores import Scores
from llmcal.tasks.synthetic import synthetic_task

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openai"
EXPECTED = json.loads((FIXTURES / "scorer_logits.json").read_text())
TASK = synthetic_task(n=8, seed=11)  # the questions the fixture's responses answer


def rows(api: str) -> list[dict[str, Any]]:
    text = (FIXTURES / f"responses_{api}.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _write(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def _reference_row(top: dict[str, float], k: int) -> list[float]:
    """The documented mapping written out independently: strip space markers and punctuation,
    compare case-insensitively with the letter, add probabilities; missing → the floor."""
    out = []
    for letter in "ABCDEFGH"[:k]:
        ps = [
            math.exp(v)
            for t, v in top.items()
            if t.replace("Ġ", " ").replace("▁", " ").strip(" \t\r\n()[]{}.:,;*\"'").upper()
            == letter
        ]
        out.append(math.log(sum(ps)) if ps else TOPK_FLOOR)
    return out


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_import_equals_the_http_scorer_on_the_same_server(api: str) -> None:
    s = read_openai_responses(FIXTURES / f"responses_{api}.jsonl")
    exp = EXPECTED[api]
    assert s.ids.tolist() == exp["ids"] == TASK.ids
    np.testing.assert_array_equal(s.logits, np.array(exp["logits"]))  # same parsing, same numbers
    assert s.meta["topk"]["truncated"] == exp["truncated"]
    assert s.labels.tolist() == [q.answer for q in TASK]
    assert s.meta["api"] == api and s.meta["model"] == "smollm2"
    assert s.meta["logit_kind"] == "topk_logprobs" and s.meta["topk"]["floor"] == TOPK_FLOOR
    assert s.meta["topk"]["k"] == 20 and s.meta["mode"] == "letter"
    for i, r in enumerate(rows(api)):  # and the mapping itself, written out independently
        lp = r["response"]["choices"][0]["logprobs"]
        if api == "chat":
            top = {e["token"]: e["logprob"] for e in lp["content"][0]["top_logprobs"]}
        else:
            top = lp["top_logprobs"][0]
        np.testing.assert_allclose(s.logits[i], _reference_row(top, r["n_options"]), atol=1e-12)


def test_labels_and_option_counts_can_come_from_the_task(tmp_path: Path) -> None:
    bare = [{"id": r["id"], "response": r["response"]} for r in rows("chat")]
    s = read_openai_responses(_write(tmp_path / "r.jsonl", bare), task=TASK)
    assert s.labels.tolist() == [q.answer for q in TASK]
    assert s.meta["task"] == TASK.name
    np.testing.assert_array_equal(s.logits, np.array(EXPECTED["chat"]["logits"]))
    wrong = [{**bare[0], "label": (TASK[0].answer + 1) % len(TASK[0].choices)}]
    with pytest.raises(DataError, match="disagrees with the task's answer"):
        read_openai_responses(_write(tmp_path / "w.jsonl", wrong), task=TASK)
    with pytest.raises(DataError, match="has no question with this id"):
        read_openai_responses(_write(tmp_path / "x.jsonl", [{**bare[0], "id": "nope"}]), task=TASK)
    with pytest.raises(DataError, match="'n_options' must be an integer"):
        read_openai_responses(tmp_path / "r.jsonl")  # no task, no n_options


def test_batch_api_output_lines_and_letter_labels(tmp_path: Path) -> None:
    batch = [
        {"id": f"batch_req_{i}", "custom_id": r["id"], "error": None,
         "response": {"status_code": 200, "request_id": "x", "body": r["response"]},
         "n_options": r["n_options"], "label": "ABCD"[r["label"]]}
        for i, r in enumerate(rows("completions"))
    ]  # fmt: skip
    s = read_openai_responses(_write(tmp_path / "batch.jsonl", batch))
    assert s.ids.tolist() == EXPECTED["completions"]["ids"]
    np.testing.assert_array_equal(s.logits, np.array(EXPECTED["completions"]["logits"]))
    assert s.labels.tolist() == [q.answer for q in TASK]
    failed = [{**batch[0], "error": {"code": "x"}, "response": {"status_code": 500, "body": {}}}]
    with pytest.raises(DataError, match="failed \\(status 500"):
        read_openai_responses(_write(tmp_path / "f.jsonl", failed))
    # how the Batch API writes a request that never got a response
    expired = [{**batch[0], "error": {"code": "batch_expired"}, "response": None}]
    with pytest.raises(DataError, match=r"failed \(no response, error .*batch_expired"):
        read_openai_responses(_write(tmp_path / "e.jsonl", expired))


def test_bad_rows_name_the_line_and_the_fix(tmp_path: Path) -> None:
    r = rows("chat")[0]
    no_lp = json.loads(json.dumps(r))
    no_lp["response"]["choices"][0]["logprobs"] = None
    cases = [
        ([no_lp], "has no top log-probs; request them with logprobs=true"),
        ([{**r, "response": "text"}], "'response' must be the raw response body"),
        ([{**r, "id": None}], "'id' must be a non-empty string or integer"),
        ([{**r, "label": 7}], "label 7 is outside the 4 options"),
        ([{**r, "label": 1.5}], "must be an option index or letter"),
        ([r, r], "appears on more than one line"),
        ([{**r, "response": {"object": "x"}}], r"no choices\[0\]"),
        (
            [{**r, "response": {"error": {"message": "Rate limit reached", "type": "requests"}}}],
            r"the saved response is an API error \(Rate limit reached\); rerun that request",
        ),
    ]
    for i, (items, message) in enumerate(cases):
        with pytest.raises(DataError, match=message) as err:
            read_openai_responses(_write(tmp_path / f"c{i}.jsonl", items))
        assert f"c{i}.jsonl" in str(err.value)
    other = json.loads(json.dumps(r))
    other["response"]["model"] = "another-model"
    with pytest.raises(DataError, match="several models"):
        read_openai_responses(_write(tmp_path / "m.jsonl", [r, {**other, "id": "z"}]))


def test_cli_import_openai(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.parquet"
    src = FIXTURES / "responses_completions.jsonl"
    assert main(["import", "openai", str(src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "imported 8 questions (completions responses, top-20 log-probs): model smollm2" in text
    s = Scores.load(out)
    np.testing.assert_array_equal(s.logits, np.array(EXPECTED["completions"]["logits"]))
    assert main(["import", "openai", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 2
    assert "no such responses file" in capsys.readouterr().err
