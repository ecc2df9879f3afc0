"""``llmcal split`` and llmcal.splits: seeded, stratified, validated, written all-or-nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llmcal.cli import main
from llmcal.errors import ConfigError, OutputError
from llmcal.scores import Scores
from llmcal.splits import parse_fractions, save_splits, split_scores
from llmcal.tasks.synthetic import synthetic_task


def make(n: int = 200, subjects: bool = True, seed: int = 0) -> Scores:
    rng = np.random.default_rng(seed)
    subj = None
    if subjects:  # unequal subject sizes: 100, 60, 30, 10
        subj = np.array(["a"] * 100 + ["b"] * 60 + ["c"] * 30 + ["d"] * 10, dtype=object)[:n]
    labels = rng.integers(0, 4, n)
    return Scores(
        ids=np.array([f"q{i}" for i in range(n)], dtype=object),
        logits=rng.normal(size=(n, 4)) + 1.5 * np.eye(4)[labels],  # informative, over-confident
        labels=labels,
        meta={"task": "t", "model": "m"},
        subjects=subj,
    )


def test_split_is_disjoint_covering_seeded_and_stratified_by_subject() -> None:
    s = make()
    parts = split_scores(s, {"cal": 0.3, "test": 0.7}, seed=0)
    ids = [set(p.ids.tolist()) for p in parts.values()]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == set(s.ids.tolist())
    assert [len(p) for p in parts.values()] == [60, 140]
    cal_subjects = Counter(parts["cal"].subjects.tolist())
    assert cal_subjects == {"a": 30, "b": 18, "c": 9, "d": 3}  # 30 % of each subject
    assert parts["cal"].meta["split"] == {
        "name": "cal", "fractions": {"cal": 0.3, "test": 0.7}, "seed": 0,
        "stratify": "subject", "n_total": 200,
    }  # fmt: skip
    again = split_scores(s, {"cal": 0.3, "test": 0.7}, seed=0)
    assert again["cal"].ids.tolist() == parts["cal"].ids.tolist()
    other = split_scores(s, {"cal": 0.3, "test": 0.7}, seed=1)
    assert other["cal"].ids.tolist() != parts["cal"].ids.tolist()
    # rows keep their original order and their logits / labels
    pos = {q: i for i, q in enumerate(s.ids.tolist())}
    rows = [pos[q] for q in parts["test"].ids.tolist()]
    assert rows == sorted(rows)
    np.testing.assert_array_equal(parts["test"].logits, s.logits[rows])
    np.testing.assert_array_equal(parts["test"].labels, s.labels[rows])


def test_unstratified_split_is_the_task_split_of_the_same_questions() -> None:
    task = synthetic_task(n=97, seed=3)
    s = Scores(
        ids=np.array(task.ids, dtype=object),
        logits=np.zeros((97, max(len(q.choices) for q in task))) + 0.0,
        labels=np.zeros(97, dtype=np.int64),
    )
    fr = {"train": 0.5, "cal": 0.2, "test": 0.3}
    ours = split_scores(s, fr, seed=5, stratify="none")
    theirs = task.split(fr, seed=5)
    for name in fr:
        assert ours[name].ids.tolist() == theirs[name].ids, name


def test_label_stratification_keeps_label_shares() -> None:
    s = make(subjects=False)
    parts = split_scores(s, {"a": 0.5, "b": 0.5}, seed=0, stratify="label")
    for c in range(4):
        n_c = int((s.labels == c).sum())
        assert abs(int((parts["a"].labels == c).sum()) - n_c / 2) <= 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cal=0.3,test=0.6", "must sum to 1"),
        ("cal=0.3,cal=0.7", "appears twice"),
        ("cal=-0.3,test=1.3", "must be > 0"),
        ("../x=0.5,test=0.5", "not a safe file name"),
        ("cal=0.5,te/st=0.5", "not a safe file name"),
        ("cal=1", "at least two splits"),
        ("cal:0.3,test=0.7", "NAME=FRACTION"),
        ("cal=abc,test=0.7", "not a number"),
    ],
)
def test_bad_fractions_are_rejected(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_fractions(text)


def test_empty_split_and_missing_subjects_are_errors() -> None:
    with pytest.raises(ConfigError, match="would get no question"):
        split_scores(make(n=3, subjects=False), {"a": 0.1, "b": 0.9})
    with pytest.raises(ConfigError, match="have no subjects"):
        split_scores(make(subjects=False), {"a": 0.5, "b": 0.5}, stratify="subject")


def test_cli_split_writes_every_file_and_fit_apply_work_on_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run.parquet"
    make().save(run)
    out = tmp_path / "splits"
    args = ["split", str(run), "--fractions", "cal=0.3,test=0.7", "--seed", "0"]
    assert main([*args, "--out-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "split 200 questions with seed 0, stratified by subject (4 subjects): cal 60, test 140"
        in text
    )
    assert sorted(p.name for p in out.iterdir()) == ["cal.parquet", "test.parquet"]
    cal, test = Scores.load(out / "cal.parquet"), Scores.load(out / "test.parquet")
    assert len(cal) + len(test) == 200
    # the README's fit -> apply step, on the files split wrote
    assert (
        main(["fit", "temperature", str(out / "cal.parquet"), "--out", str(tmp_path / "ts.json")])
        == 0
    )
    assert main(["apply", str(tmp_path / "ts.json"), str(out / "test.parquet"),
                 "--out", str(tmp_path / "test_cal.parquet")]) == 0  # fmt: skip
    assert len(Scores.load(tmp_path / "test_cal.parquet")) == 140


def test_cli_split_errors_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run.parquet"
    make().save(run)
    out = tmp_path / "splits"
    assert main(["split", str(run), "--fractions", "cal=0.3,test=0.3", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmcal: error: ") and err.count("\n") == 1 and "sum to 1" in err
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    assert (
        main(["split", str(run), "--fractions", "a=0.5,b=0.5", "--out-dir", str(tmp_path / "file")])
        == 2
    )
    assert "is a file" in capsys.readouterr().err


def test_save_splits_writes_none_when_one_fails(tmp_path: Path) -> None:
    parts = split_scores(make(), {"cal": 0.5, "test": 0.5})
    (tmp_path / "out" / "test.parquet").mkdir(parents=True)  # the second target cannot be written
    with pytest.raises(OutputError, match=r"test\.parquet"):
        save_splits(parts, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.parquet"]
    assert (tmp_path / "out" / "test.parquet").is_dir()  # untouched, and no cal.parquet written


def test_many_small_subjects_do_not_skew_the_split_sizes() -> None:
    rng = np.random.default_rng(4)
    n = 300
    subjects = np.array([f"s{int(i)}" for i in rng.integers(0, 53, n)], dtype=object)
    s = make(n=n, subjects=False).replace(subjects=subjects)
    parts = split_scores(s, {"cal": 0.3, "test": 0.7}, seed=0)
    assert [len(p) for p in parts.values()] == [90, 210]  # not 30 % per subject rounded up
    for subj in set(subjects.tolist()):
        n_s = int((subjects == subj).sum())
        got = int((parts["cal"].subjects == subj).sum())
        assert np.floor(0.3 * n_s) <= got <= np.ceil(0.3 * n_s), subj
    three = split_scores(s, {"a": 0.5, "b": 0.25, "c": 0.25}, seed=1)
    assert [len(p) for p in three.values()] == [150, 75, 75]
