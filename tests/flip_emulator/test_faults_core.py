"""Fault injection, observed through the core backend's retries and timeouts (FLIPStandardProd).

The emulator runs in its own process, on real time. The backend's waits before a retry are the
test's (:class:`RetryWaits`): recorded and returned from at once, so no test waits for a retry, and
a test that takes a service down ends the down window itself, at the retry it chooses, instead of
waiting for a timer. What is checked is what happened: the attempts, the delays asked for between
them, what the services recorded.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable

import httpx
import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.constants import ModelStatus
from flip_nvflare.core import prod
from flip_nvflare.core.http import RetryPolicy, ServiceClient
from flip_nvflare.errors import FlipRequestRejected, FlipServiceUnavailable

FAST = RetryPolicy(max_attempts=6, initial_delay=0.02, max_delay=0.1, total_timeout=20, jitter=0)
PATIENT = RetryPolicy(max_attempts=60, initial_delay=0.05, max_delay=0.2, total_timeout=20, jitter=0)
COHORT = "SELECT person_id, accession_id FROM omop.image_occurrence"


@pytest.fixture
def emu(flip_emulator_shared: EmulatorHandle) -> EmulatorHandle:
    return flip_emulator_shared


def attempts(emu: EmulatorHandle, route: str) -> list[tuple[int, str | None]]:
    return [(r.status_code, r.fault) for r in emu.requests() if r.route == route]


def recorded(emu: EmulatorHandle, route: str, count: int) -> list[tuple[int, str | None]]:
    """The requests of ``route`` once ``count`` are recorded (a request is recorded when it ends), or after 5 s."""
    for _ in range(100):
        seen = attempts(emu, route)
        if len(seen) >= count:
            break
        time.sleep(0.05)
    return seen


def delays(policy: RetryPolicy, retries: int) -> list[float]:
    return [policy.delay(n) for n in range(1, retries + 1)]


class RetryWaits:
    """The HTTP layer's ``sleep``: records each delay and returns at once, after the action set for that retry."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._actions: dict[int, Callable[[], object]] = {}

    def before_retry(self, number: int, action: Callable[[], object]) -> None:
        """Run ``action`` while waiting before retry ``number`` (1-based), e.g. to end an outage."""
        self._actions[number] = action

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        action = self._actions.get(len(self.delays))
        if action is not None:
            action()


@pytest.fixture(autouse=True)
def waits(monkeypatch: pytest.MonkeyPatch) -> RetryWaits:
    """Every backend made in the test waits before its retries through this."""
    waits = RetryWaits()
    monkeypatch.setattr(prod, "ServiceClient", functools.partial(ServiceClient, sleep=waits))
    return waits


def end_outage(emu: EmulatorHandle) -> None:
    emu.clear_faults()  # ends the down windows too
    emu.wait_up()


def test_first_errors_are_retried_and_the_status_is_recorded_once(emu: EmulatorHandle, waits: RetryWaits) -> None:
    model = emu.register_model().model_id
    emu.set_fault("hub.status", error_first=2, error_status=503)
    backend = emu.prod_backend(retry=FAST)
    backend.update_status(model, ModelStatus.INITIATED)
    assert attempts(emu, "hub.status") == [(503, "error=503"), (503, "error=503"), (200, None)]
    assert emu.records(model).status_names() == ["INITIATED"]
    assert waits.delays == delays(FAST, 2)


def test_every_nth_error_loses_and_duplicates_nothing(emu: EmulatorHandle, waits: RetryWaits) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    emu.set_fault("hub.metrics", error_every=2, error_status=502)
    backend = emu.prod_backend(retry=FAST)
    values = [0.9, 0.7, 0.5, 0.4, 0.35, 0.3]
    for round_number, value in enumerate(values):
        backend.send_metrics("site-1", model, "LOSS_FUNCTION", value, round_number)
    metrics = emu.records(model).metrics
    assert [(m.global_round, m.result) for m in metrics] == list(enumerate(values))
    seen = attempts(emu, "hub.metrics")
    assert [status for status, _ in seen] == [502 if n % 2 == 0 else 204 for n in range(1, len(seen) + 1)]
    assert seen.count((204, None)) == len(values)
    assert waits.delays == [FAST.delay(1)] * seen.count((502, "error=502"))  # each error retried once


def test_seeded_error_rate_gives_the_expected_sequence(emu: EmulatorHandle, waits: RetryWaits) -> None:
    emu.set_fault("trust.cohort", error_rate=0.5, seed=11, error_status=503)
    backend = emu.prod_backend(retry=RetryPolicy(max_attempts=30, initial_delay=0.01, max_delay=0.02, jitter=0))
    for _ in range(4):
        frame = backend.get_dataframe(emu.encrypted_project_id, COHORT)
        assert len(frame) > 0
    rng = random.Random(11)
    expected: list[int] = []
    while expected.count(200) < 4:
        expected.append(503 if rng.random() < 0.5 else 200)
    assert [status for status, _ in attempts(emu, "trust.cohort")] == expected
    assert [q.status_code for q in emu.cohort_queries()] == [200] * 4  # injected errors never reach the service
    assert len(waits.delays) == expected.count(503)  # every injected error was retried


def test_non_retryable_injected_error_is_final(emu: EmulatorHandle, waits: RetryWaits) -> None:
    model = emu.register_model().model_id
    emu.set_fault("hub.logs", error_first=1, error_status=400)
    backend = emu.prod_backend(retry=FAST)
    with pytest.raises(FlipRequestRejected) as err:
        backend.send_handled_exception("Traceback: boom", "site-1", model)
    assert err.value.status_code == 400
    assert attempts(emu, "hub.logs") == [(400, "error=400")]
    assert emu.records(model).logs == []
    assert waits.delays == []


def test_retry_after_is_honoured(emu: EmulatorHandle, waits: RetryWaits) -> None:
    model = emu.register_model().model_id
    emu.set_fault("hub.status", error_first=1, error_status=429, retry_after=0.5)
    backend = emu.prod_backend(retry=RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=1.0, jitter=0))
    backend.update_status(model, ModelStatus.PREPARED)
    assert waits.delays == [0.5]  # what Retry-After asked for, not the policy's 0.01
    assert attempts(emu, "hub.status") == [(429, "error=429"), (200, None)]
    assert emu.records(model).status_names() == ["PREPARED"]


def test_latency_beyond_the_timeout_fails_and_within_it_succeeds(emu: EmulatorHandle, waits: RetryWaits) -> None:
    emu.set_fault("trust.cohort", latency=0.6)
    impatient = emu.prod_backend(http_timeout=0.2, retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0))
    with pytest.raises(FlipServiceUnavailable) as err:
        impatient.get_dataframe(emu.encrypted_project_id, COHORT)
    assert "ReadTimeout after 2 attempt(s)" in str(err.value)  # both attempts gave up waiting for the answer
    assert waits.delays == [0.01]
    patient = emu.prod_backend(http_timeout=5, retry=FAST)
    assert len(patient.get_dataframe(emu.encrypted_project_id, COHORT)) > 0
    assert waits.delays == [0.01]  # the patient backend waited the latency out, without a retry
    seen = recorded(emu, "trust.cohort", 3)
    assert [fault for _, fault in seen] == ["latency=0.6"] * 3  # the latency was added to all three requests
    assert (200, "latency=0.6") in seen


def test_hung_requests_time_out_and_are_never_processed(emu: EmulatorHandle, waits: RetryWaits) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    emu.set_fault("hub.metrics", hang=True)
    backend = emu.prod_backend(http_timeout=0.3, retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0))
    with pytest.raises(FlipServiceUnavailable) as err:
        backend.send_metrics("site-1", model, "LOSS_FUNCTION", 1.0, 0)
    assert "ReadTimeout after 2 attempt(s)" in str(err.value)  # both attempts timed out, unanswered
    assert waits.delays == [0.01]
    emu.clear_faults()  # releases the hung requests
    assert recorded(emu, "hub.metrics", 2) == [(503, "hang"), (503, "hang")]
    assert emu.records(model).metrics == []
    backend.send_metrics("site-1", model, "LOSS_FUNCTION", 1.0, 0)
    assert len(emu.records(model).metrics) == 1


def test_refused_connections_are_ridden_out_by_retries(emu: EmulatorHandle, waits: RetryWaits) -> None:
    model = emu.register_model().model_id
    emu.stop_hub(60)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{emu.hub_base}/health", timeout=1)
    waits.before_retry(3, lambda: end_outage(emu))
    emu.prod_backend(retry=PATIENT).update_status(model, ModelStatus.INITIATED)
    assert waits.delays == delays(PATIENT, 3)  # three refused attempts, retried with backoff
    assert emu.records(model).status_names() == ["INITIATED"]
    assert attempts(emu, "hub.status") == [(200, None)]  # the refused ones never reached the hub


def test_without_retries_a_down_hub_is_reported_unavailable(emu: EmulatorHandle, waits: RetryWaits) -> None:
    model = emu.register_model().model_id
    emu.stop_hub(60)
    with pytest.raises(FlipServiceUnavailable) as err:
        emu.prod_backend(retry=RetryPolicy(max_attempts=1)).update_status(model, ModelStatus.INITIATED)
    assert err.value.status_code is None
    assert waits.delays == []
    end_outage(emu)
    assert emu.records(model).statuses == []


def test_clearing_faults_ends_a_down_window_early(emu: EmulatorHandle) -> None:
    emu.stop_hub(60)
    emu.stop_trust(60, mode="503")
    assert not emu.health()
    emu.clear_faults()  # asked of the trust: the hub is not listening
    emu.wait_up(timeout=5)  # raises if either service is still down: the windows had 60 s to go
    assert emu.health()


def test_a_503_down_window_is_ridden_out_by_retries(emu: EmulatorHandle, waits: RetryWaits) -> None:
    emu.stop_trust(60, mode="503")
    assert httpx.get(f"{emu.trust_url}/health").status_code == 503
    waits.before_retry(3, emu.clear_faults)
    frame = emu.prod_backend(retry=PATIENT).get_dataframe(emu.encrypted_project_id, COHORT)
    assert len(frame) > 0
    assert waits.delays == delays(PATIENT, 3)
    statuses = [status for status, _ in attempts(emu, "trust.cohort")]
    assert statuses[-1] == 200 and set(statuses[:-1]) == {503}
    assert statuses == [503, 503, 503, 200]
