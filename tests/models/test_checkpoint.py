"""The generic resumable-run layer: deterministic chunks, crash-safe appends, refusal to mix."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from llmcal.errors import ConfigError, LLMCalError
from llmcal.models.base import build_scores
from llmcal.models.checkpoint import CheckpointedScorer, checkpoint_path, merge_meta
from llmcal.scores import Scores
from llmcal.tasks import synthetic_task
from llmcal.tasks.types import Question, Task


class HashScorer:
    """A deterministic in-process scorer: option logits from a hash of the text (no model)."""

    name = "hash"

    def __init__(self, salt: str = "") -> None:
        self.salt = salt
        self.calls: list[int] = []

    def settings(self) -> dict[str, Any]:
        return {"salt": self.salt}

    def score(self, task: Task, *, mode: str = "letter", template: Any = "daca1",
              normalization: str = "mean", shots: Sequence[Question] = ()) -> Scores:  # fmt: skip
        self.calls.append(len(task))
        rows = [
            [int(hashlib.sha256(f"{self.salt}{q.question}{c}".encode()).hexdigest()[:6], 16) / 1e6
             for c in q.choices]
            for q in task
        ]  # fmt: skip
        return build_scores(task, rows, {"model": self.name, "per_row": {q.id: 1 for q in task}})


class Boom(LLMCalError):
    pass


def fail_at(chunk: int) -> Any:
    seen = {"n": 0}

    def score_fn(scorer: Any, task: Task, **kw: Any) -> Scores:
        if seen["n"] == chunk:
            raise Boom(f"interrupted at chunk {chunk}")
        seen["n"] += 1
        return scorer.score(task, **kw)  # type: ignore[no-any-return]

    return score_fn


@pytest.fixture
def task() -> Task:
    return synthetic_task(n=23, seed=2)


def test_interrupted_then_resumed_equals_uninterrupted(task: Task, tmp_path: Path) -> None:
    full = CheckpointedScorer(HashScorer(), tmp_path / "a.parquet", chunk_size=5).score(task)
    out = tmp_path / "b.parquet"
    with pytest.raises(Boom):
        CheckpointedScorer(HashScorer(), out, chunk_size=5, score_fn=fail_at(2)).score(task)
    scorer = HashScorer()
    runner = CheckpointedScorer(scorer, out, chunk_size=5)
    resumed = runner.score(task)
    assert scorer.calls == [5, 5, 3]  # chunks 0 and 1 came from the checkpoint
    assert runner.resumed_rows == 10 and runner.scored_rows == 13
    assert resumed.equals(full)
    assert set(resumed.meta["per_row"]) == set(task.ids)  # chunk metas merged
    assert (
        resumed.meta["created"]
        == CheckpointedScorer(HashScorer(), out, chunk_size=5).score(task).meta["created"]
    )  # the run's start time, not the resume time


def test_torn_last_line_is_cut_off_and_rescored(task: Task, tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    CheckpointedScorer(HashScorer(), out, chunk_size=6).score(task)
    ckpt = checkpoint_path(out)
    lines = ckpt.read_bytes().splitlines(keepends=True)
    ckpt.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # a kill mid-append
    scorer = HashScorer()
    again = CheckpointedScorer(scorer, out, chunk_size=6).score(task)
    assert scorer.calls == [6, 5]  # chunks 2 and 3 rescored, nothing duplicated
    assert again.equals(
        CheckpointedScorer(HashScorer(), tmp_path / "u.parquet", chunk_size=6).score(task)
    )
    assert len(ckpt.read_bytes().splitlines()) == 5  # header + 4 chunks, the torn line gone


def test_changed_settings_are_refused_and_restart_discards(task: Task, tmp_path: Path) -> None:
    out = tmp_path / "c.parquet"
    with pytest.raises(Boom):
        CheckpointedScorer(HashScorer(), out, chunk_size=5, score_fn=fail_at(1)).score(task)
    for runner, kwargs in [
        (CheckpointedScorer(HashScorer("x"), out, chunk_size=5), {}),
        (CheckpointedScorer(HashScorer(), out, chunk_size=4), {}),
        (CheckpointedScorer(HashScorer(), out, chunk_size=5), {"template": "daca3"}),
        (CheckpointedScorer(HashScorer(), out, chunk_size=5), {"mode": "cloze"}),
    ]:
        with pytest.raises(ConfigError, match=r"other settings.*refusing to mix"):
            runner.score(task, **kwargs)
    with pytest.raises(ConfigError, match="other settings"):
        CheckpointedScorer(HashScorer(), out, chunk_size=5).score(task.subset(10))
    scorer = HashScorer("x")
    fresh = CheckpointedScorer(scorer, out, chunk_size=5, resume=False).score(task)
    assert scorer.calls == [5, 5, 5, 5, 3] and len(fresh) == len(task)


def test_not_a_checkpoint_is_refused(task: Task, tmp_path: Path) -> None:
    out = tmp_path / "d.parquet"
    checkpoint_path(out).write_text("hello\n")
    with pytest.raises(ConfigError, match="not an llmcal checkpoint"):
        CheckpointedScorer(HashScorer(), out).score(task)


def test_merge_meta_first_wins_and_dicts_merge() -> None:
    merged = merge_meta([{"a": 1, "d": {"x": 1}}, {"a": 2, "d": {"y": 2}, "b": 3}])
    assert merged == {"a": 1, "d": {"x": 1, "y": 2}, "b": 3}


@pytest.mark.model
def test_hf_scorer_resumes_to_identical_scores(smol: Any, tmp_path: Path) -> None:
    task = synthetic_task(n=12, seed=4)
    full = CheckpointedScorer(smol, tmp_path / "full.parquet", chunk_size=4).score(task)
    out = tmp_path / "part.parquet"
    with pytest.raises(Boom):
        CheckpointedScorer(smol, out, chunk_size=4, score_fn=fail_at(1)).score(task)
    resumed = CheckpointedScorer(smol, out, chunk_size=4).score(task)
    assert resumed.equals(full)  # bit-identical: same chunks, same batches
    assert {k: v for k, v in resumed.meta.items() if k != "created"} == {
        k: v for k, v in full.meta.items() if k != "created"
    }


def test_a_run_failing_before_its_first_chunk_leaves_no_checkpoint(
    task: Task, tmp_path: Path
) -> None:
    out = tmp_path / "e.parquet"
    runner = CheckpointedScorer(HashScorer(), out, chunk_size=4, score_fn=fail_at(0))
    with pytest.raises(Boom):
        runner.score(task)
    assert not checkpoint_path(out).exists()
    # so a run with other settings is not refused as "belongs to a run with other settings"
    other = CheckpointedScorer(HashScorer(salt="other"), out, chunk_size=4).score(task)
    assert len(other) == len(task)
    # a failure after the first chunk still keeps that chunk for a resume
    out2 = tmp_path / "f.parquet"
    with pytest.raises(Boom):
        CheckpointedScorer(HashScorer(), out2, chunk_size=4, score_fn=fail_at(1)).score(task)
    assert len(checkpoint_path(out2).read_text().splitlines()) == 2  # header + chunk 0
