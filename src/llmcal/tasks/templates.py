"""Named prompt templates: the five DACA instructions, few-shot, chat and the CFT format.

A template renders a :class:`Question` into the text a scorer feeds the model:

* letter mode: a prompt ending in ``"Answer:"`` (plain) or in the chat template's assistant
  header (chat); the scorer then reads the next-token logits of the option letters, joined to
  the prompt by :attr:`Template.answer_sep` (``" "`` for plain text, ``""`` after a chat header).
* cloze mode: a context and one continuation per option, scored by log-likelihood.

The template name is recorded in ``Scores.meta["template"]`` so every number is traceable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmcal.errors import ConfigError
from llmcal.tasks.types import Question

#: DACA paper, Table 5 (methods/daca.md §3.1). #1 follows the paper's wording ("multiple-choice");
#: the authors' code says "multi choice".
DACA_INSTRUCTIONS: tuple[str, ...] = (
    "The following are multiple-choice questions. Give ONLY the correct option, no other words or explanation:",
    "Answer the following multiple choice questions by selecting ONLY the correct option:",
    "For each of the following multiple choice questions, provide just the correct letter:",
    "Select the correct answer for each of the following questions:",
    "Choose the right option for each multiple-choice question below. Respond with the letter only:",
)

Message = dict[str, str]

#: The CFT / RCFT text format (cft_rcft.md §4.1): the authors' ``format_chat_template`` user
#: content U(x), flattened as ``"### Question: " + U(x) + "\n ### Answer:"``.
CFT_INSTRUCTION = "Answer with only a single letter:"


@dataclass(frozen=True)
class Template:
    """A named way of turning a Question into model input."""

    name: str
    instruction: str
    chat: bool = False
    shots: int = 0
    #: "daca" (the DACA/BLoB layout) or "cft" (cft_rcft.md §4.1)
    style: str = "daca"
    #: text between ``Answer:`` and the letter; None: " " for plain text, "" after a chat header
    sep: str | None = None

    @property
    def answer_sep(self) -> str:
        """Text between the prompt and the option letter (``" A"`` after ``Answer:``)."""
        if self.sep is not None:
            return self.sep
        return "" if self.chat else " "

    def cft_prompt(self, q: Question) -> str:
        """``### Question: Question: …\n\nOptions:\nA. …\n\n<instruction>\n ### Answer:``."""
        lines = [f"Passage: {q.context}", ""] if q.context else []
        lines += [f"Question: {q.question}", "", "Options:"]
        lines += [
            f"{letter}. {choice}" for letter, choice in zip(q.letters, q.choices, strict=True)
        ]
        lines += ["", self.instruction]
        return "### Question: " + "\n".join(lines) + "\n ### Answer:"

    def question_block(self, q: Question, with_answer: bool = False) -> str:
        """``[Passage: …\\n]Question: …\\nA: …\\n…\\nAnswer:`` (plus the letter for a shot)."""
        lines = []
        if q.context:
            lines.append(f"Passage: {q.context}")
        lines.append(f"Question: {q.question}")
        lines.extend(
            f"{letter}: {choice}" for letter, choice in zip(q.letters, q.choices, strict=True)
        )
        answer = "Answer:"
        if with_answer:
            if q.answer is None:
                raise ConfigError(f"few-shot example {q.id!r} has no answer")
            answer += f" {q.letters[q.answer]}"
        lines.append(answer)
        return "\n".join(lines)

    def _body(self, q: Question, shots: Sequence[Question]) -> str:
        parts = [self.instruction] if self.instruction else []
        parts.extend(self.question_block(s, with_answer=True) + "\n" for s in shots)
        block = self.question_block(q)
        if self.chat:  # the chat header takes the place of "Answer:"
            block = block.removesuffix("\nAnswer:")
        parts.append(block)
        return "\n".join(parts)

    def letter_prompt(self, q: Question, shots: Sequence[Question] = ()) -> str:
        """Plain-text prompt for letter mode (not for chat templates: see :meth:`messages`)."""
        self._check_shots(shots)
        if self.chat:
            raise ConfigError(
                f"template {self.name!r} is a chat template; render it with messages()"
            )
        if self.style == "cft":
            return self.cft_prompt(q)
        return self._body(q, shots)

    def messages(self, q: Question, shots: Sequence[Question] = ()) -> list[Message]:
        """Chat messages for letter mode; the assistant's reply should start with the letter."""
        self._check_shots(shots)
        return [{"role": "user", "content": self._body(q, shots)}]

    def cloze(self, q: Question, shots: Sequence[Question] = ()) -> tuple[str, list[str]]:
        """Context and per-option continuations for cloze scoring (``"Answer:"`` + ``" text"``).

        Few-shot examples come first, each as its own context and correct continuation followed
        by a blank line (lm-evaluation-harness's ``fewshot_delimiter``); no instruction.
        """
        self._check_shots(shots)
        ctx = ""
        for s in shots:
            if s.answer is None:
                raise ConfigError(f"few-shot example {s.id!r} has no answer")
            ctx += self._cloze_context(s) + f" {s.choices[s.answer]}\n\n"
        ctx += self._cloze_context(q)
        return ctx, [f" {c}" for c in q.choices]

    @staticmethod
    def _cloze_context(q: Question) -> str:
        ctx = f"Passage: {q.context}\n" if q.context else ""
        return ctx + f"Question: {q.question}\nAnswer:"

    def _check_shots(self, shots: Sequence[Question]) -> None:
        if self.shots and len(shots) != self.shots:
            raise ConfigError(
                f"template {self.name!r} needs {self.shots} few-shot examples, got {len(shots)}"
            )
        if not self.shots and shots:
            raise ConfigError(f"template {self.name!r} is zero-shot; do not pass examples")


TEMPLATES: dict[str, Template] = {
    **{f"daca{i + 1}": Template(f"daca{i + 1}", text) for i, text in enumerate(DACA_INSTRUCTIONS)},
    "fewshot": Template("fewshot", DACA_INSTRUCTIONS[0], shots=5),
    "chat": Template("chat", DACA_INSTRUCTIONS[0], chat=True),
    # the authors' "### Answer:{letter}" (bare letter) and the space-prefixed variant (§7.8)
    "cft": Template("cft", CFT_INSTRUCTION, style="cft", sep=""),
    "cft-space": Template("cft-space", CFT_INSTRUCTION, style="cft", sep=" "),
}
DEFAULT_TEMPLATE = "daca1"


def get_template(name: str) -> Template:
    """Look up a template by name; ``fewshot-K`` gives K shots."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    if name.startswith("fewshot-") and name[8:].isdigit() and int(name[8:]) > 0:
        return Template(name, DACA_INSTRUCTIONS[0], shots=int(name[8:]))
    raise ConfigError(
        f"unknown template {name!r}; choose one of {', '.join(TEMPLATES)} or fewshot-K"
    )
