"""Built-in tasks and :func:`load_task`, the one entry point for names, files and synthetic data.

A built-in name resolves to its canonical JSONL file in the data directory (``data_dir`` or
``$LLMCAL_DATA_DIR``) when that file exists, and otherwise to its Hugging Face hub dataset.
Questions loaded from the hub get the same ids as the canonical files, so Scores computed from
either source align.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmcal.errors import ConfigError, DataError, LLMCalError
from llmcal.tasks.loaders import ColumnMapping, load_hf, load_jsonl, load_table, parse_mapping
from llmcal.tasks.synthetic import parse_families, synthetic_task
from llmcal.tasks.types import Task

DATA_DIR_ENV = "LLMCAL_DATA_DIR"
SYNTHETIC_OPTIONS = frozenset({"n", "seed", "difficulty", "families", "n_choices"})


@dataclass(frozen=True)
class HubSource:
    """Where a built-in task lives on the Hugging Face hub and how its columns map."""

    dataset: str
    split: str
    mapping: ColumnMapping
    config: str | None = None


@dataclass(frozen=True)
class BuiltinTask:
    """A named task: its canonical file name, hub source and a one-line description."""

    name: str
    filename: str
    hub: HubSource
    description: str
    renumber: Callable[[Task], Task] | None = None


def _mmlu_ids(split: str) -> Callable[[Task], Task]:
    """Ids ``mmlu-<split>-<subject>-NNNN`` counted per subject, as in the canonical files."""

    def renumber(task: Task) -> Task:
        seen: Counter[str] = Counter()
        questions = []
        for q in task:
            subject = q.subject or "unknown"
            questions.append(replace(q, id=f"mmlu-{split}-{subject}-{seen[subject]:04d}"))
            seen[subject] += 1
        return replace(task, questions=tuple(questions))

    return renumber


_MMLU = ColumnMapping(question="question", choices="choices", answer="answer", subject="subject",
                      answer_format="index")  # fmt: skip
_LABELLED = ColumnMapping(
    question="question", choices="choices.text", labels="choices.label", answer="answerKey"
)

BUILTIN_TASKS: dict[str, BuiltinTask] = {
    t.name: t
    for t in (
        BuiltinTask(
            "mmlu",
            "mmlu_test.jsonl",
            HubSource("cais/mmlu", "test", _MMLU, config="all"),
            "MMLU test set, 57 subjects (subject kept)",
            renumber=_mmlu_ids("test"),
        ),
        BuiltinTask(
            "mmlu_dev",
            "mmlu_dev.jsonl",
            HubSource("cais/mmlu", "dev", _MMLU, config="all"),
            "MMLU dev set, 5 questions per subject (few-shot examples)",
            renumber=_mmlu_ids("dev"),
        ),
        BuiltinTask(
            "arc_challenge",
            "arc_challenge.jsonl",
            HubSource("allenai/ai2_arc", "test", _LABELLED, config="ARC-Challenge"),
            "AI2 ARC Challenge set (test), grade-school science",
        ),
        BuiltinTask(
            "arc_easy",
            "arc_easy.jsonl",
            HubSource("allenai/ai2_arc", "test", _LABELLED, config="ARC-Easy"),
            "AI2 ARC Easy set (test)",
        ),
        BuiltinTask(
            "openbook_qa",
            "openbook_qa.jsonl",
            HubSource(
                "allenai/openbookqa",
                "test",
                replace(_LABELLED, question="question_stem"),
                config="main",
            ),
            "OpenBookQA (test); the question stem is a sentence to complete",
        ),
        BuiltinTask(
            "commonsense_qa",
            "commonsense_qa.jsonl",
            HubSource("tau/commonsense_qa", "validation", _LABELLED),
            "CommonsenseQA (dev)",
        ),
        BuiltinTask(
            "boolq",
            "boolq.jsonl",
            HubSource(
                "google/boolq",
                "validation",
                ColumnMapping(
                    question="question", context="passage", answer="answer", answer_format="bool"
                ),
            ),
            "BoolQ (dev): yes/no questions about a passage",
        ),
        BuiltinTask(
            "winogrande",
            "winogrande.jsonl",
            HubSource(
                "allenai/winogrande",
                "validation",
                ColumnMapping(
                    question="sentence",
                    choices=("option1", "option2"),
                    answer="answer",
                    answer_format="index",
                    index_base=1,
                ),
                config="winogrande_xl",
            ),
            "WinoGrande (dev): fill the blank '_' with one of two options",
        ),
    )
}


@dataclass(frozen=True)
class OpenBuiltinTask:
    """A named open-ended (free-form answer) task: its canonical file and a description."""

    name: str
    filename: str
    description: str


OPEN_TASKS: dict[str, OpenBuiltinTask] = {
    t.name: t
    for t in (
        OpenBuiltinTask(
            "triviaqa",
            "triviaqa.jsonl",
            "TriviaQA (3,000 validation questions), free-form answers with alias lists",
        ),
        OpenBuiltinTask(
            "wikidata",
            "wikidata.jsonl",
            "BIG-bench qa_wikidata (8,000), sentences to complete, one reference answer",
        ),
    )
}


def known_tasks() -> list[str]:
    """Names :func:`load_task` accepts besides paths (built-ins and the synthetic spec)."""
    return [*BUILTIN_TASKS, "synthetic", "synthetic:<family>+<family>", "hf:<dataset>"]


def known_open_tasks() -> list[str]:
    """Names :func:`load_open_task` accepts besides paths."""
    return [*OPEN_TASKS, "synthetic-open", "synthetic-open:<family>+<family>"]


def load_open_task(
    name_or_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    **kwargs: Any,
) -> Any:
    """Load an open-ended task: a built-in name, an open-ended JSONL file or ``synthetic-open``.

    ``kwargs`` (n, seed, difficulty, families) apply to ``synthetic-open[:families]`` only.
    """
    from llmcal.tasks.openended import load_open_jsonl
    from llmcal.tasks.synthetic import synthetic_open_task

    spec = os.fspath(name_or_path)
    if spec == "synthetic-open" or spec.startswith("synthetic-open:"):
        unknown = sorted(set(kwargs) - {"n", "seed", "difficulty", "families"})
        if unknown:
            raise ConfigError(f"synthetic-open takes n, seed, difficulty, families; not {unknown}")
        if spec.startswith("synthetic-open:"):
            kwargs = {**kwargs, "families": parse_families(spec.split(":", 1)[1])}
        task = synthetic_open_task(**kwargs)
        return replace(task, name=name) if name else task
    _no_options(spec, **kwargs)
    if spec in OPEN_TASKS:
        entry = OPEN_TASKS[spec]
        folder = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
        if folder is None or not (Path(folder) / entry.filename).is_file():
            where = "no data directory given" if folder is None else f"{folder} lacks it"
            raise DataError(
                f"open-ended task {spec!r} needs its file {entry.filename} ({where}); pass "
                f"--data-dir DIR or set {DATA_DIR_ENV}=DIR to the folder holding it"
            )
        task = load_open_jsonl(Path(folder) / entry.filename, name=name or entry.name)
        return replace(task, metadata={**task.metadata, "task": entry.name})
    if spec in BUILTIN_TASKS or spec == "synthetic" or spec.startswith("synthetic:"):
        raise ConfigError(
            f"{spec!r} is a multiple-choice task; score it with `llmcal score`. Open-ended "
            f"tasks: {', '.join(known_open_tasks())}, or an open-ended .jsonl file"
        )
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() not in (".jsonl", ".json"):
            raise DataError(
                f"{path}: open-ended tasks are read from canonical .jsonl files "
                '({"id", "question", "answers": [...]} per line)'
            )
        return load_open_jsonl(path, name=name)
    if os.sep in spec or "/" in spec or path.suffix:
        raise DataError(f"{spec}: no such file or directory")
    raise ConfigError(
        f"unknown open-ended task {spec!r}; choose one of {', '.join(known_open_tasks())}, or "
        "give a path to an open-ended .jsonl file"
    )


def load_task(
    name_or_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    mapping: ColumnMapping | str | None = None,
    name: str | None = None,
    split: str | None = None,
    config: str | None = None,
    **kwargs: Any,
) -> Task:
    """Load a built-in task, a data file, ``hf:<dataset>`` or ``synthetic[:families]``.

    ``mapping`` (a :class:`ColumnMapping` or ``--columns`` string) is needed for CSV / Parquet
    files, dataset folders and ``hf:`` datasets; ``split`` / ``config`` apply to ``hf:`` and
    dataset folders; ``kwargs`` (n, seed, difficulty, families, n_choices) to synthetic tasks.
    """
    spec = os.fspath(name_or_path)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        _no_options(spec, mapping=mapping, split=split, config=config)
        return _synthetic(spec, name, kwargs)
    _no_options(spec, **kwargs)
    if spec in BUILTIN_TASKS:
        _no_options(spec, mapping=mapping, split=split, config=config)
        return _builtin(BUILTIN_TASKS[spec], data_dir, name)
    if spec in OPEN_TASKS or spec == "synthetic-open" or spec.startswith("synthetic-open:"):
        raise ConfigError(
            f"{spec!r} is an open-ended task (free-form answers, no options): generate answers "
            "with `llmcal generate`, then `llmcal confidence`"
        )
    if spec.startswith("hf:"):
        task = load_hf(
            spec[3:], split or "test", _need_mapping(spec, mapping), config=config, name=name
        )
        return task
    path = Path(spec)
    if path.is_file():
        _no_options(spec, split=split, config=config)
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json") and mapping is None:
            return load_jsonl(path, name=name)
        if suffix in (".jsonl", ".json", ".csv", ".tsv", ".parquet"):
            return load_table(path, _need_mapping(spec, mapping), name=name)
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use .jsonl (canonical), or "
            ".csv / .tsv / .parquet with a column mapping"
        )
    if path.is_dir():
        return load_hf(
            path, split or "test", _need_mapping(spec, mapping), config=config, name=name
        )
    if os.sep in spec or "/" in spec or path.suffix:
        raise DataError(f"{spec}: no such file or directory")
    raise ConfigError(
        f"unknown task {spec!r}; choose one of {', '.join(known_tasks())}, or give a path to a "
        ".jsonl / .csv / .parquet file"
    )


def _no_options(spec: str, **options: Any) -> None:
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise ConfigError(f"option(s) {', '.join(given)} do not apply to task {spec!r}")


def _need_mapping(spec: str, mapping: ColumnMapping | str | None) -> ColumnMapping:
    if mapping is None:
        raise ConfigError(
            f"{spec}: say which columns hold what with a column mapping, e.g. "
            "--columns 'question=Q,choices=A|B|C|D,answer=label'"
        )
    return parse_mapping(mapping) if isinstance(mapping, str) else mapping


def _synthetic(spec: str, name: str | None, options: dict[str, Any]) -> Task:
    unknown = sorted(set(options) - SYNTHETIC_OPTIONS)
    if unknown:
        raise ConfigError(
            f"synthetic tasks take {', '.join(sorted(SYNTHETIC_OPTIONS))}; not {', '.join(unknown)}"
        )
    if spec.startswith("synthetic:"):
        if "families" in options:
            raise ConfigError(f"give the families either in {spec!r} or as families=, not both")
        options = {**options, "families": parse_families(spec.split(":", 1)[1])}
    task = synthetic_task(**options)
    return replace(task, name=name) if name else task


def _builtin(entry: BuiltinTask, data_dir: str | os.PathLike[str] | None, name: str | None) -> Task:
    folder = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if folder is not None:
        path = Path(folder) / entry.filename
        if path.is_file():
            task = load_jsonl(path, name=name or entry.name)
            return replace(task, metadata={**task.metadata, "task": entry.name})
        local = f"{path} does not exist"
    else:
        local = "no data directory given"
    hub = entry.hub
    where = f"{hub.dataset}" + (f" (config {hub.config}, split {hub.split})" if hub.config else
                                f" (split {hub.split})")  # fmt: skip
    try:
        task = load_hf(hub.dataset, hub.split, hub.mapping, config=hub.config, name=entry.name)
    except LLMCalError as exc:
        cause = exc.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
        raise DataError(
            f"task {entry.name!r} is not available: no local copy ({local}) and the Hugging Face "
            f"hub copy {where} could not be loaded ({reason}). Fix: pass --data-dir DIR or set "
            f"{DATA_DIR_ENV}=DIR to a folder holding {entry.filename}, or go online (unset "
            "HF_HUB_OFFLINE; needs pip install 'llmcal[hub]')"
        ) from exc
    if entry.renumber is not None:
        task = entry.renumber(task)
    task = replace(task, metadata={**task.metadata, "task": entry.name})
    return replace(task, name=name) if name else task
