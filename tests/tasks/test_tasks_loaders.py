"""Canonical JSONL: round trips and an error message naming file, line and field for each fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmcal.errors import DataError
from llmcal.tasks import Question, Task, load_jsonl, save_jsonl


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rec(**kw: object) -> str:
    base: dict[str, object] = {"id": "a", "question": "Q?", "choices": ["x", "y"], "answer": 0}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


def test_round_trip(tmp_path: Path) -> None:
    task = Task(
        "demo",
        (
            Question("a", "Plain?", ("x", "y", "z"), 2),
            Question("b", "Unlabelled, ünïcode ✓", ("1", "2")),
            Question("c", "With passage", ("no", "yes"), 1, context="Some text.\nTwo lines."),
            Question("d", "With subject", ("p", "q", "r", "s"), 0, subject="algebra"),
            # U+2028 is a line break to str.splitlines but legal inside a JSON string
            Question("e", "Line\u2028separator\x85next", ("a", "b"), 1),
        ),
    )
    path = save_jsonl(task, tmp_path / "sub" / "demo.jsonl")
    back = load_jsonl(path)
    assert back.name == "demo" and back.questions == task.questions
    assert back.metadata["path"] == str(path)
    # atomic write leaves no temporary files behind, and overwriting works
    save_jsonl(task[:2], path)
    assert [p.name for p in path.parent.iterdir()] == ["demo.jsonl"]
    assert len(load_jsonl(path)) == 2
    # one JSON object per line, unicode kept readable
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and "ünïcode ✓" in lines[1]


def test_blank_lines_and_generated_ids(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "gen.jsonl",
        [rec(id=...), "", "   ", rec(id=..., answer=1), rec(id="given")],
    )
    task = load_jsonl(path, name="mine")
    assert task.name == "mine"
    # generated ids carry the 1-based line number
    assert task.ids == ["mine-00001", "mine-00004", "given"]
    assert [q.answer for q in task] == [0, 1, 0]


def test_answer_null_and_missing_mean_unlabelled(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "u.jsonl", [rec(id="a", answer=None), rec(id="b", answer=...)])
    task = load_jsonl(path)
    assert [q.answer for q in task] == [None, None] and not task.labelled


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([json.loads(rec(id="a")), json.loads(rec(id="b"))]))
    assert load_jsonl(path).ids == ["a", "b"]


BAD_LINES = [
    ("{not json", 2, "invalid JSON", None),
    ('["a list"]', 2, "JSON object", None),
    (rec(question=...), 2, "missing", "question"),
    (rec(question=3), 2, "must be a string", "question"),
    (rec(choices=...), 2, "missing", "choices"),
    (rec(choices="x|y"), 2, "list of strings", "choices"),
    (rec(choices=["x", 2]), 2, "list of strings", "choices"),
    (rec(choices=["only"]), 2, "at least 2", "choices"),
    (rec(answer=2), 2, "outside 0..1", "answer"),
    (rec(answer=-1), 2, "outside 0..1", "answer"),
    (rec(answer="B"), 2, "integer index", "answer"),
    (rec(answer=True), 2, "integer index", "answer"),
    (rec(answer=1.0), 2, "integer index", "answer"),
    (rec(id=7), 2, "non-empty string", "id"),
    (rec(id=""), 2, "non-empty string", "id"),
    (rec(context=["p"]), 2, "string or null", "context"),
    (rec(subject=1), 2, "string or null", "subject"),
    (rec(question="  \t"), 2, "empty or only whitespace", "question"),
    (rec(question=""), 2, "empty or only whitespace", "question"),
    (rec(choices=["x", " "]), 2, "option 1 is empty or only whitespace", "choices"),
    (rec(choices=["", "y"]), 2, "option 0 is empty", "choices"),
    (rec(id="  "), 2, "non-empty string", "id"),
    (rec(id="first"), 2, "duplicate id 'first' (first used on line 1)", "id"),
]


@pytest.mark.parametrize(("line", "lineno", "problem", "field"), BAD_LINES)
def test_error_names_file_line_and_field(
    tmp_path: Path, line: str, lineno: int, problem: str, field: str | None
) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [rec(id="first"), line, rec(id="third")])
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}, line {lineno}: "), msg
    assert problem in msg
    if field is not None:
        assert f"'{field}'" in msg


def test_fields_beyond_the_schema_are_kept_as_extra_metadata(tmp_path: Path) -> None:
    line = rec(id="a", source="exam-2019", difficulty=3, tags=["x"])
    path = write_lines(tmp_path / "meta.jsonl", [line, rec(id="b")])
    task = load_jsonl(path)
    assert dict(task[0].extra) == {"source": "exam-2019", "difficulty": 3, "tags": ["x"]}
    assert dict(task[1].extra) == {}
    again = load_jsonl(save_jsonl(task, tmp_path / "again.jsonl"))
    assert again[0].to_dict() == json.loads(line) | {"answer": again[0].answer}
    assert dict(again[0].extra) == dict(task[0].extra)


def test_deeply_nested_json_is_a_data_error_not_a_recursion_error(tmp_path: Path) -> None:
    deep = rec(id="a", meta="X").replace('"X"', "[" * 100_000 + "]" * 100_000)
    for name, text in (("lines.jsonl", deep), ("array.json", f"[{deep}]")):
        path = tmp_path / name
        path.write_text(text + "\n")
        with pytest.raises(DataError, match="nested deeper than"):
            load_jsonl(path)


def test_error_line_number_counts_blank_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "b.jsonl", ["", rec(id="a"), "", rec(id="b", answer=5)])
    with pytest.raises(DataError, match=r"b\.jsonl, line 4: field 'answer'"):
        load_jsonl(path)


def test_missing_empty_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_jsonl(tmp_path / "absent.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no questions"):
        load_jsonl(empty)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(rec(question="cafe").replace("cafe", "caf\u00e9").encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        load_jsonl(latin)
