"""The CLI's boundary checks: outputs that are inputs, unwritable outputs, bounded arguments,
device typos, zero-row Scores and capped error lines, all before any real work."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_user_error, run
from llmcal._io import atomic_write
from llmcal.errors import OutputError, one_line, quote
from llmcal.scores import Scores


@pytest.fixture
def run_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    scores = Scores(ids=[f"q{i}" for i in range(30)], logits=rng.normal(size=(30, 3)),
                    labels=rng.integers(0, 3, 30))  # fmt: skip
    return scores.save(tmp_path / "run.parquet")


@pytest.fixture
def cal_file(tmp_path: Path, run_file: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    code, _, err = run(
        capsys, "fit", "temperature", str(run_file), "--out", str(tmp_path / "c.json")
    )
    assert code == 0, err
    return tmp_path / "c.json"


def test_an_output_that_is_an_input_is_refused_through_symlinks_too(
    tmp_path: Path, run_file: Path, cal_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = run_file.read_bytes()
    link = tmp_path / "link.parquet"
    link.symlink_to(run_file)
    hard = tmp_path / "hard.parquet"
    os.link(run_file, hard)
    task = tmp_path / "t.parquet"
    task.write_bytes(b"task")
    cases = [
        ["apply", str(cal_file), str(run_file), "--out", str(run_file)],
        ["apply", str(cal_file), str(run_file), "--out", str(link)],
        ["apply", str(cal_file), str(run_file), "--out", str(hard)],
        ["apply", str(cal_file), str(run_file), "--out", str(tmp_path / "sub" / ".." / "run.parquet")],
        ["score", "--model", "smollm2", "--task", str(task), "--out", str(task)],
        ["report", str(run_file), "--out", str(tmp_path / "r.json"), "--calibrator", str(tmp_path / "r.json")],
    ]  # fmt: skip
    for argv in cases:
        code, _, err = run(capsys, *argv)
        assert_user_error(code, err, "is also the input", "Choose another output path")
    assert run_file.read_bytes() == before and task.read_bytes() == b"task"
    # the checkpoint beside --out is an output of score too
    ckpt_task = tmp_path / "o.parquet.ckpt.jsonl"
    ckpt_task.write_text("{}")
    code, _, err = run(capsys, "score", "--model", "m", "--task", str(ckpt_task), "--out",
                       str(tmp_path / "o.parquet"))  # fmt: skip
    assert_user_error(code, err, "checkpoint of --out")


def test_unwritable_and_dangling_output_folders_fail_before_any_work(
    tmp_path: Path, run_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dangling = tmp_path / "gone"
    dangling.symlink_to(tmp_path / "missing-target")
    code, _, err = run(capsys, "eval", str(run_file), "--json", str(dangling / "m.json"))
    assert_user_error(code, err, "symbolic link to a missing target")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permissions: use a read-only file system
            pytest.skip("running as root; permissions are not enforced")
        code, _, err = run(capsys, "fit", "temperature", str(run_file), "--out",
                           str(locked / "deeper" / "c.json"))  # fmt: skip
        assert_user_error(code, err, "not writable")
    finally:
        locked.chmod(0o700)


def test_a_failed_write_is_an_output_error_and_leaves_nothing(tmp_path: Path) -> None:
    import errno

    def full_disk(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write(tmp_path / "out.bin", full_disk)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write(Path("/proc/llmcal-no/out.bin"), lambda tmp: None)


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "R", "--seed", "-1"],
        ["eval", "R", "--seed", str(2**40)],
        ["eval", "R", "--bins", "100000"],
        ["eval", "R", "--resamples", "1000000000"],
        ["finetune", "--model", "m", "--task", "t", "--out", "o", "--cal-fraction", "nan"],
        ["finetune", "--model", "m", "--task", "t", "--out", "o", "--test-fraction", "1.5"],
        ["finetune", "--model", "m", "--task", "t", "--out", "o", "--lr", "nan"],
        ["score", "--model", "m", "--task", "t", "--out", "o.parquet", "--device", "cdua"],
        ["score", "--model", "m", "--task", "t", "--out", "o.parquet", "--device", "gpu"],
        ["score", "--model", "m", "--task", "t", "--out", "o.parquet", "--dtype", "bf16"],
        ["score", "--model", "m", "--task", "t", "--out", "o.parquet", "--timeout", "nan"],
        ["score", "--model", "m", "--task", "t", "--out", "o.parquet", "--retries", "-1"],
    ],
)
def test_out_of_bounds_arguments_exit_2_before_any_work(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        run(capsys, *argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err


def test_a_nan_tolerance_is_a_one_line_error(
    tmp_path: Path, run_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    code, _, err = run(capsys, "report", str(run_file), "--out", str(out), "--tolerance", "nan")
    assert_user_error(code, err, "tolerance")
    assert not out.exists()


def test_device_names_are_checked_by_the_library_too() -> None:
    from llmcal.errors import ConfigError
    from llmcal.models.hf import pick_device

    with pytest.raises(ConfigError, match="unknown device"):
        pick_device("cuda0")
    assert pick_device("cpu") == "cpu"


def test_zero_row_scores_name_the_file(
    tmp_path: Path, cal_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = Scores(ids=[], logits=np.zeros((0, 2)), labels=[]).save(tmp_path / "empty.parquet")
    for argv in (["eval", str(empty)], ["fit", "temperature", str(empty), "--out", str(tmp_path / "x.json")],
                 ["apply", str(cal_file), str(empty), "--out", str(tmp_path / "y.parquet")]):  # fmt: skip
        code, _, err = run(capsys, *argv)
        assert_user_error(code, err, str(empty), "no questions (0 rows)")
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.parquet").exists()


def test_error_lines_quote_short_prefixes_and_are_capped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(quote("x" * 5_000_000)) < 120 and "5000000 characters" in quote("x" * 5_000_000)
    assert quote(10**5000) == "<integer of 16610 bits>"
    assert len(one_line("a\nb" * 10**6)) <= 2000 and "\n" not in one_line("a\nb")
    task = tmp_path / "t.jsonl"
    task.write_text('{"id": "a", "question": 1, "choices": ["' + "y" * 5_000_000 + '", 2]}\n')
    code, _, err = run(capsys, "score", "--model", "m", "--endpoint", "http://127.0.0.1:9/v1",
                       "--task", str(task), "--out", str(tmp_path / "o.parquet"))  # fmt: skip
    assert_user_error(code, err, "field 'question' must be a string")
    assert len(err) < 600
