"""HubDelivery: order, concurrency, bounded queue, retries across outages, refusals, draining.

A small in-memory backend stands in for the hub here (pure delivery logic); the same delivery is
exercised against the emulated hub, over real sockets, by the e2e runs and the benchmark.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from flip_nvflare.components.delivery import DeliveryRetry, HubCall, HubDelivery, summarise
from flip_nvflare.core.base import FLIPBase
from flip_nvflare.errors import FlipRequestRejected, FlipServiceUnavailable
from tests.components.fakes import RecordingHub

FAST = DeliveryRetry(initial_delay=0.01, max_delay=0.05, max_error_attempts=3, jitter=0.0)


def status(name: str) -> HubCall:
    return HubCall("status", lambda b: b.update_status("m", name), f"status {name}", ordered=True)


def metric(n: int) -> HubCall:
    def send(b: FLIPBase) -> object:
        return b.send_metrics("site-1", "m", f"m{n}", float(n), 0)

    return HubCall("metric", send, f"metric {n}", droppable=True)


def sent(hub: RecordingHub, method: str | None = None) -> list[Any]:
    return [args[0] for m, args, _, _ in sorted(hub.calls, key=lambda c: c[3]) if method in (None, m)]


def test_submit_returns_at_once_and_everything_is_delivered_in_order_of_statuses() -> None:
    hub = RecordingHub(latency=0.02)
    delivery = HubDelivery(hub, concurrency=4, retry=FAST)
    items: Sequence[HubCall] = [
        status("INITIATED"),
        *[metric(i) for i in range(10)],
        status("PREPARED"),
        *[metric(i) for i in range(10, 20)],
        status("TRAINING_STARTED"),
    ]
    t0 = time.monotonic()
    for item in items:
        assert delivery.submit(item)
    assert time.monotonic() - t0 < 0.05  # 23 calls of 20 ms each were only queued
    report = delivery.close(timeout=10)
    assert report.delivered == {"status": 3, "metric": 20} and not report.undelivered
    order = sent(hub)
    # statuses are barriers: every metric before a status is delivered before it, none after it earlier
    assert order.index("PREPARED") > max(order.index(f"m{i}") for i in range(10))
    assert order.index("PREPARED") < min(order.index(f"m{i}") for i in range(10, 20))
    assert order[0] == "INITIATED" and order[-1] == "TRAINING_STARTED"
    assert hub.max_in_flight == 4  # metrics between barriers went out concurrently, never more than allowed


def test_a_status_is_sent_alone() -> None:
    hub = RecordingHub(latency=0.02)
    delivery = HubDelivery(hub, concurrency=8, retry=FAST)
    for item in [*[metric(i) for i in range(8)], status("PREPARED"), *[metric(i) for i in range(8, 16)]]:
        delivery.submit(item)
    delivery.close(timeout=10)
    (_, _, start, end) = next(c for c in hub.calls if c[0] == "status")
    overlapping = [c for c in hub.calls if c[0] == "metric" and c[2] < end and c[3] > start]
    assert overlapping == []


def test_outage_is_retried_until_the_hub_is_back_and_nothing_is_lost() -> None:
    down_until = time.monotonic() + 0.5

    def fail(method: str, args: tuple[Any, ...]) -> None:
        if time.monotonic() < down_until:
            raise FlipServiceUnavailable("flip-api", "POST", "/model/{model_id}/metrics", None, reason="ConnectError")

    hub = RecordingHub(fail=fail)
    delivery = HubDelivery(hub, concurrency=4, retry=FAST)
    delivery.submit(status("INITIATED"))
    for i in range(30):
        delivery.submit(metric(i))
    delivery.submit(status("PREPARED"))
    report = delivery.close(timeout=10)
    assert report.delivered == {"status": 2, "metric": 30}
    assert sorted(sent(hub, "metric")) == sorted(f"m{i}" for i in range(30))
    assert sent(hub, "status") == ["INITIATED", "PREPARED"]
    assert min(c[3] for c in hub.calls) >= down_until


def test_503_answers_count_as_an_outage_but_500_only_a_few_times() -> None:
    attempts: dict[str, int] = {}

    def fail(method: str, args: tuple[Any, ...]) -> None:
        label = args[0]
        attempts[label] = attempts.get(label, 0) + 1
        if label == "m0" and attempts[label] <= 6:
            raise FlipServiceUnavailable("flip-api", "POST", "/metrics", 503)
        if label == "m1":
            raise FlipServiceUnavailable("flip-api", "POST", "/metrics", 500)

    hub = RecordingHub(fail=fail)
    delivery = HubDelivery(hub, concurrency=2, retry=FAST)
    delivery.submit(metric(0))
    delivery.submit(metric(1))
    report = delivery.close(timeout=10)
    assert attempts["m0"] == 7 and report.delivered == {"metric": 1}  # 503 retried past max_error_attempts
    assert attempts["m1"] == FAST.max_error_attempts and report.rejected == {"metric": 1}


def test_a_refusal_is_final_and_does_not_hold_up_the_rest() -> None:
    def fail(method: str, args: tuple[Any, ...]) -> None:
        if args[0] == "m3":
            raise FlipRequestRejected("flip-api", "POST", "/metrics", 400, "trust not linked")

    hub = RecordingHub(fail=fail)
    delivery = HubDelivery(hub, concurrency=2, retry=FAST)
    for i in range(6):
        delivery.submit(metric(i))
    delivery.submit(status("RESULTS_UPLOADED"))
    report = delivery.close(timeout=10)
    assert report.rejected == {"metric": 1} and report.delivered == {"metric": 5, "status": 1}
    assert "1 refused by the hub (1 metric)" in summarise(report)


def test_full_queue_drops_new_metrics_but_never_a_status() -> None:
    gate = threading.Event()

    def fail(method: str, args: tuple[Any, ...]) -> None:
        gate.wait(5)

    hub = RecordingHub(fail=fail)
    delivery = HubDelivery(hub, concurrency=1, max_pending=5, retry=FAST)
    delivery.submit(status("INITIATED"))  # blocks the dispatcher until the gate opens
    time.sleep(0.05)
    accepted = [delivery.submit(metric(i)) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert delivery.submit(status("PREPARED"))  # over the bound, still queued
    gate.set()
    report = delivery.close(timeout=10)
    assert report.dropped == {"metric": 3}
    assert report.delivered == {"status": 2, "metric": 5}
    assert sent(hub, "status") == ["INITIATED", "PREPARED"]


def test_close_gives_up_at_the_deadline_and_counts_what_was_not_delivered() -> None:
    def fail(method: str, args: tuple[Any, ...]) -> None:
        raise FlipServiceUnavailable("flip-api", "PUT", "/status", None, reason="ConnectError")

    hub = RecordingHub(fail=fail)
    delivery = HubDelivery(hub, concurrency=2, retry=FAST)
    delivery.submit(status("INITIATED"))
    for i in range(4):
        delivery.submit(metric(i))
    t0 = time.monotonic()
    report = delivery.close(timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 2.0
    assert report.delivered == {} and report.undelivered.total() == 5
    assert "5 NOT delivered" in summarise(report)
    assert not delivery.submit(metric(99))  # closed: refused and counted
    assert delivery.report().undelivered["metric"] == 5  # the 4 abandoned and the late one


def test_close_without_any_call_is_immediate() -> None:
    delivery = HubDelivery(RecordingHub(), retry=FAST)
    t0 = time.monotonic()
    assert delivery.close(timeout=5).submitted == {}
    assert time.monotonic() - t0 < 0.1


@pytest.mark.parametrize(
    "kwargs",
    [{"concurrency": 0}, {"max_pending": 0}],
)
def test_bad_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        HubDelivery(RecordingHub(), **kwargs)  # type: ignore[arg-type]


def test_retry_policy_checks_and_backs_off() -> None:
    with pytest.raises(ValueError):
        DeliveryRetry(initial_delay=2, max_delay=1)
    policy = DeliveryRetry(initial_delay=0.5, max_delay=4, jitter=0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
