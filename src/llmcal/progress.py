"""Progress for long work: a tqdm bar on a terminal, plain timestamped lines everywhere else.

Every long loop in llmcal (scoring in :mod:`llmcal.models.hf`, :mod:`llmcal.models.http` and
:mod:`llmcal.models.checkpoint`, the fine-tuning evaluation and gating passes) opens one
:func:`progress` and calls ``update(n)`` per batch. When stderr is not a terminal (CI, ``nohup``,
a log file) the bar becomes plain lines: ``llmcal: scoring M: 96/300 q (32%), 12.3 q/s,
ETA 17s`` about every 10 seconds and at every further 10 %, and a final ``done`` line.

Bars nest: a bar opened while another is open does not draw itself but moves the outer one.
:meth:`Progress.span` says how many outer units the next inner bar stands for, so a checkpointed
run of 32-question chunks still moves per batch of the scorer inside it.

``LLMCAL_PROGRESS`` overrides the choice: ``off`` (silent), ``plain`` (lines even on a
terminal) or ``bar`` (tqdm even when not a terminal).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TextIO

#: Seconds between two plain progress lines (a line is also written at every further 10 %).
PLAIN_INTERVAL = 10.0
PLAIN_STEP = 0.1
PREFIX = "llmcal: "

_ACTIVE: ContextVar[Progress | None] = ContextVar("llmcal_progress", default=None)


def style(enabled: bool | None = None, stream: TextIO | None = None) -> str:
    """'off', 'plain' or 'bar': how a new top-level Progress on ``stream`` (stderr) shows."""
    stream = stream if stream is not None else sys.stderr
    env = os.environ.get("LLMCAL_PROGRESS", "").strip().lower()
    if enabled is False or env in ("off", "0", "none", "false"):
        return "off"
    if env in ("plain", "lines"):
        return "plain"
    if env in ("bar", "tqdm"):
        return "bar"
    isatty = getattr(stream, "isatty", None)
    return "bar" if callable(isatty) and isatty() else "plain"


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def note(message: str, stream: TextIO | None = None) -> None:
    """One informational line on stderr (``llmcal: MESSAGE``), without breaking an open bar."""
    stream = stream if stream is not None else sys.stderr
    text = PREFIX + message
    active = _ACTIVE.get()
    root = active._root() if active is not None else None
    if root is not None and root._bar is not None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=stream)
    else:
        print(text, file=stream, flush=True)


class Progress:
    """Progress of ``total`` units of work (see the module docstring); use it as a context."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "q",
        initial: int = 0,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        interval: float = PLAIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        nest: bool = True,
    ) -> None:
        self.total = max(int(total), 0)
        self.desc = desc
        self.unit = unit
        self.initial = min(max(int(initial), 0), self.total)
        self.done = float(self.initial)
        self.stream = stream if stream is not None else sys.stderr
        self.interval = float(interval)
        self.clock = clock
        self.nest = nest
        self.parent = _ACTIVE.get() if nest else None
        self.style = "child" if self.parent is not None else style(enabled, self.stream)
        self._scale = 1.0
        if self.parent is not None and self.parent._span is not None:
            units = self.parent._span[1]
            self._scale = units / self.total if self.total else 0.0
        self._span: tuple[float, float] | None = None
        self._bar: Any = None
        self._token: Any = None
        self._start = 0.0
        self._last_line = 0.0
        self._next_step = 0.0
        self.lines = 0

    # -- context --------------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self._start = self._last_line = self.clock()
        self._next_step = self._step_after(self.done)
        if self.style == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.initial,
                desc=self.desc,
                unit=self.unit,
                leave=False,
                file=self.stream,
                dynamic_ncols=True,
            )
        if self.nest:
            self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self._token is not None:
            _ACTIVE.reset(self._token)
            self._token = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.style == "plain" and exc_type is None and self.done > self.initial:
            self._line(final=True)

    # -- updates --------------------------------------------------------------------------------
    def update(self, n: float = 1) -> None:
        """``n`` more units are done."""
        self._advance(n)

    @contextlib.contextmanager
    def span(self, units: float) -> Iterator[None]:
        """The next inner bar (or bars) stands for ``units`` of this one; it ends exactly there."""
        start = self.done
        self._span = (start, float(units))
        try:
            yield
        finally:
            self._span = None
        self._set(start + units)

    def _root(self) -> Progress:
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    def _advance(self, n: float) -> None:
        target = self.done + n
        if self._span is not None:  # inner bars never run past the span they were given
            target = min(target, self._span[0] + self._span[1])
        self._set(target)

    def _set(self, value: float) -> None:
        value = min(max(value, self.done), float(self.total))
        if self.parent is not None:
            self.parent._advance((value - self.done) * self._scale)
            self.done = value
            return
        old, self.done = self.done, value
        if self._bar is not None:
            step = int(value) - int(old)
            if step:
                self._bar.update(step)
        elif self.style == "plain" and value > old and value < self.total:
            now = self.clock()
            if now - self._last_line >= self.interval or value >= self._next_step - 1e-9:
                self._line()

    def _step_after(self, value: float) -> float:
        if not self.total:
            return math.inf
        step = PLAIN_STEP * self.total
        return (math.floor(value / step + 1e-9) + 1) * step

    def _line(self, final: bool = False) -> None:
        now = self.clock()
        elapsed = now - self._start
        fresh = self.done - self.initial
        rate = fresh / elapsed if elapsed > 0 else math.inf
        done = int(self.done)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        speed = f"{rate:.1f} {self.unit}/s" if math.isfinite(rate) else f"- {self.unit}/s"
        if final:
            text = (
                f"{self.desc}: {done}/{self.total} {self.unit} done in "
                f"{format_seconds(elapsed)} ({speed})"
            )
        else:
            eta = (self.total - self.done) / rate if rate > 0 else math.inf
            text = (
                f"{self.desc}: {done}/{self.total} {self.unit} ({pct:.0f}%), {speed}, "
                f"ETA {format_seconds(eta)}"
            )
        print(PREFIX + text, file=self.stream, flush=True)
        self.lines += 1
        self._last_line = now
        self._next_step = self._step_after(self.done)


def progress(
    total: int,
    desc: str,
    *,
    unit: str = "q",
    initial: int = 0,
    enabled: bool | None = None,
    nest: bool = True,
) -> Progress:
    """A :class:`Progress` on stderr: nested in the open one, else a bar or plain lines.

    ``enabled=False`` silences a top-level bar (a nested one always reports to its parent);
    ``None`` and ``True`` show it. ``nest=False``: neither move an open bar nor take inner ones
    (a bar beside the others, e.g. training steps around the gating passes).
    """
    return Progress(total, desc, unit=unit, initial=initial, enabled=enabled, nest=nest)
