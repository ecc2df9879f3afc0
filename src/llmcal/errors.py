"""The llmcal exception hierarchy: every error a user can cause is an ``LLMCalError``."""

from __future__ import annotations


class LLMCalError(Exception):
    """Base class: a problem the user can fix; the message says what and how."""


class DataError(LLMCalError):
    """A data file or record is malformed (names the file, row and field)."""


class ConfigError(LLMCalError):
    """An argument or option is invalid or inconsistent."""


class ModelError(LLMCalError):
    """A model or tokenizer cannot be loaded or does not fit the scoring mode."""


class ScoresError(LLMCalError):
    """A Scores object or file is invalid, or two Scores do not fit together."""


class CalibrationError(LLMCalError):
    """A calibrator cannot be fitted or applied to the given data."""


class EndpointError(LLMCalError):
    """An inference server failed, stayed down, or does not support what the run needs."""


class LLMCalWarning(UserWarning):
    """Base class of llmcal's warnings: the result stands but a careful user should look.

    The CLI prints each as one line ``llmcal: warning: …`` on stderr.
    """
