"""``llmcal finetune``: a tiny end-to-end run, resume, the adapter in ``llmcal score``, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import tiny_task

from cli_helpers import assert_user_error, run

pytest.importorskip("peft")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.jsonl"
    lines = [json.dumps(q.to_dict()) for q in tiny_task(20, "d", seed=5)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "finetune",
        "--model",
        str(model),
        "--task",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--device",
        "cpu",
        *extra,
    ]


def test_finetune_resume_and_score_with_the_adapter(
    capsys: pytest.CaptureFixture[str], tiny_model: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    first = _args(tiny_model, data, out, "--method", "cogcalib-ls", "--max-steps", "2")
    first.append("--balance-letters")
    code, stdout, err = run(capsys, *first, "--save-steps", "1", "--keep-checkpoints")
    assert code == 0, err
    assert "(before)" in stdout and "+ cogcalib-ls adapter" in stdout and "ece15" in stdout
    assert (out / "adapter_config.json").is_file()
    summary = json.loads((out / "llmcal_finetune.json").read_text())
    assert summary["steps"] == 2 and summary["n_train"] == 14 and summary["n_cal"] == 2
    assert summary["config"]["balance_letters"] is True
    assert set(summary["evaluation"]) == {"before", "after"}

    again = _args(tiny_model, data, out, "--method", "cogcalib-ls", "--max-steps", "3")
    code, _, err = run(capsys, *again, "--resume", "--no-eval")
    assert code == 0, err
    summary = json.loads((out / "llmcal_finetune.json").read_text())
    assert summary["steps"] == 3 and summary["resumed_from"].endswith("checkpoint-2")
    assert not (tmp_path / ".adapter.checkpoints").exists()  # removed after success

    scores = tmp_path / "s.parquet"
    code, _, err = run(
        capsys,
        *["score", "--model", str(tiny_model), "--task", str(data), "--adapter", str(out)],
        *["--device", "cpu", "--out", str(scores)],
    )
    assert code == 0, err
    from llmcal.scores import Scores

    assert Scores.load(scores).meta["adapter"] == str(out)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--method", "cogcalib-mbls", "--cal-fraction", "0"], "needs a calibration split"),
        (["--alpha", "-1"], "--alpha must be >= 0"),
        (["--cal-fraction", "0.5", "--test-fraction", "0.5"], "must be >= 0 and sum to < 1"),
        (["--template", "fewshot"], "zero-shot"),
        (["--normalization", "sum"], "add --mode cloze"),
        (["--mode", "cloze", "--letter-sep", "bare"], "leave it out with --mode cloze"),
        (["--lora-targets", "foo_proj"], "foo_proj matches no module of this model"),
        (["--lora-targets", "q_proj,vv_proj"], "vv_proj matches no module"),  # PEFT: silent
    ],
)
def test_finetune_user_errors_leave_no_output(
    capsys: pytest.CaptureFixture[str],
    tiny_model: Path,
    data: Path,
    tmp_path: Path,
    extra: list[str],
    fragment: str,
) -> None:
    out = tmp_path / "adapter"
    code, _, err = run(capsys, *_args(tiny_model, data, out, "--max-steps", "1", *extra))
    assert_user_error(code, err, fragment)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_finetune_out_and_data_errors(
    capsys: pytest.CaptureFixture[str], tiny_model: Path, data: Path, tmp_path: Path
) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, _, err = run(capsys, *_args(tiny_model, data, a_file))
    assert_user_error(code, err, "is a file")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    code, _, err = run(capsys, *_args(tiny_model, data, busy))
    assert_user_error(code, err, "not an adapter")
    assert (busy / "notes.txt").read_text() == "keep me"
    code, _, err = run(capsys, *_args(tiny_model, tmp_path / "missing.jsonl", tmp_path / "o"))
    assert_user_error(code, err)
    code, _, err = run(capsys, *_args(tmp_path / "nomodel", data, tmp_path / "o"))
    assert_user_error(code, err)
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exc:
        run(capsys, *_args(tiny_model, data, tmp_path / "o", "--epochs", "1", "--max-steps", "1"))
    assert exc.value.code == 2


def test_finetune_takes_the_hf_loading_flags(
    capsys: pytest.CaptureFixture[str], tiny_model: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    flags = [
        "--max-steps",
        "1",
        "--no-eval",
        "--revision",
        "main",
        "--attn-implementation",
        "eager",
    ]
    code, _, err = run(capsys, *_args(tiny_model, data, out, *flags))
    assert code == 0, err
    summary = json.loads((out / "llmcal_finetune.json").read_text())
    assert summary["loading"] == {"revision": "main", "attn_implementation": "eager"}
    # the flags reach the load: a missing token variable fails before any training
    bad = tmp_path / "bad"
    code, _, err = run(
        capsys, *_args(tiny_model, data, bad, "--max-steps", "1", "--hub-token-env", "LLMCAL_NOPE")
    )
    assert_user_error(code, err, "LLMCAL_NOPE is not set")
    assert not bad.exists()


def test_device_map_under_a_multi_process_launch_is_refused_before_loading(
    capsys: pytest.CaptureFixture[str],
    tiny_model: Path,
    data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun / accelerate set in each process
    out = tmp_path / "adapter"
    code, _, err = run(
        capsys, *_args(tiny_model, data, out, "--max-steps", "1", "--device-map", "auto")
    )
    assert_user_error(code, err, "--device-map", "every process holds a whole copy")
    assert not out.exists()
