"""Open-ended tasks: the JSONL loader's errors, the built-in files and the synthetic generator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmcal.errors import ConfigError, DataError
from llmcal.tasks import (
    OpenTask,
    load_jsonl,
    load_open_jsonl,
    load_open_task,
    load_task,
    save_open_jsonl,
    synthetic_open_task,
    synthetic_task,
)


def write(tmp_path: Path, *rows: object) -> Path:
    path = tmp_path / "open.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"id": "q1", "question": "Capital of France?", "answers": ["Paris", "City of Paris"]}


def test_round_trip(tmp_path: Path) -> None:
    task = load_open_jsonl(write(tmp_path, GOOD, {**GOOD, "id": "q2", "subject": "geo"}))
    assert task.ids == ["q1", "q2"]
    assert task[0].reference == "Paris" and task[0].answers == ("Paris", "City of Paris")
    again = load_open_jsonl(save_open_jsonl(task, tmp_path / "again.jsonl"))
    assert [q.to_dict() for q in again] == [q.to_dict() for q in task]


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        ({**GOOD, "choices": ["a", "b"]}, "both 'choices' and 'answers'"),
        ({**GOOD, "answers": []}, "field 'answers' is empty"),
        ({**GOOD, "answers": ["Paris", " "]}, "item 1 is an empty string"),
        ({**GOOD, "answers": "Paris"}, "must be a list of strings"),
        ({"id": "q1", "question": "x"}, "'answers' is missing"),
        ({**GOOD, "extra": 1}, "field 'extra' is not part"),
        ({**GOOD, "question": ""}, "'question' must be a non-empty string"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, row: dict, fragment: str) -> None:
    path = write(tmp_path, GOOD | {"id": "q0"}, row)
    with pytest.raises(DataError) as info:
        load_open_jsonl(path)
    assert f"{path}, line 2" in str(info.value) and fragment in str(info.value)


def test_multiple_choice_loader_refuses_open_rows(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"line 1: the row has 'answers' and no 'choices'"):
        load_jsonl(write(tmp_path, GOOD))
    with pytest.raises(DataError, match="both 'choices' and 'answers'"):
        load_jsonl(write(tmp_path, {**GOOD, "choices": ["a", "b"], "answer": 0}))


def test_builtin_open_tasks(data_dir: Path) -> None:
    trivia = load_open_task("triviaqa", data_dir=data_dir)
    wiki = load_open_task("wikidata", data_dir=data_dir)
    assert (len(trivia), len(wiki)) == (3000, 8000)
    assert trivia.name == "triviaqa" and trivia[1].reference == "Antelope"
    assert wiki[0].question.endswith(" is") and len(wiki[0].answers) >= 1
    with pytest.raises(ConfigError, match="open-ended task"):
        load_task("triviaqa", data_dir=data_dir)
    with pytest.raises(ConfigError, match="multiple-choice task"):
        load_open_task("arc_easy", data_dir=data_dir)


def test_builtin_without_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"needs its file triviaqa.jsonl .*--data-dir"):
        load_open_task("triviaqa", data_dir=tmp_path)


def test_subset_and_shots_are_seeded_and_disjoint() -> None:
    task = synthetic_open_task(n=40, seed=1)
    shots, rest = task.shots_split(3, seed=0)
    assert len(shots) == 3 and len(rest) == 37
    assert not {s.id for s in shots} & set(rest.ids)
    assert rest.subset(10, seed=2).ids == rest.subset(10, seed=2).ids
    assert rest.subset(5, seed=2).ids == rest.subset(10, seed=2).ids[:5]


def test_synthetic_open_is_deterministic_and_matches_the_mc_answers() -> None:
    a, b = synthetic_open_task(n=60, seed=3), synthetic_open_task(n=60, seed=3)
    assert [q.to_dict() for q in a] == [q.to_dict() for q in b]
    assert isinstance(a, OpenTask) and a.name == "synthetic-open"
    mc = synthetic_task(n=60, seed=3)
    for q_open, q_mc in zip(a, mc, strict=True):
        assert q_mc.answer is not None
        assert q_open.reference == q_mc.choices[q_mc.answer]  # same computed answer
        assert "A:" not in q_open.question  # asked without options
    by_family = {q.subject: q for q in a}
    small = [q for q in a if q.reference.isdigit() and int(q.reference) <= 20]
    assert small and all(len(q.answers) == 2 and q.answers[1].isalpha() for q in small)
    order = by_family["ordering"]
    assert order.answers[1] == order.reference.replace(",", "")  # "3 5 9" spelling
    assert by_family["calendar"].answers[1] == by_family["calendar"].reference[:3]
    comparison = by_family["comparison"]
    assert comparison.reference in comparison.question


def test_synthetic_open_spec_in_load_open_task() -> None:
    task = load_open_task("synthetic-open:arithmetic+units", n=8, seed=0)
    assert {q.subject for q in task} == {"arithmetic", "units"} and len(task) == 8
    with pytest.raises(ConfigError, match="unknown synthetic family"):
        load_open_task("synthetic-open:nope")
    with pytest.raises(ConfigError, match="open-ended task"):
        load_task("synthetic-open")
