from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from flip_nvflare.errors import (
    FlipAuthenticationError,
    FlipConfigError,
    FlipNotFoundError,
    FlipServiceUnavailable,
)
from flip_nvflare.executors.downloads import NOT_ATTEMPTED, ImageFetcher, Progress, download_retry

ROUTE = ("imaging-api", "POST", "/download/images/net-1")


class FakeImaging:
    """Records concurrency and fails on demand."""

    def __init__(self, latency: float = 0.0, failures: dict[str, list[Exception]] | None = None) -> None:
        self.latency = latency
        self.failures = failures or {}
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def __call__(self, accession: str) -> Path:
        with self._lock:
            self.calls[accession] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            planned = self.failures.get(accession)
            failure = planned.pop(0) if planned else None
        try:
            time.sleep(self.latency)
            if failure is not None:
                raise failure
            return Path("/images/net-1") / accession
        finally:
            with self._lock:
                self.in_flight -= 1


def _unavailable() -> FlipServiceUnavailable:
    return FlipServiceUnavailable(*ROUTE, 503)


def test_concurrency_is_bounded_and_reached() -> None:
    imaging = FakeImaging(latency=0.02)
    report = ImageFetcher(imaging, concurrency=4, retry=download_retry(0, 1.0)).run([f"A{i}" for i in range(40)])
    assert imaging.max_in_flight == 4
    assert report.ready == 40 and report.missing == 0
    assert report.results["A7"].folder == Path("/images/net-1/A7")


def test_transient_failures_are_retried_with_backoff() -> None:
    imaging = FakeImaging(failures={"A1": [_unavailable(), _unavailable()], "A2": [_unavailable()] * 5})
    delays: list[float] = []
    report = ImageFetcher(imaging, concurrency=2, retry=download_retry(2, 0.5), sleep=delays.append).run(["A1", "A2"])
    assert report.results["A1"].folder is not None and report.results["A1"].attempts == 3
    assert report.results["A2"].folder is None
    assert report.results["A2"].reason == "imaging service unavailable after retries (HTTP 503)"
    assert imaging.calls["A2"] == 3
    assert sorted(delays) == [0.5, 0.5, 1.0, 1.0]


def test_permanent_failures_are_not_retried_and_reasons_hold_no_ids() -> None:
    imaging = FakeImaging(
        failures={"ACC9": [FlipNotFoundError(*ROUTE, 404, "Resource not found")], "B": [KeyError("B")]}
    )
    report = ImageFetcher(imaging, retry=download_retry(3, 1.0), sleep=lambda s: None).run(["ACC9", "B", "C"])
    assert imaging.calls["ACC9"] == 1
    assert report.reasons() == {"not found at the imaging service (HTTP 404)": 1, "failed (KeyError)": 1}
    assert all("ACC9" not in reason for reason in report.reasons())


def test_fatal_failure_stops_everything() -> None:
    accessions = [f"A{i}" for i in range(50)]
    failures: dict[str, list[Exception]] = {"A0": [FlipAuthenticationError(*ROUTE, 401, "invalid key")]}
    imaging = FakeImaging(latency=0.01, failures=failures)
    with pytest.raises(FlipAuthenticationError):
        ImageFetcher(imaging, concurrency=2).run(accessions)
    assert sum(imaging.calls.values()) < 10


def test_stop_leaves_the_rest_not_attempted() -> None:
    imaging = FakeImaging(latency=0.01)
    report = ImageFetcher(imaging, concurrency=2, should_stop=lambda: sum(imaging.calls.values()) >= 6).run(
        [f"A{i}" for i in range(100)]
    )
    assert report.stopped
    assert len(report.results) == 100
    assert report.ready < 20
    assert report.reasons()[NOT_ATTEMPTED] == 100 - report.ready


def test_duplicates_are_fetched_once() -> None:
    imaging = FakeImaging()
    report = ImageFetcher(imaging).run(["A", "B", "A", "A"])
    assert imaging.calls == Counter({"A": 1, "B": 1})
    assert len(report.results) == 2


def test_progress_reports_counts() -> None:
    snapshots: list[Progress] = []
    ImageFetcher(FakeImaging(latency=0.01), concurrency=2, progress=snapshots.append, progress_interval=0.02).run(
        [f"ACC{i}" for i in range(20)]
    )
    assert len(snapshots) >= 2
    last = snapshots[-1]
    assert (last.done, last.total, last.ready, last.missing) == (20, 20, 20, 0)
    text = last.describe()
    assert text.startswith("20/20 done (20 ready, 0 missing)") and "ACC" not in text


def test_progress_eta() -> None:
    snap = Progress(done=25, total=100, ready=25, missing=0, elapsed=5.0)
    assert snap.rate == 5.0 and snap.eta == 15.0
    assert Progress(done=0, total=10, ready=0, missing=0, elapsed=0.0).eta is None


@pytest.mark.parametrize("kwargs", [{"concurrency": 0}, {"concurrency": True}, {"progress_interval": 0}])
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(FlipConfigError):
        ImageFetcher(FakeImaging(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("retries", "retry_delay"), [(-1, 1.0), (True, 1.0), (1.5, 1.0), (2, -1), (2, float("nan"))])
def test_bad_retry_settings_are_refused(retries: object, retry_delay: object) -> None:
    with pytest.raises(FlipConfigError, match="retr"):
        download_retry(retries, retry_delay)  # type: ignore[arg-type]


def test_one_layer_retries_a_download() -> None:
    """The fetcher's policy is the only retry: an always-unavailable accession is asked retries + 1 times."""
    imaging = FakeImaging(failures={"A": [_unavailable()] * 10})
    report = ImageFetcher(imaging, retry=download_retry(3, 0.0), sleep=lambda s: None).run(["A"])
    assert imaging.calls["A"] == 4 and report.results["A"].attempts == 4
