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


class OutputError(LLMCalError):
    """An output cannot be written: its folder is missing or read-only, or the disk is full."""


#: Characters of a bad value an error message quotes at most (see :func:`quote`).
QUOTE_LIMIT = 80
#: Characters of one error line at most (the CLI cuts longer messages).
MESSAGE_LIMIT = 2000


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A short ``repr`` of a bad value for an error message: at most ``limit`` characters.

    Long strings, lists and dicts are cut (the cut says how long the value was), huge integers
    are described instead of printed, so an error about a 5 MB value stays one short line.
    """
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() > 128:
            return f"<integer of {value.bit_length()} bits>"
        return _cut(repr(value), limit)
    if isinstance(value, str):
        if len(value) <= limit:
            return _cut(repr(value), limit + 16)
        return _cut(repr(value[:limit]), limit + 16) + f"… ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict)):
        try:
            import reprlib

            r = reprlib.Repr()
            r.maxlevel, r.maxlist, r.maxtuple, r.maxdict = 3, 6, 6, 6
            r.maxstring, r.maxother, r.maxlong = 24, 24, 40
            text = r.repr(value)
        except (ValueError, RecursionError):
            text = f"<{type(value).__name__} of {len(value)} items>"
        return _cut(text, limit)
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


def shorten(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters (for lists of names read from a file)."""
    return _cut(text, limit)


def one_line(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` on one line (newlines and control characters become spaces), cut to ``limit``."""
    flat = "".join(c if c.isprintable() else " " for c in message)
    if len(flat) > limit:
        tail = f"… [{len(flat)} characters, cut]"
        flat = flat[: limit - len(tail)] + tail
    return flat
