"""Prompt templates: the exact rendered text, chat messages and few-shot rules."""

from __future__ import annotations

import pytest

from llmcal.errors import ConfigError
from llmcal.tasks import DEFAULT_TEMPLATE, TEMPLATES, Question, get_template

Q = Question("q1", "What is 2 + 2?", ("3", "4", "5", "22"), 1)
DACA1 = (
    "The following are multiple-choice questions. "
    "Give ONLY the correct option, no other words or explanation:"
)


def shot(i: int) -> Question:
    return Question(f"s{i}", f"Shot {i}?", ("yes", "no"), i % 2)


def test_daca1_exact_text() -> None:
    expected = f"{DACA1}\nQuestion: What is 2 + 2?\nA: 3\nB: 4\nC: 5\nD: 22\nAnswer:"
    assert get_template("daca1").letter_prompt(Q) == expected
    assert DEFAULT_TEMPLATE == "daca1"
    assert get_template("daca1").answer_sep == " "


def test_context_becomes_a_passage_line() -> None:
    q = Question("q", "Is it?", ("no", "yes"), 1, context="The sky is blue.")
    lines = get_template("daca1").letter_prompt(q).split("\n")
    assert lines[1:] == [
        "Passage: The sky is blue.",
        "Question: Is it?",
        "A: no",
        "B: yes",
        "Answer:",
    ]


def test_five_distinct_daca_instructions() -> None:
    instructions = {get_template(f"daca{i}").instruction for i in range(1, 6)}
    assert len(instructions) == 5
    for i in range(1, 6):
        t = get_template(f"daca{i}")
        assert t.letter_prompt(Q).startswith(t.instruction + "\nQuestion: ")


def test_chat_messages() -> None:
    chat = get_template("chat")
    msgs = chat.messages(Q)
    assert msgs == [
        {"role": "user", "content": f"{DACA1}\nQuestion: What is 2 + 2?\nA: 3\nB: 4\nC: 5\nD: 22"}
    ]
    assert chat.answer_sep == ""
    with pytest.raises(ConfigError, match="chat template"):
        chat.letter_prompt(Q)


def test_fewshot_needs_exactly_k_shots() -> None:
    t = get_template("fewshot")
    shots = [shot(i) for i in range(5)]
    text = t.letter_prompt(Q, shots)
    for i, s in enumerate(shots):
        assert f"Question: Shot {i}?\nA: yes\nB: no\nAnswer: {'AB'[s.answer or 0]}\n" in text
    # shots come before the question, which ends the prompt without an answer
    assert text.index("Shot 4?") < text.index("What is 2 + 2?")
    assert text.endswith("D: 22\nAnswer:")
    with pytest.raises(ConfigError, match="needs 5"):
        t.letter_prompt(Q, shots[:4])
    assert get_template("fewshot-2").shots == 2
    get_template("fewshot-2").letter_prompt(Q, shots[:2])
    with pytest.raises(ConfigError, match="zero-shot"):
        get_template("daca1").letter_prompt(Q, shots[:1])


def test_unlabelled_shot_is_rejected() -> None:
    bad = [Question(f"u{i}", "?", ("a", "b")) for i in range(2)]
    with pytest.raises(ConfigError, match="no answer"):
        get_template("fewshot-2").letter_prompt(Q, bad)


def test_cloze() -> None:
    ctx, conts = get_template("daca1").cloze(Q)
    assert ctx == "Question: What is 2 + 2?\nAnswer:"
    assert conts == [" 3", " 4", " 5", " 22"]


@pytest.mark.parametrize("name", ["nope", "fewshot-0", "fewshot-x", "daca6"])
def test_unknown_template(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown template"):
        get_template(name)
    assert name not in TEMPLATES
