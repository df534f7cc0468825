"""Fetching the images of many accessions with bounded concurrency, retries and progress reports.

:class:`ImageFetcher` runs a ``fetch(accession_id) -> folder`` callable (normally the backend's
``get_by_accession_number``, over a backend view that makes one attempt per call, so this is the
only layer that retries) for every accession, at most ``concurrency`` at a time. A transient
failure (the service unavailable, a timeout) is tried again by the fetcher's retry policy; a
failure that cannot improve (not found, rejected) is recorded as the accession's reason for being
missing; a failure that dooms every request (the service refuses the key, a setting is missing)
stops the whole run at once. Progress is reported as counts, rate and ETA, never as accession
ids, and reasons never contain them either.

This module is pure Python: it knows nothing of NVFlare.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from flip_nvflare.errors import (
    FlipAuthenticationError,
    FlipConfigError,
    FlipHTTPError,
    FlipInvalidArgument,
    FlipInvalidResponse,
    FlipMissingData,
    FlipNotFoundError,
    FlipRequestRejected,
    FlipServiceUnavailable,
)
from flip_nvflare.retry import RetryPolicy

#: Reason given to accessions never tried because the run was stopped.
NOT_ATTEMPTED = "not attempted: preparation was stopped"


@dataclass(frozen=True)
class FetchResult:
    """The outcome for one accession: its folder, or why there is none."""

    folder: Path | None
    reason: str | None
    attempts: int


@dataclass(frozen=True)
class Progress:
    """A progress snapshot (counts only)."""

    done: int
    total: int
    ready: int
    missing: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Accessions finished per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, if it can be estimated."""
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else None

    def describe(self) -> str:
        """One log line: ``40/100 done (38 ready, 2 missing), 12.3/s, ETA 5 s``."""
        eta = self.eta
        eta_text = f"ETA {eta:.0f} s" if eta is not None else "ETA unknown"
        return (
            f"{self.done}/{self.total} done ({self.ready} ready, {self.missing} missing), {self.rate:.1f}/s, {eta_text}"
        )


@dataclass
class FetchReport:
    """All outcomes of a run."""

    results: dict[str, FetchResult] = field(default_factory=dict)
    stopped: bool = False
    seconds: float = 0.0

    @property
    def ready(self) -> int:
        """Number of accessions whose images are there."""
        return sum(1 for r in self.results.values() if r.folder is not None)

    @property
    def missing(self) -> int:
        """Number of accessions without images."""
        return len(self.results) - self.ready

    def reasons(self) -> dict[str, int]:
        """How many accessions are missing for each reason."""
        counts: dict[str, int] = {}
        for result in self.results.values():
            if result.folder is None:
                key = result.reason or "unknown"
                counts[key] = counts.get(key, 0) + 1
        return counts


def is_fatal(exc: BaseException) -> bool:
    """Whether a failure dooms every other request too (bad key, missing settings)."""
    return isinstance(exc, (FlipAuthenticationError, FlipConfigError))


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same request again later may succeed."""
    return isinstance(exc, (FlipServiceUnavailable, TimeoutError, ConnectionError))


def describe_failure(exc: BaseException) -> str:
    """A short reason for a missing accession; never contains the accession id or a path."""
    status = exc.status_code if isinstance(exc, FlipHTTPError) else None
    if isinstance(exc, FlipNotFoundError):
        return "not found at the imaging service (HTTP 404)"
    if isinstance(exc, FlipRequestRejected):
        return f"rejected by the imaging service (HTTP {status})"
    if isinstance(exc, FlipServiceUnavailable):
        what = f"HTTP {status}" if status is not None else "no response"
        return f"imaging service unavailable after retries ({what})"
    if isinstance(exc, FlipInvalidArgument):
        return "invalid accession id (not a single safe path segment)"
    if isinstance(exc, FlipMissingData):
        return "no image folder for this accession in the dev images folder"
    if isinstance(exc, FlipInvalidResponse):
        return "invalid answer from the imaging service"
    return f"failed ({type(exc).__name__})"


#: Extra attempts of one accession's download after the first, by default.
DEFAULT_DOWNLOAD_RETRIES = 5
#: Seconds before the first extra attempt, by default (doubling each time, capped at 30 s).
DEFAULT_DOWNLOAD_RETRY_DELAY = 0.5


def download_retry(retries: int, retry_delay: float) -> RetryPolicy:
    """The fetcher's retry policy from CohortPreparer's job-config arguments.

    Args:
        retries: Extra attempts after the first (>= 0).
        retry_delay: Seconds before the first extra attempt; doubles each time, capped at 30 s.

    Raises:
        FlipConfigError: ``retries`` is not an integer >= 0 or ``retry_delay`` is negative.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise FlipConfigError(f"retries must be an integer >= 0, got {retries!r}.")
    if isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float)) or not 0 <= retry_delay < 1e6:
        raise FlipConfigError(f"retry_delay must be a number of seconds >= 0, got {retry_delay!r}.")
    return RetryPolicy(
        max_attempts=retries + 1,
        initial_delay=float(retry_delay),
        max_delay=max(30.0, float(retry_delay)),
        total_timeout=None,
        jitter=0.0,
    )


def default_download_retry() -> RetryPolicy:
    """Six attempts in all, 0.5 s, 1 s, 2 s, 4 s and 8 s apart (this is the only layer that retries a download)."""
    return download_retry(DEFAULT_DOWNLOAD_RETRIES, DEFAULT_DOWNLOAD_RETRY_DELAY)


class ImageFetcher:
    """Runs ``fetch`` for many accessions, ``concurrency`` at a time.

    Args:
        fetch: Makes one accession's images available and returns their folder.
        concurrency: Fetches in flight at once (>= 1).
        retry: How an accession whose failure was transient is tried again (default: 3 attempts in
            all, 0.5 s to 8 s apart). Its ``total_timeout`` bounds the time spent on one accession.
        progress: Called with a :class:`Progress` every ``progress_interval`` seconds and at the end.
        progress_interval: Seconds between progress reports.
        tick: Called with a :class:`Progress` each time fetches finish (from the thread that called
            :meth:`run`), for a display that throttles itself (:class:`flip_nvflare.progress.ProgressLog`).
        should_stop: Polled between fetches; when it returns True no new fetch starts.
        sleep: Injected for tests.
    """

    def __init__(
        self,
        fetch: Callable[[str], Path],
        *,
        concurrency: int = 4,
        retry: RetryPolicy | None = None,
        progress: Callable[[Progress], None] | None = None,
        progress_interval: float = 10.0,
        tick: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise FlipConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}.")
        if progress_interval <= 0:
            raise FlipConfigError("progress_interval must be > 0 seconds.")
        self._fetch = fetch
        self._concurrency = concurrency
        self._retry = retry or default_download_retry()
        self._progress = progress
        self._progress_interval = progress_interval
        self._tick = tick
        self._should_stop = should_stop or (lambda: False)
        self._sleep = sleep
        self._fatal: BaseException | None = None
        self._fatal_lock = threading.Lock()

    def run(self, accessions: Sequence[str]) -> FetchReport:
        """Fetch every accession (duplicates once); return what happened to each.

        Raises:
            Exception: The first fatal failure (see :func:`is_fatal`), after in-flight fetches end.
        """
        todo = list(dict.fromkeys(accessions))
        report = FetchReport()
        start = time.monotonic()
        next_report = start + self._progress_interval
        queue = iter(todo)
        in_flight: dict[Future[FetchResult], str] = {}
        window = self._concurrency * 2
        with ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="flip-images") as pool:
            exhausted = False
            while True:
                stopping = self._should_stop() or self._fatal is not None
                while not exhausted and not stopping and len(in_flight) < window:
                    accession = next(queue, None)
                    if accession is None:
                        exhausted = True
                        break
                    in_flight[pool.submit(self._one, accession)] = accession
                if not in_flight:
                    break
                done, _ = wait(list(in_flight), timeout=min(1.0, self._progress_interval), return_when=FIRST_COMPLETED)
                for future in done:
                    report.results[in_flight.pop(future)] = future.result()
                now = time.monotonic()
                if self._tick is not None and done:
                    try:
                        self._tick(self._snapshot(report, len(todo), now - start))
                    except Exception:  # a progress display never stops the downloads
                        pass
                if self._progress is not None and now >= next_report:
                    self._progress(self._snapshot(report, len(todo), now - start))
                    next_report = now + self._progress_interval
        report.seconds = time.monotonic() - start
        if self._fatal is not None:
            raise self._fatal
        if len(report.results) < len(todo):
            report.stopped = True
            for accession in todo:
                report.results.setdefault(accession, FetchResult(None, NOT_ATTEMPTED, 0))
        if self._progress is not None:
            self._progress(self._snapshot(report, len(todo), report.seconds))
        return report

    def _snapshot(self, report: FetchReport, total: int, elapsed: float) -> Progress:
        ready = report.ready
        return Progress(
            done=len(report.results), total=total, ready=ready, missing=len(report.results) - ready, elapsed=elapsed
        )

    def _one(self, accession: str) -> FetchResult:
        attempts = 0
        deadline = None if self._retry.total_timeout is None else time.monotonic() + self._retry.total_timeout
        while True:
            attempts += 1
            try:
                return FetchResult(self._fetch(accession), None, attempts)
            except Exception as exc:
                if is_fatal(exc):
                    with self._fatal_lock:
                        if self._fatal is None:
                            self._fatal = exc
                    return FetchResult(None, describe_failure(exc), attempts)
                if not is_transient(exc) or not self._retry.allows(attempts) or self._should_stop():
                    return FetchResult(None, describe_failure(exc), attempts)
                delay = self._retry.delay(attempts)
                if deadline is not None and time.monotonic() + delay >= deadline:
                    return FetchResult(None, describe_failure(exc), attempts)
            self._sleep(delay)
