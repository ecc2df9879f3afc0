"""Tasks: Question, Task, loaders, the built-in registry, templates and the synthetic generator."""

from llmcal.tasks.templates import DEFAULT_TEMPLATE, TEMPLATES, Template, get_template
from llmcal.tasks.types import LETTERS, Question, Task

__all__ = ["DEFAULT_TEMPLATE", "LETTERS", "TEMPLATES", "Question", "Task", "Template", "get_template"]
