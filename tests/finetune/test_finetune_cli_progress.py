"""``llmcal finetune`` says what it is doing: the plan, step / gating / evaluation progress lines,
and an evaluation that can be sized (``--eval-limit``) or skipped (``--no-eval``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tiny import tiny_task

from cli_helpers import run

pytest.importorskip("peft")


def test_finetune_progress_eval_limit_and_no_eval(
    capsys: pytest.CaptureFixture[str], tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(q.to_dict()) + "\n" for q in tiny_task(40, "p", seed=3)))
    base = [
        *["finetune", "--model", str(tiny_model), "--task", str(data), "--batch-size", "4"],
        *["--device", "cpu", "--method", "cogcalib-ls", "--max-steps", "2"],
        *["--test-fraction", "0.25"],
    ]
    out = tmp_path / "adapter"
    code, stdout, err = run(capsys, *base, "--eval-limit", "4", "--out-dir", str(out))
    assert code == 0, err
    assert "test 10; then a before / after evaluation on 4 test questions" in stdout
    summary = json.loads((out / "llmcal_finetune.json").read_text())
    assert summary["evaluation"]["before"]["n"] == 4 == summary["evaluation"]["after"]["n"]
    lines = err.splitlines()
    model = str(tiny_model)
    assert any(
        re.fullmatch(
            rf"llmcal: training {re.escape(model)} \(cogcalib-ls\): 2/2 steps done in .*", x
        )
        for x in lines
    ), err
    gating = [x for x in lines if re.match(r"llmcal: gating pass on the cal split \(step \d+\)", x)]
    assert gating and all(" q done in " in x or " q (" in x for x in gating)
    assert "llmcal: training done (2 steps); evaluating on 4 test questions" in lines
    for who in (model, f"{model} + adapter"):
        assert any(
            x.startswith(f"llmcal: evaluating {who} on the test split: 4/4 q done in ")
            for x in lines
        ), err

    code, stdout, err = run(capsys, *base, "--no-eval", "--out-dir", str(tmp_path / "b"))
    assert code == 0, err
    assert "; no before / after evaluation" in stdout and "(before)" not in stdout
    assert "evaluating" not in err
    assert "evaluation" not in json.loads((tmp_path / "b" / "llmcal_finetune.json").read_text())
