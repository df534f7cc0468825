"""A clock whose time moves only when the test moves it, for code that takes an injected clock.

It fits both :class:`flip_nvflare.components.delivery.Clock` and
:class:`flip_emulator.faults.Clock`. Threads that ``sleep`` or ``wait`` on it block until the test
advances the time past their deadline (``wait`` also returns as soon as its event is set), so a
test decides exactly when each retry, delay or deadline comes due, and checks what happened then:
which calls were retried, in what order, what was given up. No outcome depends on real time: the
only real-time limit is ``stall_timeout``, a guard after which a helper that waits for the code
under test raises instead of hanging the test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

#: How often (real seconds) a ``wait`` looks at its event: setting an event wakes nobody else.
_EVENT_POLL = 0.002

T = TypeVar("T")


@dataclass(eq=False)
class _Waiter:
    deadline: float
    event: threading.Event | None

    def blocked(self, now: float) -> bool:
        return now < self.deadline and not (self.event is not None and self.event.is_set())


class ClockStalled(AssertionError):
    """The code under test stopped moving: nobody waits on the clock and the goal was not reached."""


class FakeClock:
    """Time that stands still until :meth:`advance`, :meth:`advance_to` or :meth:`run` moves it.

    Args:
        start: The initial reading of :meth:`monotonic`.
        stall_timeout: Real seconds the waiting helpers allow the code under test to show progress.

    Attributes:
        requested: Every ``sleep`` and ``wait`` duration asked for, in the order asked.
    """

    def __init__(self, start: float = 0.0, stall_timeout: float = 10.0) -> None:
        self._now = start
        self._stall_timeout = stall_timeout
        self._cond = threading.Condition()
        self._waiters: list[_Waiter] = []
        self.requested: list[float] = []

    # ------------------------------------------------------------------ what the code under test calls

    def monotonic(self) -> float:
        """The fake time."""
        with self._cond:
            return self._now

    def sleep(self, seconds: float) -> None:
        """Block until the fake time has moved ``seconds`` on."""
        self._block(seconds, None)

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Block until ``event`` is set or the fake time has moved ``timeout`` on; return whether it is set."""
        self._block(timeout, event)
        return event.is_set()

    def _block(self, seconds: float, event: threading.Event | None) -> None:
        with self._cond:
            waiter = _Waiter(self._now + max(0.0, seconds), event)
            self.requested.append(seconds)
            self._waiters.append(waiter)
            self._cond.notify_all()
            try:
                while waiter.blocked(self._now):
                    self._cond.wait(_EVENT_POLL if event is not None else None)
            finally:
                self._waiters.remove(waiter)
                self._cond.notify_all()

    # ------------------------------------------------------------------ what the test calls

    def blocked(self) -> list[float]:
        """The deadlines of the threads blocked on the clock now, earliest first."""
        with self._cond:
            return sorted(w.deadline for w in self._waiters if w.blocked(self._now))

    def advance(self, seconds: float) -> None:
        """Move the time ``seconds`` on, releasing every thread whose deadline it reaches."""
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def advance_to(self, when: float) -> None:
        """Move the time on to ``when`` (never back)."""
        with self._cond:
            self._now = max(self._now, when)
            self._cond.notify_all()

    def wait_for_blocked(self, count: int) -> list[float]:
        """Wait until at least ``count`` threads are blocked on the clock; return their deadlines.

        Raises:
            ClockStalled: Fewer were blocked for ``stall_timeout`` real seconds.
        """
        self.wait_until(lambda: len(self.blocked()) >= count, f"{count} thread(s) to block on the clock")
        return self.blocked()

    def run(self, until: Callable[[], bool], *, limit: float = float("inf")) -> None:
        """Move the time from deadline to deadline, never past ``limit``, until ``until()`` is true.

        Each step goes to the earliest deadline of the blocked threads, as if no time passed
        between the deadlines.

        Raises:
            ClockStalled: ``until()`` stayed false and no thread blocked on the clock with a
                deadline within ``limit`` for ``stall_timeout`` real seconds.
        """
        while not until():

            def due() -> bool:
                return until() or any(d <= limit for d in self.blocked())

            self.wait_until(due, f"the goal, or a deadline up to {limit:g} s on the fake clock")
            upcoming = [d for d in self.blocked() if d <= limit]
            if upcoming and not until():
                self.advance_to(upcoming[0])

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait (in real time, without moving the clock) until ``condition()`` is true.

        Raises:
            ClockStalled: It was still false after ``stall_timeout`` real seconds; ``what`` names it.
        """
        quiet_polls = 0  # polls that no change on the clock cut short: they add up to real time
        while quiet_polls * _EVENT_POLL < self._stall_timeout:
            if condition():
                return
            with self._cond:
                if not self._cond.wait(_EVENT_POLL):
                    quiet_polls += 1
        if not condition():
            raise ClockStalled(
                f"waited in vain for {what} (fake time {self.monotonic():g} s; blocked: {self.blocked()})"
            )


class Background(Generic[T]):
    """``target`` running in a daemon thread: for a call that blocks until the test moves the clock.

    Args:
        target: What to run.
    """

    def __init__(self, target: Callable[[], T]) -> None:
        self._target = target
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._target()
        except BaseException as exc:  # handed to result()
            self._error = exc

    def done(self) -> bool:
        """Whether ``target`` has returned (or raised)."""
        return not self._thread.is_alive()

    def result(self, timeout: float = 10.0) -> T:
        """Join the thread and return what ``target`` returned (re-raising what it raised).

        Raises:
            ClockStalled: ``target`` was still running after ``timeout`` real seconds.
        """
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise ClockStalled(f"{self._target!r} is still running")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]
