"""Column mappings: CSV / Parquet tables and Hugging Face datasets from local folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmcal.errors import ConfigError, DataError
from llmcal.tasks import ColumnMapping, load_hf, load_table, parse_mapping


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# -- parse_mapping ----------------------------------------------------------------------------


def test_parse_mapping_full() -> None:
    m = parse_mapping(
        " question=Q , choices=A|B|C|D, answer=label,id=uid,context=passage,subject=topic,"
        "format=letter,index_base=1"
    )
    assert m == ColumnMapping(
        question="Q",
        choices=("A", "B", "C", "D"),
        answer="label",
        id="uid",
        context="passage",
        subject="topic",
        answer_format="letter",
        index_base=1,
    )
    single = parse_mapping("question=q,choices=opts,answer=a,labels=choices.label")
    assert single.choices == "opts" and single.labels == "choices.label"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("", "empty"),
        ("question", "not key=column"),
        ("question=Q,=x", "not key=column"),
        ("question=Q,choice=A|B", "unknown key 'choice'"),
        ("question=Q,question=R,choices=A|B", "given twice"),
        ("question=,choices=A|B", "no value"),
        ("choices=A|B,answer=y", "must name the question column"),
        ("question=Q,choices=A||C", "empty column name"),
        ("question=Q,choices=A|B,index_base=2", "index_base must be 0 or 1"),
        ("question=Q,choices=A|B,answer_format=roman", "answer_format 'roman'"),
        ("question=Q,answer=y", "'choices' is required"),
        ("question=Q,choices=A,answer=y,format=label", "needs a 'labels' column"),
    ],
)
def test_parse_mapping_errors(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_mapping(spec)


def test_single_per_option_column_is_rejected() -> None:
    with pytest.raises(ConfigError, match="at least 2 columns"):
        ColumnMapping(question="q", choices=["A"])


# -- CSV --------------------------------------------------------------------------------------


def test_csv_per_option_columns_with_letters(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "quiz.csv",
        ["Q", "A", "B", "C", "D", "label"],
        [
            ["2+2?", "3", "4", "5", "6", "B"],
            ["Capital of France?", "Rome", "Paris", "Oslo", "", "B"],  # 3 options
            ["Unlabelled", "x", "y", "", "", ""],
            ["Last", "p", "q", "r", "s", "D"],
        ],
    )
    task = load_table(path, "question=Q,choices=A|B|C|D,answer=label")
    assert task.name == "quiz" and task.ids == [f"quiz-{i:05d}" for i in range(4)]
    assert [len(q.choices) for q in task] == [4, 3, 2, 4]
    assert [q.answer for q in task] == [1, 1, None, 3]
    assert task[1].choices == ("Rome", "Paris", "Oslo")
    assert task.metadata == {"source": "file", "path": str(path)}


def test_csv_text_answers_and_extra_fields(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "t.csv",
        ["uid", "text", "o1", "o2", "o3", "gold", "topic", "passage"],
        [
            ["a1", "Colour of grass?", "red", "green", "blue", "green", "nature", "Lawns."],
            ["a2", "Opposite of hot?", "cold", "warm", "wet", "cold", "", ""],
        ],
    )
    m = ColumnMapping("text", ("o1", "o2", "o3"), "gold", id="uid", subject="topic",
                      context="passage")  # fmt: skip
    task = load_table(path, m)
    assert task.ids == ["a1", "a2"] and [q.answer for q in task] == [1, 0]
    assert task[0].subject == "nature" and task[0].context == "Lawns."
    assert task[1].subject is None and task[1].context is None


def test_csv_json_list_column_and_index_bases(tmp_path: Path) -> None:
    rows = [
        ["Pick b", json.dumps(["a", "b", "c"]), "1"],
        ["Pick c", json.dumps(["a", "b", "c"]), "2"],
    ]
    path = write_csv(tmp_path / "l.csv", ["q", "opts", "ans"], rows)
    assert [q.answer for q in load_table(path, "question=q,choices=opts,answer=ans")] == [1, 2]
    one_based = load_table(path, "question=q,choices=opts,answer=ans,index_base=1")
    assert [q.answer for q in one_based] == [0, 1]


def test_auto_refuses_ambiguous_digit_answers(tmp_path: Path) -> None:
    # "2" is option index 2 ("7") or the option whose text is "2" (index 0): genuinely ambiguous
    path = write_csv(tmp_path / "amb.csv", ["q", "A", "B", "C", "ans"], [["?", "2", "5", "7", "2"]])
    with pytest.raises(DataError, match=r"amb\.csv, row 1, column 'ans'.*ambiguous"):
        load_table(path, "question=q,choices=A|B|C,answer=ans")
    assert load_table(path, "question=q,choices=A|B|C,answer=ans,format=text")[0].answer == 0
    assert load_table(path, "question=q,choices=A|B|C,answer=ans,format=index")[0].answer == 2


def test_auto_agreeing_readings_are_fine(tmp_path: Path) -> None:
    # letters that are also the option texts, in order: both readings give the same index
    path = write_csv(tmp_path / "ok.csv", ["q", "A", "B", "ans"], [["?", "A", "B", "B"]])
    assert load_table(path, "question=q,choices=A|B,answer=ans")[0].answer == 1


@pytest.mark.parametrize(
    ("good", "bad", "spec", "column", "needle"),
    [
        # auto reads the first answer ("A") as a letter, so later values are checked as letters
        ("A", ["?", "x", "y", "C"], "", "ans", "letter C is beyond the 2 choices"),
        ("A", ["?", "x", "y", "zzz"], "", "ans", "not a capital letter"),
        ("0", ["?", "x", "y", "5"], "", "ans", "index 5 is outside 0..1"),
        ("x", ["?", "x", "y", "z"], "", "ans", "'z' is not one of the choices"),
        ("1", ["?", "x", "y", "B"], ",format=index", "ans", "not an integer index"),
        ("A", ["", "x", "y", "A"], "", "q", "empty or only whitespace"),
        ("A", ["?", "x", "", "A"], "", "A|B", "at least 2"),
        ("A", ["?", "", "y", "A"], "", "A", "only trailing"),
    ],
)
def test_csv_errors_name_file_row_and_column(
    tmp_path: Path, good: str, bad: list[str], spec: str, column: str, needle: str
) -> None:
    path = write_csv(tmp_path / "e.csv", ["q", "A", "B", "ans"], [["ok?", "x", "y", good], bad])
    with pytest.raises(DataError) as err:
        load_table(path, f"question=q,choices=A|B,answer=ans{spec}")
    msg = str(err.value)
    assert msg.startswith(f"{path}, row 2, column '{column}': "), msg
    assert needle in msg


def test_csv_missing_column_and_bad_files(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", ["q", "A", "B"], [["?", "x", "y"]])
    with pytest.raises(DataError, match=r"m\.csv: column 'label' not found \(columns: q, A, B\)"):
        load_table(path, "question=q,choices=A|B,answer=label")
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "nope.csv", "question=q,choices=A|B")
    odd = tmp_path / "x.xlsx"
    odd.write_text("")
    with pytest.raises(DataError, match="unsupported table type"):
        load_table(odd, "question=q,choices=A|B")
    with pytest.raises(DataError, match="no rows"):
        load_table(write_csv(tmp_path / "h.csv", ["q", "A", "B"], []), "question=q,choices=A|B")


# -- Parquet ----------------------------------------------------------------------------------


def test_parquet_list_column_int_answers(tmp_path: Path) -> None:
    rows = [
        {"question": "1+1?", "choices": ["1", "2", "3"], "answer": 1, "subject": "math"},
        {"question": "Sky?", "choices": ["blue", "green"], "answer": 0, "subject": "nature"},
    ]
    path = write_parquet(tmp_path / "p.parquet", rows)
    task = load_table(path, ColumnMapping("question", "choices", "answer", subject="subject"))
    assert [q.answer for q in task] == [1, 0]
    assert [q.subject for q in task] == ["math", "nature"]
    assert task[0].choices == ("1", "2", "3")


def test_parquet_nested_labels_dotted_paths(tmp_path: Path) -> None:
    rows = [
        {"id": "m1", "q": "Q1", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]},
         "answerKey": "C"},
        {"id": "m2", "q": "Q2", "choices": {"text": ["a", "b", "c", "d"], "label": ["1", "2", "3", "4"]},
         "answerKey": "2"},
    ]  # fmt: skip
    path = write_parquet(tmp_path / "arc.parquet", rows)
    m = "question=q,choices=choices.text,labels=choices.label,answer=answerKey,id=id"
    task = load_table(path, m)
    assert task.ids == ["m1", "m2"] and [q.answer for q in task] == [2, 1]
    assert [len(q.choices) for q in task] == [3, 4]


def test_parquet_bool_answers_without_choice_columns(tmp_path: Path) -> None:
    rows = [
        {"question": "is water wet", "passage": "Water is wet.", "answer": True},
        {"question": "is fire cold", "passage": "Fire is hot.", "answer": False},
    ]
    path = write_parquet(tmp_path / "b.parquet", rows)
    task = load_table(path, "question=question,context=passage,answer=answer,format=bool")
    assert [q.choices for q in task] == [("no", "yes"), ("no", "yes")]
    assert [q.answer for q in task] == [1, 0]
    # auto also reads booleans as no/yes when the two choices are given explicitly
    rows2 = [{**r, "o": ["no", "yes"]} for r in rows]
    auto = load_table(
        write_parquet(tmp_path / "b2.parquet", rows2), "question=question,choices=o,answer=answer"
    )
    assert [q.answer for q in auto] == [1, 0]


def test_parquet_errors(tmp_path: Path) -> None:
    rows = [{"q": "x", "opts": ["a", "b"], "ans": 0}, {"q": "y", "opts": ["a", "b"], "ans": 1}]
    path = write_parquet(tmp_path / "dup.parquet", [{**r, "id": "same"} for r in rows])
    with pytest.raises(
        DataError, match=r"row 2, column 'id': duplicate id 'same' \(first in row 1\)"
    ):
        load_table(path, "question=q,choices=opts,answer=ans,id=id")
    bad = write_parquet(tmp_path / "str.parquet", [{"q": "x", "opts": "a;b", "ans": 0}])
    with pytest.raises(DataError, match=r"row 1, column 'opts': expected a list of options"):
        load_table(bad, "question=q,choices=opts,answer=ans")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_table(broken, "question=q,choices=opts")


def test_noncanonical_jsonl_with_mapping(tmp_path: Path) -> None:
    path = tmp_path / "raw.jsonl"
    path.write_text(
        json.dumps({"sentence": "S _.", "option1": "Ann", "option2": "Bo", "answer": "2"}) + "\n"
    )
    m = ColumnMapping("sentence", ("option1", "option2"), "answer", answer_format="index",
                      index_base=1)  # fmt: skip
    task = load_table(path, m)
    assert task[0].answer == 1 and task[0].choices == ("Ann", "Bo")


# -- Hugging Face datasets from local folders ---------------------------------------------------

pytest.importorskip("datasets", reason="the optional 'datasets' package is not installed")

ARC_ROWS = [
    {"id": "Q1", "question": "Which is a gas?", "answerKey": "B",
     "choices": {"text": ["rock", "steam", "ice"], "label": ["A", "B", "C"]}},
    {"id": "Q2", "question": "Which is hot?", "answerKey": "4",
     "choices": {"text": ["snow", "ice", "frost", "fire"], "label": ["1", "2", "3", "4"]}},
]  # fmt: skip
ARC_MAPPING = ColumnMapping(
    "question", "choices.text", "answerKey", labels="choices.label", id="id"
)


def test_load_hf_from_data_folder(tmp_path: Path) -> None:
    folder = tmp_path / "arc"
    folder.mkdir()
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ARC_ROWS))
    task = load_hf(folder, "test", ARC_MAPPING, cache_dir=tmp_path / "cache")
    assert task.name == "arc" and task.ids == ["Q1", "Q2"]
    assert [q.answer for q in task] == [1, 3]
    assert task.metadata["source"] == "file" and task.metadata["split"] == "test"
    with pytest.raises(DataError, match="cannot load Hugging Face dataset"):
        load_hf(folder, "train", ARC_MAPPING, cache_dir=tmp_path / "cache")


def test_load_hf_from_saved_dataset_and_file(tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict({"validation": datasets.Dataset.from_list(ARC_ROWS)}).save_to_disk(
        str(tmp_path / "saved")
    )
    task = load_hf(tmp_path / "saved", "validation", ARC_MAPPING, name="mine")
    assert task.name == "mine" and [q.answer for q in task] == [1, 3]
    with pytest.raises(DataError, match="no split 'test'; it has validation"):
        load_hf(tmp_path / "saved", "test", ARC_MAPPING)
    pq.write_table(pa.Table.from_pylist(ARC_ROWS), tmp_path / "arc.parquet")
    task = load_hf(tmp_path / "arc.parquet", "test", ARC_MAPPING, cache_dir=tmp_path / "cache")
    assert task.ids == ["Q1", "Q2"] and task[0].choices == ("rock", "steam", "ice")
