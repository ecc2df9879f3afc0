"""Matchers (hand cases, F1 against a hand computation) and labels from files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmcal.answers import Answers
from llmcal.errors import ConfigError, DataError
from llmcal.judge import (
    get_matcher,
    judge_answers,
    labels_from_file,
    last_number,
    match_all,
    normalize_answer,
    token_f1,
)


def answers(texts: list[str], refs: list[tuple[str, ...]]) -> Answers:
    n = len(texts)
    return Answers(
        ids=tuple(f"q{i}" for i in range(n)),
        questions=("?",) * n,
        references=tuple(refs),
        prompts=("p",) * n,
        texts=tuple(texts),
        token_ids=((1,),) * n,
        token_logprobs=((-0.1,),) * n,
        stop_reasons=("eos",) * n,
        correct=np.full(n, -1),
    )


def test_squad_normalisation() -> None:
    assert normalize_answer("  The  Eiffel-Tower!! ") == "eiffeltower"
    assert normalize_answer("A cat, an apple and THE dog.") == "cat apple and dog"
    assert normalize_answer("Theatre") == "theatre"  # "the" only as a word


@pytest.mark.parametrize(
    ("matcher", "answer", "refs", "expected"),
    [
        ("exact", "the Onion.", ("Onion",), True),
        ("exact", "Onions", ("Onion",), False),
        ("exact", "Bulb onion", ("Onion", "bulb onion"), True),  # any alias
        ("contains", "It is Paris, France", ("Paris",), True),
        ("contains", "Parisian", ("Paris",), False),  # whole words only
        ("contains", "cat", ("a",), False),  # the reference normalises to nothing
        ("contains", "New York City", ("new york",), True),
        ("f1", "the big red dog", ("red dog",), True),  # F1 = 0.8
        ("f1:0.9", "the big red dog", ("red dog",), False),
        ("f1", "blue cat", ("red dog",), False),
        ("numeric", "The answer is 1,000 metres", ("1000",), True),
        ("numeric", "12 or 13", ("13",), True),  # the last number
        ("numeric", "12 or 13", ("12",), False),
        ("numeric", "3.50", ("3.5",), True),
        ("numeric", "no idea", ("3",), False),
    ],
)
def test_matchers_on_hand_cases(matcher: str, answer: str, refs: tuple, expected: bool) -> None:
    assert get_matcher(matcher)(answer, refs) is expected


def test_token_f1_equals_a_hand_computation() -> None:
    # answer tokens: big red red dog (the article goes); reference: red dog house
    # common = {red: 1, dog: 1} → 2; precision 2/4, recall 2/3, F1 = 2·(1/2)(2/3)/(1/2+2/3) = 4/7
    assert token_f1("The big red red dog", "red dog house") == pytest.approx(4 / 7)
    assert token_f1("", "") == 1.0 and token_f1("a", "dog") == 0.0
    assert last_number("from -2.5 to 1,234,567") == 1234567.0
    assert last_number("none") is None


def test_matcher_specs() -> None:
    assert get_matcher("f1").spec == "f1:0.5" and get_matcher("f1:0.75").threshold == 0.75
    for bad in ("fuzzy", "f1:2", "f1:x", "exact:1"):
        with pytest.raises(ConfigError):
            get_matcher(bad)


def test_judge_answers_records_the_matcher() -> None:
    a = judge_answers(answers(["Paris", "paris!", "Lyon"], [("Paris",)] * 3), "exact")
    assert a.correct.tolist() == [1, 1, 0] and a.meta["judge"]["matcher"] == "exact"
    acc = match_all(answers(["It is Paris", "42"], [("Paris",), ("42",)]))
    assert acc == {"exact": 0.5, "contains": 1.0, "f1:0.5": 1.0, "numeric": 0.5}
    with pytest.raises(DataError, match="no reference answers"):
        judge_answers(answers(["x"], [()]))


def test_labels_from_csv_and_jsonl(tmp_path: Path) -> None:
    a = answers(["x", "y", "z"], [("r",)] * 3)
    csv = tmp_path / "grades.csv"
    csv.write_text("id,correct\nq2,no\nq0,1\nq1,True\n", encoding="utf-8")
    judged = labels_from_file(a, csv)
    assert judged.correct.tolist() == [1, 1, 0] and judged.meta["judge"]["kind"] == "labels"
    jl = tmp_path / "grades.jsonl"
    jl.write_text('{"id": "q0", "correct": false}\n{"id": "q1", "correct": 1}\n'
                  '{"id": "q2", "correct": "yes"}\n', encoding="utf-8")  # fmt: skip
    assert labels_from_file(a, jl).correct.tolist() == [0, 1, 1]


def test_label_file_errors(tmp_path: Path) -> None:
    a = answers(["x", "y"], [("r",)] * 2)
    path = tmp_path / "g.csv"
    path.write_text("id,correct\nq0,1\nq9,0\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"1 answer id\(s\) have no label .*'q1'.*1 label id"):
        labels_from_file(a, path)
    path.write_text("id,correct\nq0,1\nq1,maybe\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3: 'correct' must be"):
        labels_from_file(a, path)
    path.write_text("id,correct\nq0,1\nq0,0\n", encoding="utf-8")
    with pytest.raises(DataError, match="labelled twice"):
        labels_from_file(a, path)
    path.write_text("ident,ok\nq0,1\n", encoding="utf-8")
    with pytest.raises(DataError, match="must name the columns 'id' and 'correct'"):
        labels_from_file(a, path)
