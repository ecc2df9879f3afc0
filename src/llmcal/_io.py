"""Atomic file writes, output-folder checks and bounded JSON parsing.

A failed or interrupted write never leaves a half-written file, and an ``OSError`` while
writing (read-only folder, full disk) becomes an :class:`~llmcal.errors.OutputError`. JSON read
from files or servers goes through :func:`loads_json`, which refuses nesting deeper than
:data:`MAX_JSON_DEPTH` with a ``ValueError`` instead of a ``RecursionError``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmcal.errors import OutputError

#: JSON nesting deeper than this is refused (real llmcal files nest a handful of levels).
MAX_JSON_DEPTH = 64


class JSONDepthError(ValueError):
    """A JSON document nests deeper than :data:`MAX_JSON_DEPTH`."""


def loads_json(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH, **kwargs: Any) -> Any:
    """``json.loads`` that raises ``ValueError`` (never ``RecursionError``) on deep nesting."""
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise JSONDepthError(f"JSON nested deeper than {max_depth} levels") from None
    check_depth(value, max_depth)
    return value


def check_depth(value: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`JSONDepthError` when lists / dicts in ``value`` nest deeper than allowed."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > max_depth:
            raise JSONDepthError(f"JSON nested deeper than {max_depth} levels")
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, tuple)))


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)[:200] or type(exc).__name__


def check_writable_dir(folder: str | os.PathLike[str], what: str) -> None:
    """Fail with :class:`OutputError` unless files can be created in ``folder`` (or its future
    place): no dangling symlink on the way, the nearest existing ancestor a writable folder."""
    path = Path(folder) if str(folder) else Path(".")
    probe = path
    while True:
        if probe.is_symlink() and not probe.exists():
            raise OutputError(
                f"{what}: {probe} is a symbolic link to a missing target "
                f"({os.readlink(probe)}); fix the link or choose another folder"
            )
        if probe.exists():
            break
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        raise OutputError(f"{what}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: folder {probe} is not writable; choose another output path")
    if probe == path:  # the folder exists: try a real write (read-only mounts, a full disk)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".llmcal-probe.", dir=path)
            try:
                os.write(fd, b"\0" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(tmp)
        except OSError as exc:
            raise OutputError(f"{what}: cannot write in {path} ({_why(exc)})") from None


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else is removed."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(
            f"cannot write {target} ({_why(exc)}); choose another output path"
        ) from None
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(
            f"cannot write {target} ({_why(exc)}); nothing was written — free space or choose "
            "another output path"
        ) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return Path(path)


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)
