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
from llmcal.tasks.registry import (
    BUILTIN_TASKS,
    DATA_DIR_ENV,
    BuiltinTask,
    HubSource,
    known_tasks,
    load_task,
)
from llmcal.tasks.synthetic import FAMILIES, synthetic_task
from llmcal.tasks.templates import DEFAULT_TEMPLATE, TEMPLATES, Template, get_template
from llmcal.tasks.types import LETTERS, Question, Task

__all__ = [
    "BUILTIN_TASKS",
    "DATA_DIR_ENV",
    "DEFAULT_TEMPLATE",
    "FAMILIES",
    "LETTERS",
    "TEMPLATES",
    "BuiltinTask",
    "ColumnMapping",
    "HubSource",
    "Question",
    "Task",
    "Template",
    "fewshot_split",
    "get_template",
    "known_tasks",
    "load_hf",
    "load_jsonl",
    "load_table",
    "load_task",
    "parse_mapping",
    "records_to_task",
    "save_jsonl",
    "subject_shots",
    "synthetic_task",
]
