"""ProgressLog: the progress of a long step, as a bar on a terminal or a percent line in the logs.

A long step (the images of a cohort, the upload of the results) reports how far it is with
``progress(done, total)``, where both are counts (files, images) or bytes. On a terminal
(``stream.isatty()``, by default stderr) :class:`ProgressLog` redraws one bar line, at most every
``redraw`` seconds; otherwise it hands a percent line to ``log`` every ``interval`` seconds. Both
end with one final line at :meth:`ProgressLog.finish`.

A line holds only the step's fixed name, counts or bytes, the percentage, the rate and the time
left: never a file name, a path or an accession id (the callers pass numbers only, and a ``note``
that is a count). Time comes from an injected clock so tests decide when a line is due.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

#: Seconds between percent lines in the logs, by default.
DEFAULT_INTERVAL = 5.0
#: Seconds between redraws of a terminal bar.
DEFAULT_REDRAW = 0.2
#: Characters of the bar itself.
BAR_WIDTH = 28
#: Lines kept in ProgressLog.lines.
_KEPT_LINES = 200
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_bytes(count: float) -> str:
    """``count`` bytes for people: ``512 B``, ``1.5 MiB``."""
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {_UNITS[-1]}"  # pragma: no cover - the loop always returns


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressLog:
    """Reports the progress of one long step; call it as ``progress(done, total)``.

    Thread-safe: the step may report from any thread. Calls that come faster than a line is due
    only update the figures; the next due line shows the latest.

    Args:
        what: The step's fixed name, first on every line (``"Images"``, ``"Results upload"``).
        unit: What is counted (``"images"``), or ``"bytes"`` to show sizes (``1.5 MiB``).
        log: Receives each percent line when not on a terminal (e.g. a logger's ``info``);
            ``None`` writes them to ``stream``.
        interval: Seconds between percent lines (> 0).
        clock: Monotonic seconds; injected by tests.
        stream: Where a bar is drawn (default: ``sys.stderr``, looked up when built).
        terminal: Draw a bar (True) or log lines (False); default: whether ``stream`` is a terminal.
        redraw: Seconds between redraws of the bar.
    """

    def __init__(
        self,
        what: str,
        *,
        unit: str = "",
        log: Callable[[str], None] | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        stream: TextIO | None = None,
        terminal: bool | None = None,
        redraw: float = DEFAULT_REDRAW,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
            raise ValueError(f"ProgressLog interval must be a number of seconds > 0, got {interval!r}.")
        self.what = what
        self.unit = unit
        self._stream = stream if stream is not None else sys.stderr
        self._log = log
        self._interval = float(interval)
        self._redraw = float(redraw)
        self._clock = clock
        self.terminal = bool(_isatty(self._stream)) if terminal is None else terminal
        self._lock = threading.Lock()
        self._started: float | None = None
        self._next_due = 0.0
        self._done = 0
        self._total = 0
        self._note = ""
        self._finished = False
        #: The last lines emitted (bar redraws included), newest last.
        self.lines: deque[str] = deque(maxlen=_KEPT_LINES)

    # ------------------------------------------------------------------ reporting

    def __call__(self, done: int, total: int) -> None:
        """Record that ``done`` of ``total`` are done (the signature of an upload's progress callback)."""
        self.update(done, total)

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        """Record progress; draw or log a line if one is due.

        Args:
            done: Items or bytes done so far (not an increment).
            total: Items or bytes in all (unchanged if None).
            note: Extra counts to show (``"38 ready, 2 missing"``); never names or paths.
        """
        with self._lock:
            if self._finished:
                return
            now = self._clock()
            if self._started is None:
                self._started = now
                self._next_due = now + (self._redraw if self.terminal else self._interval)
            self._done = max(0, int(done))
            if total is not None:
                self._total = max(0, int(total))
            self._note = note
            if now >= self._next_due:
                self._next_due = now + (self._redraw if self.terminal else self._interval)
                self._emit(now, final=False)

    def finish(self, note: str | None = None) -> None:
        """Emit the last line (ending the bar on a terminal); later updates are ignored."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            if note is not None:
                self._note = note
            now = self._clock()
            if self._started is None:
                self._started = now
            self._emit(now, final=True)

    # ------------------------------------------------------------------ the lines

    @property
    def started(self) -> bool:
        """Whether any progress was reported."""
        with self._lock:
            return self._started is not None

    @property
    def fraction(self) -> float | None:
        """How much is done, 0 to 1 (None while the total is unknown)."""
        if self._total <= 0:
            return None
        return min(1.0, self._done / self._total)

    def _amount(self) -> str:
        if self.unit == "bytes":
            total = f"/{format_bytes(self._total)}" if self._total else ""
            return f"{format_bytes(self._done)}{total}"
        unit = f" {self.unit}" if self.unit else ""
        return f"{self._done}/{self._total}{unit}" if self._total else f"{self._done}{unit}"

    def _rate_and_eta(self, now: float) -> str:
        elapsed = now - (self._started if self._started is not None else now)
        if elapsed <= 0 or self._done <= 0:
            return ""
        rate = self._done / elapsed
        shown = f"{format_bytes(rate)}/s" if self.unit == "bytes" else f"{rate:.1f}/s"
        if self._total and self._done < self._total:
            return f", {shown}, ETA {_duration((self._total - self._done) / rate)}"
        return f", {shown}, {_duration(elapsed)}"

    def line(self, now: float | None = None) -> str:
        """The percent line for the figures so far: ``Images: 40% (40/100 images; 2 missing), 3.1/s, ETA 19 s``."""
        now = self._clock() if now is None else now
        fraction = self.fraction
        percent = f"{fraction * 100:.0f}% " if fraction is not None else ""
        note = f"; {self._note}" if self._note else ""
        return f"{self.what}: {percent}({self._amount()}{note}){self._rate_and_eta(now)}"

    def bar(self, now: float | None = None) -> str:
        """The terminal bar for the figures so far: ``Images [#######-------]  40% 40/100 images ...``."""
        now = self._clock() if now is None else now
        fraction = self.fraction
        filled = round((fraction or 0.0) * BAR_WIDTH)
        cells = "#" * filled + "-" * (BAR_WIDTH - filled)
        percent = f"{fraction * 100:3.0f}%" if fraction is not None else "  ?%"
        note = f" ({self._note})" if self._note else ""
        return f"{self.what} [{cells}] {percent} {self._amount()}{note}{self._rate_and_eta(now)}"

    def _emit(self, now: float, *, final: bool) -> None:
        if self.terminal:
            text = self.bar(now)
            self.lines.append(text)
            end = "\n" if final else ""
            self._write("\r" + text + "\x1b[K" + end)
            return
        text = self.line(now)
        self.lines.append(text)
        if self._log is not None:
            try:
                self._log(text)
            except Exception:  # a progress line never stops the step it reports on
                pass
        else:
            self._write(text + "\n")

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stream never stops the step
            pass


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False
