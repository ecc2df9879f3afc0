"""The CLI's first-hour experience: progress lines, --help, lm-eval habits, warnings, fit summary.

Scoring runs through a small deterministic scorer that reports progress per batch like the real
backends; one test drives the real bundled model.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.special import log_softmax

import llmcal.cli as cli
from cli_helpers import assert_user_error, run
from llmcal.cli import build_parser, main
from llmcal.models.base import build_scores, check_request
from llmcal.models.checkpoint import CheckpointedScorer
from llmcal.progress import Progress, progress
from llmcal.scores import Scores
from llmcal.tasks import load_task
from llmcal.tasks.types import Question, Task

LINE = re.compile(r"^llmcal: (?P<desc>.+): (?P<done>\d+)/(?P<total>\d+) q \((?P<pct>\d+)%\), ")


# -- a scorer that reports per batch, like HFScorer / HTTPScorer --------------------------------
class BatchScorer:
    """Deterministic logits from a hash of the question id; one progress update per batch."""

    def __init__(self, name: str = "fake", batch_size: int = 4) -> None:
        self.name = name
        self.batch_size = batch_size
        self.calls = 0

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "batch_size": self.batch_size}

    def score(
        self,
        task: Task,
        *,
        mode: str = "letter",
        template: Any = "daca1",
        normalization: str = "mean",
        shots: Sequence[Question] = (),
    ) -> Scores:
        tmpl = check_request(task, mode, template, normalization, shots)
        rows = []
        with progress(len(task), f"scoring {self.name}") as bar:
            for start in range(0, len(task), self.batch_size):
                batch = task.questions[start : start + self.batch_size]
                for q in batch:
                    seed = sum(map(ord, q.id)) % 2**32
                    rows.append(np.random.default_rng(seed).normal(size=len(q.choices)).tolist())
                bar.update(len(batch))
        self.calls += 1
        return build_scores(
            task,
            rows,
            {"model": self.name, "mode": mode, "template": tmpl.name, "shots": len(shots)},
        )


def progress_lines(err: str) -> list[re.Match[str]]:
    return [m for m in map(LINE.match, err.splitlines()) if m]


# -- the progress module ------------------------------------------------------------------------
def test_plain_lines_every_tenth_and_every_interval_with_rate_and_eta() -> None:
    now = [0.0]
    stream = io.StringIO()
    with Progress(100, "scoring m", stream=stream, clock=lambda: now[0], interval=10.0) as bar:
        for _ in range(100):  # 1 question per second
            now[0] += 1.0
            bar.update(1)
    lines = stream.getvalue().splitlines()
    # 10 %, 20 %, … 90 % (each reached at the 10 s interval too), then the final line
    assert [int(m["done"]) for m in progress_lines(stream.getvalue())] == list(range(10, 100, 10))
    assert lines[0] == "llmcal: scoring m: 10/100 q (10%), 1.0 q/s, ETA 1m30s"
    assert lines[-1] == "llmcal: scoring m: 100/100 q done in 1m40s (1.0 q/s)"
    assert len(lines) == 10

    now[0] = 0.0
    slow = io.StringIO()
    with Progress(1000, "scoring m", stream=slow, clock=lambda: now[0], interval=10.0) as bar:
        for _ in range(30):  # 1 question per 4 s: the 10 s interval comes long before 10 %
            now[0] += 4.0
            bar.update(1)
    done = [int(m["done"]) for m in progress_lines(slow.getvalue())]
    assert done == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]  # one line per >= 10 s
    assert "ETA 1h06m" in slow.getvalue().splitlines()[0]  # 997 q at 0.25 q/s


def test_nested_bars_move_the_outer_one_per_inner_batch() -> None:
    now = [0.0]
    stream = io.StringIO()
    with Progress(40, "outer", stream=stream, clock=lambda: now[0], initial=8) as bar:
        for chunk in (16, 16):  # two chunks of 16 whose scorer reports 4 batches of 4 "requests"
            with bar.span(chunk), Progress(2 * chunk, "inner", stream=stream) as inner:
                for _ in range(4):
                    now[0] += 1.0
                    inner.update(8)  # 8 inner units = 4 outer units
    done = [int(m["done"]) for m in progress_lines(stream.getvalue())]
    assert done == [12, 16, 20, 24, 28, 32, 36]  # each batch of 4 crosses a 10 % step of 40
    assert all(m["desc"] == "outer" for m in progress_lines(stream.getvalue()))
    assert stream.getvalue().splitlines()[-1].startswith("llmcal: outer: 40/40 q done in 8s")


def test_disabled_and_off_are_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    with Progress(10, "x", stream=stream, enabled=False) as bar:
        bar.update(10)
    monkeypatch.setenv("LLMCAL_PROGRESS", "off")
    with Progress(10, "x", stream=stream) as bar:
        bar.update(10)
    assert stream.getvalue() == ""


def test_a_forced_bar_draws_with_tqdm_and_nests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCAL_PROGRESS", "bar")
    stream = io.StringIO()
    with Progress(20, "bar test", stream=stream) as bar:
        assert bar.style == "bar"
        with bar.span(10), progress(5, "inner") as inner:
            assert inner.style == "child"
            inner.update(5)
        assert bar.done == 10
    text = stream.getvalue()
    assert "bar test:" in text and "/20" in text and not progress_lines(text)  # tqdm, not lines


def test_checkpointed_run_reports_per_batch_and_the_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = load_task("synthetic", n=40, seed=1)
    out = tmp_path / "run.parquet"
    scorer = BatchScorer(batch_size=4)

    def fail_second_chunk(s: Any, t: Task, **kw: Any) -> Scores:
        if t.questions[0].id == task.questions[16].id:
            raise KeyboardInterrupt
        return s.score(t, **kw)

    with pytest.raises(KeyboardInterrupt):
        CheckpointedScorer(scorer, out, chunk_size=16, score_fn=fail_second_chunk).score(task)
    first = [int(m["done"]) for m in progress_lines(capsys.readouterr().err)]
    assert first == [4, 8, 12, 16]  # per batch of 4, not per chunk of 16

    runner = CheckpointedScorer(scorer, out, chunk_size=16)
    scores = runner.score(task)
    err = capsys.readouterr().err
    assert f"llmcal: resuming 16 of 40 questions from {runner.path}" in err
    done = [int(m["done"]) for m in progress_lines(err)]
    assert done == [20, 24, 28, 32, 36]
    assert err.splitlines()[-1].startswith("llmcal: scoring fake: 40/40 q done in ")
    assert runner.resumed_rows == 16 and runner.scored_rows == 24 and len(scores) == 40


# -- --help ---------------------------------------------------------------------------------------
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_has_help() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert {"score", "eval", "fit", "apply", "report", "finetune", "demo", "list"} <= set(commands)
    missing = [
        f"llmcal {name} {'/'.join(a.option_strings) or a.dest}"
        for name, sub in commands.items()
        for a in sub._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert missing == []


def test_help_groups_options_and_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["score", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for group in ("model", "data", "prompt", "endpoint", "checkpoint", "output"):
        assert f"\n{group} options:\n" in text
    flat = " ".join(text.split())
    assert "questions per forward pass (default: 8)" in flat
    assert "(default: daca1)" in flat and "(default: 32)" in flat
    assert "--model MODEL bundled alias, .gguf file, model directory or hub id (required)" in flat
    assert "(default: None)" not in flat and "(default: False)" not in flat
    assert "--shots N, --num_fewshot N" in flat


def test_finetune_writes_a_folder_with_out_dir_and_keeps_out_as_a_hidden_alias(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    base = ["finetune", "--model", "m", "--task", "t"]
    assert parser.parse_args([*base, "--out-dir", "A"]).out == "A"
    assert parser.parse_args([*base, "--out", "B"]).out == "B"
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    assert "--out-dir DIR" in text and "--out DIR" not in text and "--out," not in text
    assert "--eval-limit N" in text and "--no-eval" in text


# -- lm-eval habits -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "ours"),
    [
        ("--model_args=pretrained=x", "--model NAME"),
        ("--tasks", "--task NAME[,NAME...]"),
        ("--batch_size", "--batch-size N"),
        ("--output_path", "--out-dir DIR"),
        ("--log_samples", "keeps each question's option logits"),
        ("--no_shuffle", "llmcal spells it --no-shuffle"),
    ],
)
def test_lm_eval_flags_get_a_one_line_hint(
    capsys: pytest.CaptureFixture[str], flag: str, ours: str
) -> None:
    argv = ["score", "--model", "m", "--task", "arc_easy", "--out", "x.parquet", flag]
    if flag in ("--tasks", "--batch_size", "--output_path"):
        argv.append("1")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("llmcal: error: ") and len(err.strip().splitlines()) == 1
    assert ours in err and "usage:" not in err


@pytest.mark.parametrize("bad", ["0", "-0.5", "1.5", "x", "nan"])
def test_limit_must_be_a_count_or_a_fraction(capsys: pytest.CaptureFixture[str], bad: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", "m", "--task", "t", "--out", "x.parquet", "--limit", bad])
    assert exc.value.code == 2 and "--limit" in capsys.readouterr().err


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> BatchScorer:
    """`llmcal score` with the BatchScorer in place of the model backend."""
    scorer = BatchScorer()
    monkeypatch.setattr(cli, "_score_backend", lambda args, template: scorer)
    return scorer


def test_score_several_tasks_into_a_folder_with_a_fractional_limit_and_num_fewshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake: BatchScorer
) -> None:
    data = tmp_path / "mine.jsonl"
    questions = [
        {"id": f"m{i}", "question": f"q{i}", "choices": ["a", "b", "c"], "answer": i % 3}
        for i in range(30)
    ]
    data.write_text("".join(json.dumps(q) + "\n" for q in questions))
    folder = tmp_path / "runs"
    code, out, err = run(
        capsys, "score", "--model", "fake", "--task", f"synthetic,{data}", "--out-dir",
        str(folder), "--limit", "0.1", "--num_fewshot", "2",
    )  # fmt: skip
    assert code == 0, err
    assert fake.calls >= 2
    synthetic, mine = (
        Scores.load(folder / "synthetic.parquet"),
        Scores.load(folder / "mine.parquet"),
    )
    assert len(synthetic) == math.ceil(0.1 * (500 - 2)) == 50  # lm-eval: ceil(n * limit)
    assert len(mine) == math.ceil(0.1 * (30 - 2)) == 3
    assert synthetic.meta["task"] == "synthetic" and synthetic.meta["shots"] == 2
    assert synthetic.meta["template"] == "fewshot-2" and mine.logits.shape[1] == 3
    assert f"wrote 2 Scores files to {folder}" in out
    assert (
        "llmcal: scoring fake on synthetic: n=50, mode letter, template fewshot-2, 2 shots" in err
    )
    assert "llmcal: scoring fake on mine: n=3, mode letter" in err
    assert not list(folder.glob("*.ckpt.jsonl"))


def test_several_tasks_need_out_dir_and_distinct_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake: BatchScorer
) -> None:
    code, _, err = run(
        capsys, "score", "--model", "m", "--task", "a,b", "--out", str(tmp_path / "x.parquet")
    )
    assert_user_error(code, err, "--out-dir DIR")
    code, _, err = run(
        capsys, "score", "--model", "m", "--task", "synthetic,synthetic", "--out-dir", str(tmp_path)
    )
    assert_user_error(code, err, "both write")
    assert fake.calls == 0 and not list(tmp_path.iterdir())


# -- warnings and the fit summary ---------------------------------------------------------------
def _scores(n: int, k: int, seed: int, **meta: Any) -> Scores:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 2.0
    y = np.where(rng.random(n) < 0.6, z.argmax(axis=1), rng.integers(0, k, n))
    base = {"task": "arc_easy", "model": "m1", "template": "daca1", "mode": "letter"}
    return Scores(ids=[f"q{i}" for i in range(n)], logits=z, labels=y, meta={**base, **meta})


def test_fit_prints_rounded_parameters_and_the_nll_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scores = _scores(300, 4, 0)
    path = scores.save(tmp_path / "a.parquet")
    code, out, err = run(capsys, "fit", "temperature", str(path), "--out", str(tmp_path / "t.json"))
    assert code == 0 and err == ""
    tau = json.loads((tmp_path / "t.json").read_text())["params"]["temperature"]
    y = scores.labels
    before = -log_softmax(scores.logits, axis=1)[np.arange(300), y].mean()
    after = -log_softmax(scores.logits / tau, axis=1)[np.arange(300), y].mean()
    assert after < before
    assert out.splitlines()[0] == (
        f"fitted temperature on 300 questions: τ = {tau:.3g} (NLL {before:.3f} → {after:.3f})"
    )


def test_vector_scaling_on_few_questions_warns_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _scores(40, 4, 1).save(tmp_path / "few.parquet")
    code, out, err = run(capsys, "fit", "vector", str(path), "--out", str(tmp_path / "v.json"))
    assert code == 0
    assert err.splitlines() == [
        "llmcal: warning: vector fitted 8 parameters on 40 questions (5.0 per parameter, fewer "
        "than 10); it may overfit: use more questions or temperature scaling (1 parameter)"
    ]
    assert re.match(r"fitted vector on 40 questions: w = \[[-\d. ]+\], b = \[", out)
    code, _, err = run(
        capsys, "fit", "vector", str(_scores(80, 4, 2).save(tmp_path / "ok.parquet")), "--out",
        str(tmp_path / "v2.json"),
    )  # fmt: skip
    assert code == 0 and err == ""  # 80 questions = 10 per parameter


def test_apply_and_report_warn_about_another_task_model_or_option_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fit_on = _scores(200, 4, 3).save(tmp_path / "arc.parquet")
    other = _scores(50, 4, 4, task="mmlu", model="m2").save(tmp_path / "mmlu.parquet")
    same = _scores(50, 4, 5).save(tmp_path / "arc2.parquet")
    cal = tmp_path / "m.json"
    assert run(capsys, "fit", "matrix", str(fit_on), "--out", str(cal))[0] == 0

    code, _, err = run(capsys, "apply", str(cal), str(same), "--out", str(tmp_path / "o.parquet"))
    assert code == 0 and err == ""
    code, _, err = run(capsys, "apply", str(cal), str(other), "--out", str(tmp_path / "o.parquet"))
    assert code == 0
    assert err.splitlines() == [
        f"llmcal: warning: {cal} was fitted on task 'arc_easy', model 'm1' but these Scores are "
        "task 'mmlu', model 'm2'; a calibration rarely transfers: check it on labelled data of "
        "the target, or re-fit it there"
    ]
    code, _, err = run(
        capsys, "report", str(other), "--calibrator", str(cal), "--out", str(tmp_path / "r.md")
    )
    assert code == 0 and err.count("llmcal: warning: ") == 1 and "task 'mmlu'" in err

    temp = tmp_path / "t.json"
    assert run(capsys, "fit", "temperature", str(fit_on), "--out", str(temp))[0] == 0
    five = _scores(50, 5, 6, template="chat").save(tmp_path / "five.parquet")
    code, _, err = run(capsys, "apply", str(temp), str(five), "--out", str(tmp_path / "f.parquet"))
    assert code == 0 and "template 'daca1'" in err and "template 'chat'" in err
    code, _, err = run(capsys, "apply", str(cal), str(five), "--out", str(tmp_path / "g.parquet"))
    # the apply itself fails (K differs): one error line, no redundant warning before it
    assert code == 2 and err.startswith("llmcal: error: ") and err.count("\n") == 1
    assert "fitted on 4 options" in err and "have 5" in err


def test_eval_warns_below_chance_and_below_half_auroc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    z = np.array([[3.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.2, 0.0, 0.0]] * 5)
    wrong = Scores(ids=[f"w{i}" for i in range(20)], logits=z, labels=[1] * 20)
    code, _, err = run(capsys, "eval", str(wrong.save(tmp_path / "w.parquet")), "--no-ci")
    assert code == 0
    assert err.splitlines() == [
        "llmcal: warning: accuracy 0.000 is below chance (0.333 for these option counts): check "
        "the template, the answer letters and the label column"
    ]
    # right only where the model is least sure: accuracy 0.5 > 1/3, AUROC 0
    labels = [1, 1, 0, 0] * 5
    inverted = Scores(ids=[f"v{i}" for i in range(20)], logits=z, labels=labels)
    code, _, err = run(capsys, "eval", str(inverted.save(tmp_path / "v.parquet")), "--no-ci")
    assert code == 0
    assert err.splitlines() == [
        "llmcal: warning: AUROC 0.000 is below 0.5: confidence ranks wrong answers above right "
        "ones; check the scoring mode and the label column"
    ]


def test_fit_daca_says_how_many_questions_it_dropped_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = _scores(120, 4, 7)
    rng = np.random.default_rng(8)
    ref_logits = target.logits + rng.normal(scale=1.5, size=target.logits.shape)
    reference = Scores(ids=target.ids, logits=ref_logits, labels=target.labels, meta=target.meta)
    disagree = int((target.logits.argmax(1) != ref_logits.argmax(1)).sum())
    assert 0 < disagree < 120
    t, r = target.save(tmp_path / "t.parquet"), reference.save(tmp_path / "r.parquet")
    code, out, err = run(
        capsys, "fit", "daca", "--target", str(t), "--reference", str(r), "--out",
        str(tmp_path / "d.json"),
    )  # fmt: skip
    assert code == 0
    assert err.splitlines() == [
        f"llmcal: warning: daca fitted on {120 - disagree} of 120 target questions and dropped "
        f"{disagree}: {disagree} where the two models predict different options (--mask agree)"
    ]
    assert out.startswith(f"fitted daca on {120 - disagree} questions: τ = ")
    assert "on the target's labels)" in out


# -- the real bundled model ---------------------------------------------------------------------
@pytest.mark.model
def test_real_model_score_progress_moves_per_batch_inside_a_chunk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.parquet"
    code, stdout, err = run(
        capsys, "score", "--model", "smollm2-135m-instruct", "--task", "synthetic", "--limit",
        "12", "--batch-size", "4", "--chunk-size", "8", "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    lines = err.splitlines()
    assert (
        "llmcal: scoring smollm2-135m-instruct on synthetic: n=12, mode letter, template daca1"
        in lines
    )
    done = [int(m["done"]) for m in progress_lines(err)]
    assert done == [4, 8]  # 4 is inside the first chunk of 8: the bar moves per batch
    assert lines[-1].startswith("llmcal: scoring smollm2-135m-instruct: 12/12 q done in ")
    assert len(Scores.load(out)) == 12 and "scored 12 questions" in stdout


def test_interrupted_score_says_what_is_kept_and_the_rerun_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fake: BatchScorer
) -> None:
    out = tmp_path / "run.parquet"
    argv = ["score", "--model", "fake", "--task", "synthetic", "--limit", "40", "--chunk-size",
            "16", "--out", str(out)]  # fmt: skip
    real_score = fake.score

    def stop_on_second_chunk(task: Task, **kw: Any) -> Scores:
        if fake.calls == 1:
            raise KeyboardInterrupt
        return real_score(task, **kw)

    fake.score = stop_on_second_chunk  # type: ignore[method-assign]
    code, _, err = run(capsys, *argv)
    ckpt = f"{out}.ckpt.jsonl"
    assert code == 130 and not out.exists()
    assert err.splitlines()[-2:] == [
        f"llmcal: 16 of 40 questions are kept in {ckpt}; rerun to resume",
        "llmcal: interrupted",
    ]
    fake.score = real_score  # type: ignore[method-assign]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    assert f"llmcal: resuming 16 of 40 questions from {ckpt}; scoring the other 24" in err
    assert "scored 24 questions" in stdout and "16 resumed from the checkpoint" in stdout
    assert len(Scores.load(out)) == 40


def test_eval_of_free_form_confidence_has_no_chance_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # answer view: 25 % of the answers right is no "below chance"; inverse P(True) is named as such
    p = np.array([0.9, 0.8, 0.7, 0.2] * 5)
    labels = [0, 0, 0, 1] * 5
    free = Scores.from_confidence(p, labels).save(tmp_path / "free.parquet")
    code, _, err = run(capsys, "eval", str(free), "--no-ci")
    assert code == 0
    assert err.splitlines() == [
        "llmcal: warning: AUROC 0.000 is below 0.5: confidence ranks wrong answers above right "
        "ones; this confidence method carries inverse signal here (try another --method), or "
        "the judgements are inverted"
    ]
