"""Fault injection, observed through the core backend's retries and timeouts (FLIPStandardProd)."""

from __future__ import annotations

import random
import time

import httpx
import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.constants import ModelStatus
from flip_nvflare.core.http import RetryPolicy
from flip_nvflare.errors import FlipRequestRejected, FlipServiceUnavailable

FAST = RetryPolicy(max_attempts=6, initial_delay=0.02, max_delay=0.1, total_timeout=20, jitter=0)
PATIENT = RetryPolicy(max_attempts=60, initial_delay=0.05, max_delay=0.2, total_timeout=20, jitter=0)
COHORT = "SELECT person_id, accession_id FROM omop.image_occurrence"


@pytest.fixture
def emu(flip_emulator_shared: EmulatorHandle) -> EmulatorHandle:
    return flip_emulator_shared


def attempts(emu: EmulatorHandle, route: str) -> list[tuple[int, str | None]]:
    return [(r.status_code, r.fault) for r in emu.requests() if r.route == route]


def wait_for_requests(emu: EmulatorHandle, route: str, count: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while len(attempts(emu, route)) < count:
        assert time.monotonic() < deadline, f"{route}: fewer than {count} requests recorded"
        time.sleep(0.05)


def test_first_errors_are_retried_and_the_status_is_recorded_once(emu: EmulatorHandle) -> None:
    model = emu.register_model().model_id
    emu.set_fault("hub.status", error_first=2, error_status=503)
    backend = emu.prod_backend(retry=FAST)
    backend.update_status(model, ModelStatus.INITIATED)
    assert attempts(emu, "hub.status") == [(503, "error=503"), (503, "error=503"), (200, None)]
    assert emu.records(model).status_names() == ["INITIATED"]


def test_every_nth_error_loses_and_duplicates_nothing(emu: EmulatorHandle) -> None:
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


def test_seeded_error_rate_gives_the_expected_sequence(emu: EmulatorHandle) -> None:
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


def test_non_retryable_injected_error_is_final(emu: EmulatorHandle) -> None:
    model = emu.register_model().model_id
    emu.set_fault("hub.logs", error_first=1, error_status=400)
    backend = emu.prod_backend(retry=FAST)
    with pytest.raises(FlipRequestRejected) as err:
        backend.send_handled_exception("Traceback: boom", "site-1", model)
    assert err.value.status_code == 400
    assert attempts(emu, "hub.logs") == [(400, "error=400")]
    assert emu.records(model).logs == []


def test_retry_after_is_honoured(emu: EmulatorHandle) -> None:
    model = emu.register_model().model_id
    emu.set_fault("hub.status", error_first=1, error_status=429, retry_after=0.5)
    backend = emu.prod_backend(retry=RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=1.0, jitter=0))
    t0 = time.monotonic()
    backend.update_status(model, ModelStatus.PREPARED)
    assert time.monotonic() - t0 >= 0.5
    assert emu.records(model).status_names() == ["PREPARED"]


def test_latency_beyond_the_timeout_fails_and_within_it_succeeds(emu: EmulatorHandle) -> None:
    emu.set_fault("trust.cohort", latency=0.6)
    impatient = emu.prod_backend(http_timeout=0.2, retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0))
    t0 = time.monotonic()
    with pytest.raises(FlipServiceUnavailable):
        impatient.get_dataframe(emu.encrypted_project_id, COHORT)
    assert 0.35 <= time.monotonic() - t0 < 3
    patient = emu.prod_backend(http_timeout=5, retry=FAST)
    t0 = time.monotonic()
    assert len(patient.get_dataframe(emu.encrypted_project_id, COHORT)) > 0
    assert time.monotonic() - t0 >= 0.6


def test_hung_requests_time_out_and_are_never_processed(emu: EmulatorHandle) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    emu.set_fault("hub.metrics", hang=True)
    backend = emu.prod_backend(http_timeout=0.3, retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0))
    t0 = time.monotonic()
    with pytest.raises(FlipServiceUnavailable):
        backend.send_metrics("site-1", model, "LOSS_FUNCTION", 1.0, 0)
    assert 0.5 <= time.monotonic() - t0 < 3
    emu.clear_faults()  # releases the hung requests
    wait_for_requests(emu, "hub.metrics", 2)
    assert attempts(emu, "hub.metrics") == [(503, "hang"), (503, "hang")]
    assert emu.records(model).metrics == []
    backend.send_metrics("site-1", model, "LOSS_FUNCTION", 1.0, 0)
    assert len(emu.records(model).metrics) == 1


def test_refused_connections_are_ridden_out_by_retries(emu: EmulatorHandle) -> None:
    model = emu.register_model().model_id
    emu.stop_hub(1.0)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{emu.hub_base}/health", timeout=1)
    t0 = time.monotonic()
    emu.prod_backend(retry=PATIENT).update_status(model, ModelStatus.INITIATED)
    assert time.monotonic() - t0 >= 0.6
    assert emu.records(model).status_names() == ["INITIATED"]


def test_without_retries_a_down_hub_is_reported_unavailable(emu: EmulatorHandle) -> None:
    model = emu.register_model().model_id
    emu.stop_hub(0.8)
    with pytest.raises(FlipServiceUnavailable) as err:
        emu.prod_backend(retry=RetryPolicy(max_attempts=1)).update_status(model, ModelStatus.INITIATED)
    assert err.value.status_code is None
    emu.wait_up()
    assert emu.records(model).statuses == []


def test_clearing_faults_ends_a_down_window_early(emu: EmulatorHandle) -> None:
    emu.stop_hub(60)
    emu.stop_trust(60, mode="503")
    assert not emu.health()
    t0 = time.monotonic()
    emu.clear_faults()  # asked of the trust: the hub is not listening
    emu.wait_up(timeout=5)
    assert time.monotonic() - t0 < 5


def test_a_503_down_window_is_ridden_out_by_retries(emu: EmulatorHandle) -> None:
    emu.stop_trust(0.8, mode="503")
    assert httpx.get(f"{emu.trust_url}/health").status_code == 503
    t0 = time.monotonic()
    frame = emu.prod_backend(retry=PATIENT).get_dataframe(emu.encrypted_project_id, COHORT)
    assert len(frame) > 0 and time.monotonic() - t0 >= 0.5
    statuses = [status for status, _ in attempts(emu, "trust.cohort")]
    assert statuses[-1] == 200 and set(statuses[:-1]) == {503}
