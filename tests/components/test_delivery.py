"""HubDelivery: order, concurrency, bounded queue, retries across outages, refusals, draining.

A small in-memory backend stands in for the hub here (pure delivery logic); the same delivery is
exercised against the emulated hub, over real sockets, by the e2e runs and the benchmark.

Time is a FakeClock shared by the delivery (retry delays, drain deadline) and the hub (how long a
call takes): it moves only when a test moves it, so each test says when every delay comes due and
checks what happened then.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from flip_nvflare.components.delivery import DeliveryReport, HubCall, HubDelivery, default_delivery_retry, summarise
from flip_nvflare.core.base import FLIPBase
from flip_nvflare.errors import FlipRequestRejected, FlipServiceUnavailable
from flip_nvflare.retry import RetryPolicy
from tests.components.fakes import RecordingHub
from tests.support.clock import Background, FakeClock

FAST = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.05, total_timeout=None, jitter=0.0)


def status(name: str) -> HubCall:
    return HubCall("status", lambda b: b.update_status("m", name), f"status {name}", ordered=True)


def metric(n: int) -> HubCall:
    def send(b: FLIPBase) -> object:
        return b.send_metrics("site-1", "m", f"m{n}", float(n), 0)

    return HubCall("metric", send, f"metric {n}", droppable=True)


def sent(hub: RecordingHub, method: str | None = None) -> list[Any]:
    return [args[0] for m, args, _, _ in sorted(hub.calls, key=lambda c: c[3]) if method in (None, m)]


def outage(method: str, args: tuple[Any, ...]) -> None:
    raise FlipServiceUnavailable("flip-api", "PUT", "/status", None, reason="ConnectError")


def close_on(clock: FakeClock, delivery: HubDelivery, timeout: float = 10.0) -> DeliveryReport:
    """Close ``delivery``, moving the clock through the retries meanwhile (never to the deadline)."""
    closing = Background(lambda: delivery.close(timeout))
    clock.run(closing.done, limit=timeout / 2)
    return closing.result()


def step_calls(clock: FakeClock, hub: RecordingHub, batches: Sequence[int]) -> None:
    """Let the calls on the hub end batch by batch: each batch is on the hub at once, alone, then ends."""
    for size in batches:

        def on_hub(size: int = size) -> bool:
            return len(clock.blocked()) == size == hub.in_flight

        clock.wait_until(on_hub, f"{size} call(s), and no other, on the hub")
        clock.advance(hub.latency)


def test_submit_returns_at_once_and_everything_is_delivered_in_order_of_statuses() -> None:
    clock = FakeClock()
    hub = RecordingHub(latency=0.02, clock=clock)
    delivery = HubDelivery(hub, concurrency=4, retry=FAST, clock=clock)
    items: Sequence[HubCall] = [
        status("INITIATED"),
        *[metric(i) for i in range(10)],
        status("PREPARED"),
        *[metric(i) for i in range(10, 20)],
        status("TRAINING_STARTED"),
    ]
    for item in items:
        assert delivery.submit(item)
    # the clock has not moved, so no hub call can have ended: the 23 calls were only queued
    assert hub.calls == [] and delivery.pending == 23
    # a status alone, then the metrics before the next status four at a time
    step_calls(clock, hub, [1, 4, 4, 2, 1, 4, 4, 2, 1])
    report = close_on(clock, delivery)
    assert report.delivered == {"status": 3, "metric": 20} and not report.undelivered
    order = sent(hub)
    # statuses are barriers: every metric before a status is delivered before it, none after it earlier
    assert order.index("PREPARED") > max(order.index(f"m{i}") for i in range(10))
    assert order.index("PREPARED") < min(order.index(f"m{i}") for i in range(10, 20))
    assert order[0] == "INITIATED" and order[-1] == "TRAINING_STARTED"
    assert hub.max_in_flight == 4  # metrics between barriers went out concurrently, never more than allowed


def test_a_status_is_sent_alone() -> None:
    clock = FakeClock()
    hub = RecordingHub(latency=0.02, clock=clock)
    delivery = HubDelivery(hub, concurrency=8, retry=FAST, clock=clock)
    for item in [*[metric(i) for i in range(8)], status("PREPARED"), *[metric(i) for i in range(8, 16)]]:
        delivery.submit(item)
    step_calls(clock, hub, [8, 1, 8])
    close_on(clock, delivery)
    (_, _, start, end) = next(c for c in hub.calls if c[0] == "status")
    overlapping = [c for c in hub.calls if c[0] == "metric" and c[2] < end and c[3] > start]
    assert overlapping == []


def test_outage_is_retried_until_the_hub_is_back_and_nothing_is_lost() -> None:
    clock = FakeClock()
    down_until = 0.5
    tried: dict[str, list[float]] = {}

    def fail(method: str, args: tuple[Any, ...]) -> None:
        tried.setdefault(args[0], []).append(clock.monotonic())
        if clock.monotonic() < down_until:
            raise FlipServiceUnavailable("flip-api", "POST", "/model/{model_id}/metrics", None, reason="ConnectError")

    hub = RecordingHub(fail=fail, clock=clock)
    delivery = HubDelivery(hub, concurrency=4, retry=FAST, clock=clock)
    delivery.submit(status("INITIATED"))
    for i in range(30):
        delivery.submit(metric(i))
    delivery.submit(status("PREPARED"))
    report = close_on(clock, delivery)
    assert report.delivered == {"status": 2, "metric": 30}
    assert sorted(sent(hub, "metric")) == sorted(f"m{i}" for i in range(30))
    assert sent(hub, "status") == ["INITIATED", "PREPARED"]
    assert min(c[3] for c in hub.calls) >= down_until
    # the first status was retried with backoff through the outage, and delivered at the first retry after it
    times = tried["INITIATED"]
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([FAST.delay(n) for n in range(1, len(times))])
    assert times[-2] < down_until <= times[-1]
    # everything behind it waited for it, and went out once
    assert all(len(tried[f"m{i}"]) == 1 for i in range(30)) and len(tried["PREPARED"]) == 1


def test_503_answers_count_as_an_outage_but_500_only_a_few_times() -> None:
    clock = FakeClock()
    attempts: dict[str, int] = {}

    def fail(method: str, args: tuple[Any, ...]) -> None:
        label = args[0]
        attempts[label] = attempts.get(label, 0) + 1
        if label == "m0" and attempts[label] <= 6:
            raise FlipServiceUnavailable("flip-api", "POST", "/metrics", 503)
        if label == "m1":
            raise FlipServiceUnavailable("flip-api", "POST", "/metrics", 500)

    hub = RecordingHub(fail=fail, clock=clock)
    delivery = HubDelivery(hub, concurrency=2, retry=FAST, clock=clock)
    delivery.submit(metric(0))
    delivery.submit(metric(1))
    report = close_on(clock, delivery)
    assert attempts["m0"] == 7 and report.delivered == {"metric": 1}  # 503 retried past max_attempts
    assert attempts["m1"] == FAST.max_attempts and report.rejected == {"metric": 1}


def test_a_refusal_is_final_and_does_not_hold_up_the_rest() -> None:
    clock = FakeClock()
    tried: list[str] = []

    def fail(method: str, args: tuple[Any, ...]) -> None:
        tried.append(args[0])
        if args[0] == "m3":
            raise FlipRequestRejected("flip-api", "POST", "/metrics", 400, "trust not linked")

    hub = RecordingHub(fail=fail, clock=clock)
    delivery = HubDelivery(hub, concurrency=2, retry=FAST, clock=clock)
    for i in range(6):
        delivery.submit(metric(i))
    delivery.submit(status("RESULTS_UPLOADED"))
    report = close_on(clock, delivery)
    assert report.rejected == {"metric": 1} and report.delivered == {"metric": 5, "status": 1}
    assert "1 refused by the hub (1 metric)" in summarise(report)
    assert tried.count("m3") == 1  # never retried
    assert set(clock.requested) <= {10.0}  # the only wait was close's: nothing waited for a retry


def test_full_queue_drops_new_metrics_but_never_a_status() -> None:
    clock = FakeClock()
    hub = RecordingHub(latency=0.01, clock=clock)
    delivery = HubDelivery(hub, concurrency=1, max_pending=5, retry=FAST, clock=clock)
    delivery.submit(status("INITIATED"))
    clock.wait_for_blocked(1)  # the dispatcher is on the hub with it until the clock moves
    accepted = [delivery.submit(metric(i)) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert delivery.submit(status("PREPARED"))  # over the bound, still queued
    report = close_on(clock, delivery)
    assert report.dropped == {"metric": 3}
    assert report.delivered == {"status": 2, "metric": 5}
    assert sent(hub, "status") == ["INITIATED", "PREPARED"]
    assert sorted(sent(hub, "metric")) == [f"m{i}" for i in range(5)]  # the first five; the later ones dropped


def test_close_gives_up_at_the_deadline_and_counts_what_was_not_delivered() -> None:
    clock = FakeClock()
    hub = RecordingHub(fail=outage, clock=clock)
    delivery = HubDelivery(hub, concurrency=2, retry=FAST, clock=clock)
    delivery.submit(status("INITIATED"))
    for i in range(4):
        delivery.submit(metric(i))
    closing = Background(lambda: delivery.close(timeout=0.3))
    clock.wait_until(lambda: 0.3 in clock.requested, "close to wait for its deadline")
    clock.advance_to(0.29)  # the status is retried meanwhile
    assert not closing.done() and delivery.pending == 5  # not given up before the deadline
    clock.advance_to(0.3)
    report = closing.result()  # given up at the deadline: the clock does not move again
    assert report.delivered == {} and report.undelivered.total() == 5
    assert "5 NOT delivered" in summarise(report)
    assert not delivery.submit(metric(99))  # closed: refused and counted
    assert delivery.report().undelivered["metric"] == 5  # the 4 abandoned and the late one


def test_close_without_any_call_is_immediate() -> None:
    clock = FakeClock()
    delivery = HubDelivery(RecordingHub(clock=clock), retry=FAST, clock=clock)
    closing = Background(lambda: delivery.close(timeout=5))
    assert closing.result().submitted == {}  # returned without the clock moving...
    assert clock.requested == []  # ...and without waiting on it at all


@pytest.mark.parametrize(
    "kwargs",
    [{"concurrency": 0}, {"max_pending": 0}],
)
def test_bad_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        HubDelivery(RecordingHub(), **kwargs)  # type: ignore[arg-type]


def test_retry_policy_checks_and_backs_off() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(initial_delay=2, max_delay=1)
    default = default_delivery_retry()
    assert default.total_timeout is None and default.max_attempts == 5
    policy = RetryPolicy(initial_delay=0.5, max_delay=4, jitter=0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_every_attempt_of_a_call_carries_the_same_idempotency_key_and_calls_differ() -> None:
    from flip_nvflare.core.http import current_idempotency_key

    clock = FakeClock()
    keys: dict[str, list[str | None]] = {}

    def fail(method: str, args: tuple[Any, ...]) -> None:
        keys.setdefault(args[0], []).append(current_idempotency_key())
        if args[0] == "m0" and len(keys["m0"]) <= 2:
            raise FlipServiceUnavailable("flip-api", "POST", "/metrics", 503)

    hub = RecordingHub(fail=fail, clock=clock)
    delivery = HubDelivery(hub, concurrency=1, retry=FAST, clock=clock)
    delivery.submit(metric(0))
    delivery.submit(metric(1))
    close_on(clock, delivery)
    assert len(keys["m0"]) == 3 and len(set(keys["m0"])) == 1 and keys["m0"][0]
    assert keys["m1"][0] and keys["m1"][0] != keys["m0"][0]


def test_a_retry_after_longer_than_the_backoff_is_honoured() -> None:
    clock = FakeClock()
    tries: list[int] = []

    def fail(method: str, args: tuple[Any, ...]) -> None:
        tries.append(1)
        if len(tries) == 1:
            raise FlipServiceUnavailable("flip-api", "POST", "/metrics", 503, retry_after=0.04)

    hub = RecordingHub(fail=fail, clock=clock)
    delivery = HubDelivery(hub, concurrency=1, retry=FAST, clock=clock)
    delivery.submit(metric(0))
    report = close_on(clock, delivery)
    assert report.delivered == {"metric": 1}
    assert 0.04 in clock.requested  # FAST's first backoff is 0.01 s: the hub's 0.04 s was used instead


def series_metric(series: str, n: int) -> HubCall:
    def send(b: FLIPBase) -> object:
        return b.send_metrics("site-1", "m", f"{series}{n}", float(n), n)

    return HubCall("metric", send, f"metric {series}{n}", droppable=True, series=series)


def test_a_series_stays_in_order_through_an_outage_while_other_series_go_on() -> None:
    """A's first point meets an outage: A's later points wait for it; B's points are not held back by A."""
    clock = FakeClock()
    tries: dict[str, int] = {}
    b_sent = threading.Event()

    def fail(method: str, args: tuple[Any, ...]) -> None:
        label = args[0]
        tries[label] = tries.get(label, 0) + 1
        if label == "B2":
            b_sent.set()
        if label == "A0" and tries[label] == 1:
            assert b_sent.wait(10), "series B was held back while A's first point was in flight"
        if label == "A0" and tries[label] <= 4:
            raise FlipServiceUnavailable("flip-api", "POST", "/metrics", 503)

    hub = RecordingHub(fail=fail, clock=clock)
    delivery = HubDelivery(hub, concurrency=4, retry=FAST, clock=clock)
    for n in range(3):
        delivery.submit(series_metric("A", n))
        delivery.submit(series_metric("B", n))
    report = close_on(clock, delivery)
    order = sent(hub, "metric")
    assert report.delivered == {"metric": 6}
    assert [label for label in order if label.startswith("A")] == ["A0", "A1", "A2"]
    assert [label for label in order if label.startswith("B")] == ["B0", "B1", "B2"]
    assert tries["A0"] == 5 and all(tries[f"A{n}"] == 1 for n in (1, 2))


def test_calls_of_a_series_never_overlap_and_calls_without_one_still_run_together() -> None:
    clock = FakeClock()
    hub = RecordingHub(latency=0.01, clock=clock)
    delivery = HubDelivery(hub, concurrency=4, retry=FAST, clock=clock)
    for n in range(4):
        delivery.submit(series_metric("A", n))
    step_calls(clock, hub, [1, 1, 1, 1])  # one at a time, though four workers are free
    for n in range(4):
        delivery.submit(metric(n))
    step_calls(clock, hub, [4])
    assert close_on(clock, delivery).delivered == {"metric": 8}
    assert sent(hub, "metric")[:4] == ["A0", "A1", "A2", "A3"]


def test_close_counts_waiting_series_calls_as_undelivered() -> None:
    clock = FakeClock()
    hub = RecordingHub(fail=outage, clock=clock)
    delivery = HubDelivery(hub, concurrency=2, retry=FAST, clock=clock)
    for n in range(3):
        delivery.submit(series_metric("A", n))
    clock.wait_for_blocked(1)  # A0 is waiting out its first retry delay; A1 and A2 wait behind it
    report = delivery.close(0.0)
    assert report.delivered == {} and report.undelivered["metric"] == 2
    assert report.undelivered["in flight"] == 1


def test_what_did_not_reach_the_hub_is_listed_by_kind_and_series_never_values() -> None:
    clock = FakeClock()

    def fail(method: str, args: tuple[Any, ...]) -> None:
        if args[0] == "A1":
            raise FlipRequestRejected("flip-api", "POST", "/metrics", 400, "trust not linked")

    hub = RecordingHub(fail=fail, clock=clock)
    delivery = HubDelivery(hub, concurrency=2, max_pending=2, retry=FAST, clock=clock)
    delivery.submit(series_metric("A", 1))  # refused by the hub
    delivery.submit(series_metric("A", 2))
    delivery.submit(status("PREPARED"))
    report = close_on(clock, delivery)
    assert report.missed == {"metric A": 1}
    line = summarise(report)
    assert "missing from the hub: 1 metric A" in line and "1.0" not in line.split("missing")[1]


def test_many_series_share_every_connection_in_order_around_a_status() -> None:
    """Senders take their next call themselves: all connections stay busy, each series in order, none overlapping."""
    clock = FakeClock()
    hub = RecordingHub(latency=0.01, clock=clock)
    delivery = HubDelivery(hub, concurrency=3, retry=FAST, clock=clock)
    for n in range(4):
        for name in "ABCDE":
            delivery.submit(series_metric(name, n))
    delivery.submit(status("PREPARED"))
    for n in range(4, 6):
        for name in "ABCDE":
            delivery.submit(series_metric(name, n))
    report = close_on(clock, delivery)
    assert report.delivered == {"metric": 30, "status": 1} and not report.undelivered
    order = sent(hub)
    for name in "ABCDE":
        assert [label for label in order if label[0] == name] == [f"{name}{n}" for n in range(6)]
        spans = sorted((start, end) for _, args, start, end in hub.calls if args[0][0] == name)
        assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))
    barrier = order.index("PREPARED")
    assert all(order.index(f"{name}{n}") < barrier for name in "ABCDE" for n in range(4))
    assert all(order.index(f"{name}{n}") > barrier for name in "ABCDE" for n in range(4, 6))
    assert hub.max_in_flight == 3
