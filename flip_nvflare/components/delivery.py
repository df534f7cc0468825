"""HubDelivery: the per-job background sender that carries every hub call of a FLIP job.

Widgets call :meth:`HubDelivery.submit` on NVFlare's event threads; it only appends to a queue
and returns (microseconds). Background threads deliver the items to the hub through the job's
backend:

* **Order.** Items leave in submission order. An *ordered* item (a status, a progress event) is a
  barrier: everything submitted before it is finished first, and nothing submitted after it starts
  until it is delivered, so statuses reach the hub strictly in order. *Unordered* items (metrics,
  exception logs) between two barriers go out concurrently over up to ``concurrency`` connections,
  which is what lets a slow hub keep up with a busy run; items of one *series* (one trust's values
  of one metric) still go one at a time, in order, so a curve reaches the hub in round order even
  when some of its points had to wait out an outage. Each sender takes its next call itself (the
  next of its series if one waits, else the next free to go), so a connection is never idle while
  a call could use it: with ``concurrency`` connections to a hub that takes ``L`` seconds per call,
  ``N`` metrics take little more than ``N * L / concurrency`` (measured by ``bench/bench_delivery.py``).
* **Connections.** ``concurrency`` (default 8) is the knob: ``hub_concurrency`` in the
  FlipBackend's job-config args, which sets ``SessionSettings.concurrency`` of the job's HubSession.
  More connections deliver faster from a hub with high latency and load it more; the hub has no
  batch route for metrics (one ``POST /api/model/{model_id}/metrics`` per value), so this is the
  only way to raise the rate.
* **Outages.** A hub that cannot be reached or answers 429/502/503/504 is retried with backoff for
  as long as the run lasts, so a hub that is down for a while costs nothing. Any other 5xx answer
  (or an unexpected error) is retried a few times. A refusal (4xx, bad settings) is final: the
  item is dropped, counted as rejected and logged.
* **Bounded.** At most ``max_pending`` droppable items (metrics, progress events) wait in the
  queue. When it is full a new droppable item is dropped and counted (never an older one, which
  keeps the work O(1) on the event thread); statuses and logs are never dropped.
* **Draining.** :meth:`close` waits until everything is delivered or the deadline passes, then
  stops the threads and returns what could not be delivered; the caller logs it.
* **Time.** Every wait (retry backoff, the drain deadline) goes through a :class:`Clock`: the real
  one by default, a fake one in tests, so timed behaviour can be checked without waiting for it.

This module has no NVFlare imports: it works with any :class:`~flip_nvflare.core.base.FLIPBase`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from flip_nvflare.core.base import FLIPBase
from flip_nvflare.core.http import RETRYABLE_STATUS, idempotency_key
from flip_nvflare.errors import FlipConfigError, FlipError, FlipHTTPError, FlipServiceUnavailable
from flip_nvflare.retry import RetryPolicy

logger = logging.getLogger(__name__)

#: How many rejections are logged in full before further ones are only counted.
_LOGGED_REJECTIONS = 5


class Clock(Protocol):
    """Where HubDelivery reads the time and waits; inject a fake one to control time in tests."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Block until ``event`` is set or ``timeout`` seconds have passed; return whether it is set."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :meth:`threading.Event.wait`."""

    def monotonic(self) -> float:
        """The value of :func:`time.monotonic`."""
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Block until ``event`` is set or ``timeout`` seconds have passed; return whether it is set."""
        return event.wait(timeout)


@dataclass(frozen=True)
class HubCall:
    """One call to make on the backend, queued for delivery.

    Attributes:
        kind: What it is, for counting and logs: ``status``, ``metric``, ``log``, ``progress``...
        send: The call itself; it gets the backend and may raise FlipError subclasses.
        what: Short description for logs. Must never hold patient data or keys.
        ordered: A barrier: delivered alone, after everything before it (statuses).
        droppable: May be dropped when the queue is full (metrics, progress events).
        series: Calls of one series (e.g. one trust's values of one metric) are delivered one at a
            time, in the order submitted, while other series go on concurrently; a retried call
            holds back the later calls of its series, never those of others.
        key: The call's idempotency key, sent on every attempt, so a hub that honours it records
            the call once even when an answer was lost and the call retried.
    """

    kind: str
    send: Callable[[FLIPBase], object]
    what: str
    ordered: bool = False
    droppable: bool = False
    series: str | None = None
    key: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def name(self) -> str:
        """What the call is, for reports: its kind and series (``metric Trust_1/LOSS``); never values."""
        return f"{self.kind} {self.series}" if self.series else self.kind


def default_delivery_retry() -> RetryPolicy:
    """HubDelivery's default retry policy: 0.5 s doubling to 10 s, 5 attempts for errors.

    A call that keeps getting an error answer other than an outage (e.g. HTTP 500), or raising
    something unexpected, gives up after 5 attempts. Outages (no answer, 429/502/503/504) are
    retried until the delivery closes, whatever the count.
    """
    return RetryPolicy(max_attempts=5, initial_delay=0.5, max_delay=10.0, total_timeout=None, jitter=0.3)


@dataclass
class DeliveryReport:
    """Counts of what happened to the submitted calls, per kind.

    Attributes:
        submitted: Calls accepted into the queue.
        delivered: Calls the hub accepted.
        rejected: Calls the hub (or the backend's checks) refused for good.
        dropped: Droppable calls not queued because the queue was full.
        undelivered: Calls still pending or in flight when delivery stopped.
        missed: Calls that did not reach the hub (rejected, dropped or undelivered), by what they
            were: ``"<kind> <series>"`` (e.g. ``metric Trust_1/val_loss``) or the kind alone. Names
            only, never values.
    """

    submitted: Counter[str] = field(default_factory=Counter)
    delivered: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    undelivered: Counter[str] = field(default_factory=Counter)
    missed: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, dict[str, int]]:
        """The counts as plain dicts (for a JSON run summary)."""
        return {
            name: dict(getattr(self, name))
            for name in ("submitted", "delivered", "rejected", "dropped", "undelivered", "missed")
        }

    def copy(self) -> DeliveryReport:
        """A snapshot that later changes do not affect."""
        return DeliveryReport(
            Counter(self.submitted),
            Counter(self.delivered),
            Counter(self.rejected),
            Counter(self.dropped),
            Counter(self.undelivered),
            Counter(self.missed),
        )


def _is_outage(exc: BaseException) -> bool:
    return isinstance(exc, FlipServiceUnavailable) and (exc.status_code is None or exc.status_code in RETRYABLE_STATUS)


def _is_final(exc: BaseException) -> bool:
    return isinstance(exc, FlipError) and not isinstance(exc, FlipServiceUnavailable)


class HubDelivery:
    """Delivers hub calls in the background: ordered, concurrent where allowed, retried, bounded.

    Args:
        backend: The job's FLIP backend; its methods are called from the delivery threads.
        concurrency: Unordered calls (metrics, logs) in flight at once, each on its own connection;
            in a job, the FlipBackend's ``hub_concurrency`` arg (default 8).
        max_pending: Droppable calls allowed to wait in the queue.
        retry: Retry policy across failures.
        name: Name used in thread names and logs (e.g. the model id).
        clock: Where the retry delays and the drain deadline are timed; the real clock if None.
    """

    def __init__(
        self,
        backend: FLIPBase,
        *,
        concurrency: int = 8,
        max_pending: int = 50_000,
        retry: RetryPolicy | None = None,
        name: str = "flip",
        clock: Clock | None = None,
    ) -> None:
        if concurrency < 1:
            raise FlipConfigError("HubDelivery: concurrency must be at least 1.")
        if max_pending < 1:
            raise FlipConfigError("HubDelivery: max_pending must be at least 1.")
        self._backend = backend
        self._concurrency = concurrency
        self._max_pending = max_pending
        self._retry = retry or default_delivery_retry()
        self._name = name
        self._clock: Clock = clock if clock is not None else SystemClock()
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # the dispatcher waits on it (new calls, free connections)
        self._work_ready = threading.Condition(lock)  # idle senders wait on it, woken one at a time
        self._queue: deque[HubCall] = deque()
        self._pending_droppable = 0
        self._unfinished = 0  # submitted and not yet delivered, rejected or abandoned
        self._idle = threading.Event()  # set exactly when _unfinished is 0 (changed with the lock held)
        self._idle.set()
        self._in_flight = 0  # unordered calls taken by senders and not finished
        self._barrier = False  # an ordered call is being delivered: nothing else may start
        self._series_busy: set[str] = set()  # series with a call handed to a worker
        self._series_waiting: dict[str, deque[HubCall]] = {}  # later calls of a busy series, in order
        self._report = DeliveryReport()
        self._rejections_logged = 0
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._stop = threading.Event()

    # ------------------------------------------------------------------ event-thread side

    def submit(self, call: HubCall) -> bool:
        """Queue ``call`` for delivery and return at once.

        Returns:
            False if it was dropped (queue full, or delivery already closed), else True.
        """
        with self._cond:
            if self._closed:
                self._report.undelivered[call.kind] += 1
                late = True
            else:
                late = False
                if call.droppable and self._pending_droppable >= self._max_pending:
                    self._report.dropped[call.kind] += 1
                    self._report.missed[call.name] += 1
                    dropped_total = sum(self._report.dropped.values())
                    if dropped_total == 1 or dropped_total % 1000 == 0:
                        logger.warning(
                            "FLIP hub delivery queue is full (%d waiting): %d metric/progress call(s) dropped so far.",
                            self._max_pending,
                            dropped_total,
                        )
                    return False
                self._queue.append(call)
                self._report.submitted[call.kind] += 1
                self._unfinished += 1
                self._idle.clear()
                if call.droppable:
                    self._pending_droppable += 1
                if not self._threads:
                    self._start_threads()
                if call.ordered:
                    self._cond.notify()  # the dispatcher
                else:
                    self._work_ready.notify()  # one idle sender (a busy one takes it when it is free)
        if late:
            logger.warning("FLIP hub delivery is closed: %s was not sent.", call.what)
            return False
        return True

    def report(self) -> DeliveryReport:
        """A snapshot of the counts so far."""
        with self._cond:
            return self._report.copy()

    @property
    def pending(self) -> int:
        """Calls submitted and not yet finished."""
        with self._cond:
            return self._unfinished

    def pending_by_name(self) -> Counter[str]:
        """Calls queued and not yet handed to a sender, by :attr:`HubCall.name` (in flight ones aside)."""
        with self._cond:
            waiting = [*self._queue, *(c for q in self._series_waiting.values() for c in q)]
        return Counter(call.name for call in waiting)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted call is finished; False if ``timeout`` seconds passed first."""
        deadline = self._clock.monotonic() + timeout
        while True:
            with self._cond:
                if not self._unfinished:
                    return True
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                return False
            self._clock.wait(self._idle, remaining)

    def close(self, timeout: float) -> DeliveryReport:
        """Stop accepting calls, deliver what is queued within ``timeout`` seconds, stop the threads.

        Calls still pending at the deadline are counted as undelivered. Safe to call twice.

        Returns:
            The final counts.
        """
        with self._cond:
            already_closed = self._closed
            self._closed = True
        if not already_closed:
            self.wait_idle(timeout)
        with self._cond:
            if not self._stop.is_set():
                self._stop.set()
                abandoned = list(self._queue)
                for waiting in self._series_waiting.values():
                    abandoned.extend(waiting)
                self._queue.clear()
                self._series_waiting.clear()
                for call in abandoned:
                    self._finish(call, "undelivered")
                self._cond.notify_all()
                self._work_ready.notify_all()
            snapshot = self._report.copy()
            if self._unfinished:
                # calls in an HTTP request right now: they finish in their own thread, maybe too late
                snapshot.undelivered["in flight"] += self._unfinished
            return snapshot

    # ------------------------------------------------------------------ delivery threads

    def _start_threads(self) -> None:
        dispatcher = threading.Thread(target=self._dispatch, name=f"flip-hub-dispatch-{self._name}", daemon=True)
        self._threads.append(dispatcher)
        for n in range(self._concurrency):
            worker = threading.Thread(target=self._work_loop, name=f"flip-hub-send-{self._name}-{n}", daemon=True)
            self._threads.append(worker)
        for thread in self._threads:
            thread.start()

    def _dispatch(self) -> None:
        """Deliver the barriers (ordered calls): each alone, once everything before it has finished."""
        while True:
            with self._cond:
                while not self._stop.is_set() and not (self._queue and self._queue[0].ordered):
                    self._cond.wait()
                while self._in_flight and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return
                call = self._queue.popleft()
                if call.droppable:
                    self._pending_droppable -= 1
                self._barrier = True
            try:
                self._deliver(call)
            finally:
                with self._cond:
                    self._barrier = False
                    self._work_ready.notify_all()  # the calls after it may go now

    def _take(self) -> HubCall | None:
        """The next call a sender may deliver now, if any (lock held).

        Calls are taken in submission order, up to the next barrier. A call whose series already
        has a call in flight waits behind it (the sender of that call delivers it next).
        """
        while self._queue and not self._barrier and not self._stop.is_set():
            call = self._queue[0]
            if call.ordered:
                return None  # the dispatcher's: once the calls before it have finished
            self._queue.popleft()
            if call.droppable:
                self._pending_droppable -= 1
            if call.series is not None:
                if call.series in self._series_busy:
                    self._series_waiting.setdefault(call.series, deque()).append(call)
                    continue
                self._series_busy.add(call.series)
            self._in_flight += 1
            return call
        return None

    def _work_loop(self) -> None:
        """A sender: deliver a call, then the next of its series if one waits, else the next call free to go.

        Senders take their calls themselves (no hand-over through another thread), so a finished
        call is followed by the next request at once, and at most ``concurrency`` are in flight.
        """
        call: HubCall | None = None
        while True:
            with self._cond:
                while call is None:
                    if self._stop.is_set():
                        return
                    call = self._take()
                    if call is None:
                        self._work_ready.wait()
            try:
                self._deliver(call)
            finally:
                with self._cond:
                    follow = self._next_of_series(call)
                    if follow is None:
                        self._in_flight -= 1
                        if not self._in_flight:
                            self._cond.notify()  # a barrier may be waiting for the senders to finish
                        follow = self._take()
                    call = follow

    def _next_of_series(self, done: HubCall) -> HubCall | None:
        """The next waiting call of ``done``'s series (it keeps ``done``'s place in flight), or None (lock held).

        With None the series is free again.
        """
        if done.series is None:
            return None
        waiting = self._series_waiting.get(done.series)
        if waiting and not self._stop.is_set():
            follow = waiting.popleft()
            if not waiting:
                del self._series_waiting[done.series]
            return follow
        self._series_busy.discard(done.series)
        self._series_waiting.pop(done.series, None)
        return None

    def _deliver(self, call: HubCall) -> None:
        """Make the call, retrying as the policy says; record how it ended."""
        attempt = 0
        error_attempts = 0
        while True:
            attempt += 1
            try:
                with idempotency_key(call.key):
                    call.send(self._backend)
            except Exception as exc:  # every failure is classified; none may kill the thread
                if _is_final(exc):
                    self._reject(call, exc)
                    return
                if not _is_outage(exc):
                    error_attempts += 1
                    if not self._retry.allows(error_attempts):
                        self._reject(call, exc)
                        return
                delay = self._retry.delay(attempt)
                asked = exc.retry_after if isinstance(exc, FlipHTTPError) else None
                if asked is not None:  # the hub asked for a pause (Retry-After): honour it, within reason
                    delay = max(delay, min(asked, self._retry.max_delay))
                logger.info(
                    "FLIP hub delivery of %s failed (%s); retry %d in %.1f s.",
                    call.what,
                    _describe(exc),
                    attempt,
                    delay,
                )
                if self._clock.wait(self._stop, delay):
                    with self._cond:
                        self._finish(call, "undelivered")
                    return
                continue
            with self._cond:
                self._finish(call, "delivered")
            return

    def _reject(self, call: HubCall, exc: BaseException) -> None:
        with self._cond:
            self._finish(call, "rejected")
            self._rejections_logged += 1
            log_it = self._rejections_logged <= _LOGGED_REJECTIONS
        if log_it:
            logger.error("FLIP hub refused %s; it will not be retried: %s", call.what, _describe(exc))
            if self._rejections_logged == _LOGGED_REJECTIONS:
                logger.error("Further refused hub calls are counted but not logged one by one.")

    def _finish(self, call: HubCall, outcome: str) -> None:
        """Record the end of a call (lock held)."""
        counter: Counter[str] = getattr(self._report, outcome)
        counter[call.kind] += 1
        if outcome != "delivered":
            self._report.missed[call.name] += 1
        self._unfinished -= 1
        if not self._unfinished:
            self._idle.set()


def _describe(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, FlipError) else type(exc).__name__
    return text[:300]


def summarise(report: DeliveryReport) -> str:
    """One log line describing a delivery report."""
    parts = [f"{report.delivered.total()}/{report.submitted.total()} delivered"]
    if report.rejected.total():
        parts.append(f"{report.rejected.total()} refused by the hub ({_by_kind(report.rejected)})")
    if report.dropped.total():
        parts.append(f"{report.dropped.total()} dropped because the queue was full ({_by_kind(report.dropped)})")
    if report.undelivered.total():
        parts.append(f"{report.undelivered.total()} NOT delivered ({_by_kind(report.undelivered)})")
    if report.missed:
        parts.append(f"missing from the hub: {_by_kind(report.missed)}")
    return "; ".join(parts)


def _by_kind(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counter.items()))
