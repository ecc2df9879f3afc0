"""Tasks: Question, Task, loaders, the built-in registry, templates and the synthetic generator."""

from llmcal.tasks.fewshot import fewshot_split, subject_shots
from llmcal.tasks.loaders import (
    ColumnMapping,
    load_hf,
    load_jsonl,
    load_table,
    parse_mapping,
    records_to_task,
    save_jsonl,
)
from llmcal.tasks.openended import OpenQuestion, OpenTask, load_open_jsonl, save_open_jsonl
from llmcal.tasks.registry import (
    BUILTIN_TASKS,
    DATA_DIR_ENV,
    OPEN_TASKS,
    BuiltinTask,
    HubSource,
    known_open_tasks,
    known_tasks,
    load_open_task,
    load_task,
)
from llmcal.tasks.synthetic import FAMILIES, synthetic_open_task, synthetic_task
from llmcal.tasks.templates import DEFAULT_TEMPLATE, TEMPLATES, Template, get_template
from llmcal.tasks.types import LETTERS, Question, Task

__all__ = [
    "BUILTIN_TASKS",
    "DATA_DIR_ENV",
    "DEFAULT_TEMPLATE",
    "FAMILIES",
    "LETTERS",
    "OPEN_TASKS",
    "TEMPLATES",
    "BuiltinTask",
    "ColumnMapping",
    "HubSource",
    "OpenQuestion",
    "OpenTask",
    "Question",
    "Task",
    "Template",
    "fewshot_split",
    "get_template",
    "known_open_tasks",
    "known_tasks",
    "load_hf",
    "load_jsonl",
    "load_open_jsonl",
    "load_open_task",
    "load_table",
    "load_task",
    "parse_mapping",
    "records_to_task",
    "save_jsonl",
    "save_open_jsonl",
    "subject_shots",
    "synthetic_open_task",
    "synthetic_task",
]
