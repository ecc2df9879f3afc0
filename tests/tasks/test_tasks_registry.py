"""load_task: built-in names (local files, the hub fallback), paths, synthetic specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmcal.errors import ConfigError, DataError
from llmcal.tasks import (
    BUILTIN_TASKS,
    DATA_DIR_ENV,
    Question,
    Task,
    load_task,
    records_to_task,
    save_jsonl,
    synthetic_task,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (DATA / "README.md").is_file(), reason=f"shared data directory {DATA} is absent"
)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# -- built-in names, local files ----------------------------------------------------------------


@needs_data
@pytest.mark.parametrize(
    ("name", "rows", "n_choices"),
    [("arc_challenge", 1172, {4}), ("openbook_qa", 500, {4}), ("winogrande", 1267, {2})],
)
def test_local_files_match_the_readme(name: str, rows: int, n_choices: set[int]) -> None:
    task = load_task(name, data_dir=DATA)
    assert task.name == name and len(task) == rows
    assert {len(q.choices) for q in task} == n_choices
    assert task.labelled
    assert task.metadata["source"] == "file" and task.metadata["task"] == name
    assert task.metadata["path"] == str(DATA / BUILTIN_TASKS[name].filename)


@needs_data
def test_mmlu_keeps_subjects() -> None:
    task = load_task("mmlu", data_dir=DATA)
    assert len(task) == 14042
    subjects = {q.subject for q in task}
    assert None not in subjects and len(subjects) == 57
    assert "abstract_algebra" in subjects
    dev = load_task("mmlu_dev", data_dir=str(DATA))
    assert len(dev) == 285 and {q.subject for q in dev} == subjects
    assert len(task.filter("abstract_algebra")) > 0


@needs_data
def test_boolq_has_passages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(DATA))
    task = load_task("boolq")  # found through the environment variable
    assert len(task) == 3270
    assert all(q.context and q.choices == ("no", "yes") for q in task)


def test_data_dir_argument_beats_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = Task("x", (Question("only-one", "Q?", ("a", "b"), 0),))
    save_jsonl(mine, tmp_path / "good" / "arc_easy.jsonl")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "empty"))
    task = load_task("arc_easy", data_dir=tmp_path / "good")
    assert task.ids == ["only-one"] and task.name == "arc_easy"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "good"))
    assert load_task("arc_easy", name="renamed").name == "renamed"


def test_every_builtin_has_a_file_and_hub_source() -> None:
    assert {"mmlu", "mmlu_dev", "arc_challenge", "arc_easy", "openbook_qa", "commonsense_qa",
            "boolq", "winogrande"} <= set(BUILTIN_TASKS)  # fmt: skip
    for name, entry in BUILTIN_TASKS.items():
        assert entry.name == name and entry.filename.endswith(".jsonl")
        if DATA.is_dir():
            assert (DATA / entry.filename).is_file(), entry.filename


# -- the hub fallback ---------------------------------------------------------------------------


def test_offline_hub_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    # a fresh interpreter: the hub libraries read HF_HUB_OFFLINE when they are imported
    script = textwrap.dedent(
        f"""
        from llmcal.errors import DataError
        from llmcal.tasks import load_task
        try:
            load_task("mmlu", data_dir={str(tmp_path)!r})
        except DataError as exc:
            print(exc)
        else:
            print("LOADED")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != DATA_DIR_ENV}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - start
    msg = out.stdout.strip()
    assert out.returncode == 0, out.stderr
    assert msg.startswith("task 'mmlu' is not available"), msg
    assert str(tmp_path / "mmlu_test.jsonl") in msg  # where it looked locally
    assert "cais/mmlu (config all, split test)" in msg  # what it tried on the hub
    assert "--data-dir" in msg and DATA_DIR_ENV in msg and "online" in msg
    assert elapsed < 30, f"offline failure took {elapsed:.1f} s"


# The hub copies cannot be downloaded here; feed records shaped like each hub dataset through
# the registry's own mappings to check that they read the documented columns correctly.
HUB_SAMPLES: dict[str, tuple[list[dict], list[int], list[int]]] = {
    "mmlu": (
        [{"question": "2+2?", "subject": "math", "choices": ["1", "2", "3", "4"], "answer": 3}],
        [3],
        [4],
    ),
    "arc_challenge": (
        [
            {"id": "x1", "question": "Q", "answerKey": "C",
             "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}},
            {"id": "x2", "question": "Q", "answerKey": "4",
             "choices": {"text": list("abcde"), "label": ["1", "2", "3", "4", "5"]}},
        ],
        [2, 3],
        [3, 5],
    ),
    "openbook_qa": (
        [{"id": "o", "question_stem": "The sun is", "answerKey": "A",
          "choices": {"text": list("abcd"), "label": list("ABCD")}}],
        [0],
        [4],
    ),
    "commonsense_qa": (
        [{"id": "c", "question": "Q", "question_concept": "z", "answerKey": "E",
          "choices": {"label": list("ABCDE"), "text": list("abcde")}}],
        [4],
        [5],
    ),
    "boolq": (
        [{"question": "is it", "answer": False, "passage": "P1"},
         {"question": "is it not", "answer": True, "passage": "P2"}],
        [0, 1],
        [2, 2],
    ),
    "winogrande": (
        [{"sentence": "A _ B", "option1": "x", "option2": "y", "answer": "2"},
         {"sentence": "C _ D", "option1": "x", "option2": "y", "answer": "1"}],
        [1, 0],
        [2, 2],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(HUB_SAMPLES))
def test_hub_mappings_read_the_hub_schema(name: str) -> None:
    rows, answers, widths = HUB_SAMPLES[name]
    entry = BUILTIN_TASKS[name]
    task = records_to_task(rows, entry.hub.mapping, name, source="sample")
    if entry.renumber is not None:
        task = entry.renumber(task)
    assert [q.answer for q in task] == answers
    assert [len(q.choices) for q in task] == widths
    if name == "boolq":
        assert task[0].choices == ("no", "yes") and task[1].context == "P2"
    if name == "mmlu":
        assert task[0].subject == "math" and task.ids == ["mmlu-test-math-0000"]
    if name == "openbook_qa":
        assert task[0].question == "The sun is"


def test_hub_ids_follow_the_canonical_files() -> None:
    rows = [
        {"question": f"q{i}", "choices": ["a", "b"], "answer": 0, "subject": s}
        for i, s in enumerate(["alg", "alg", "bio", "alg"])
    ]
    entry = BUILTIN_TASKS["mmlu_dev"]
    task = entry.renumber(records_to_task(rows, entry.hub.mapping, "mmlu_dev", "s"))  # type: ignore[misc]
    assert task.ids == ["mmlu-dev-alg-0000", "mmlu-dev-alg-0001", "mmlu-dev-bio-0000",
                        "mmlu-dev-alg-0002"]  # fmt: skip
    arc = records_to_task(HUB_SAMPLES["arc_challenge"][0], BUILTIN_TASKS["arc_challenge"].hub.mapping,
                          "arc_challenge", "s")  # fmt: skip
    assert arc.ids == ["arc_challenge-00000", "arc_challenge-00001"]


# -- paths, synthetic specs, errors -------------------------------------------------------------


def test_paths_by_suffix(tmp_path: Path) -> None:
    canonical = save_jsonl(synthetic_task(n=5), tmp_path / "five.jsonl")
    assert load_task(canonical).name == "five" and len(load_task(str(canonical))) == 5
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("q,A,B,ans\nWhich?,x,y,B\n")
    with pytest.raises(ConfigError, match="column mapping"):
        load_task(csv_path)
    task = load_task(csv_path, mapping="question=q,choices=A|B,answer=ans", name="tbl")
    assert task.name == "tbl" and task[0].answer == 1
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"q": "Which?", "opts": ["x", "y"], "a": "y"}) + "\n")
    assert load_task(raw, mapping="question=q,choices=opts,answer=a")[0].answer == 1
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        load_task(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="no such file"):
        load_task(tmp_path / "missing.jsonl")


def test_synthetic_specs() -> None:
    task = load_task("synthetic", n=12, seed=3)
    assert task.questions == synthetic_task(n=12, seed=3).questions
    mix = load_task("synthetic:arithmetic+units", n=10, difficulty=1)
    assert mix.name == "synthetic:arithmetic+units"
    assert {q.subject for q in mix} == {"arithmetic", "units"}
    with pytest.raises(ConfigError, match="unknown synthetic family 'poetry'"):
        load_task("synthetic:arithmetic+poetry")
    with pytest.raises(ConfigError, match="not temperature"):
        load_task("synthetic", temperature=2)


def test_unknown_names_and_misplaced_options() -> None:
    with pytest.raises(ConfigError) as err:
        load_task("mmlu_pro")
    msg = str(err.value)
    assert "unknown task 'mmlu_pro'" in msg
    assert all(name in msg for name in BUILTIN_TASKS) and "synthetic" in msg
    with pytest.raises(ConfigError, match="do not apply"):
        load_task("arc_easy", n=5)
    with pytest.raises(ConfigError, match="do not apply"):
        load_task("arc_easy", mapping="question=q,choices=a|b")


def test_dataset_folders_and_hf_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "wino"
    folder.mkdir()
    rows = [{"sentence": "A _ B", "option1": "x", "option2": "y", "answer": "2"}]
    (folder / "validation.jsonl").write_text(json.dumps(rows[0]) + "\n")
    spec = "question=sentence,choices=option1|option2,answer=answer,format=index,index_base=1"
    with pytest.raises(ConfigError, match="column mapping"):
        load_task(folder, split="validation")
    task = load_task(folder, mapping=spec, split="validation")
    assert task.name == "wino" and task[0].answer == 1
    via_prefix = load_task(f"hf:{folder}", mapping=spec, split="validation", name="w")
    assert via_prefix.name == "w" and via_prefix.ids == ["w-00000"]  # generated ids use the name
    assert via_prefix[0].choices == task[0].choices and via_prefix[0].answer == 1
