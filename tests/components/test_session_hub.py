"""A HubSession against the emulated hub over real sockets: the delivery alone retries, and retries record once."""

from __future__ import annotations

import logging

import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.components.session import HubSession, SessionSettings, TrustNames
from flip_nvflare.constants import HubApi, ModelStatus


@pytest.fixture
def emu(flip_emulator_shared: EmulatorHandle) -> EmulatorHandle:
    return flip_emulator_shared


def _session(emu: EmulatorHandle, model: str) -> HubSession:
    return HubSession(
        emu.prod_backend(),
        model_id=model,
        trust_names=TrustNames(),
        hub_api=HubApi.H1,
        settings=SessionSettings(concurrency=2, drain_timeout=30.0),
        flip_mode="prod",
    )


@pytest.mark.parametrize("route", ["hub.status", "hub.metrics", "hub.logs"])
def test_calls_whose_answers_were_lost_are_recorded_once(emu: EmulatorHandle, route: str) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    emu.set_fault(route, error_first=1, lose_answer=True, drop_connection=True)
    session = _session(emu, model)
    session.hold("test")
    session.report_status(ModelStatus.INITIATED)
    session.send_metric("site-1", "LOSS", 0.5, 0)
    session.send_client_log("site-1", "it failed")
    report = session.release("test")
    assert report is not None and sum(report.delivered.values()) == 3
    records = emu.records(model)
    assert [s.status for s in records.statuses] == ["INITIATED"]
    assert len(records.metrics) == 1 and len(records.logs) == 1
    (duplicate,) = emu.duplicates(model)
    assert duplicate.route == route and duplicate.count == 1


def test_the_delivery_is_the_only_layer_that_retries(emu: EmulatorHandle, caplog: pytest.LogCaptureFixture) -> None:
    """Under a hub answering 503 twice, each delivery try is one request: the HTTP layer does not retry too."""
    caplog.set_level(logging.INFO, logger="flip_nvflare.components.delivery")
    model = emu.register_model(trusts=["Trust_1"]).model_id
    emu.set_fault("hub.metrics", error_first=2)
    session = _session(emu, model)
    session.hold("test")
    session.send_metric("site-1", "LOSS", 0.5, 0)
    session.release("test")
    attempts = [r for r in emu.requests("hub") if r.path.endswith("/metrics")]
    assert [r.status_code for r in attempts] == [503, 503, 204]
    delivery_retries = [r for r in caplog.records if "retry" in r.getMessage() and "metric" in r.getMessage()]
    assert len(delivery_retries) == 2  # both 503s were seen, and retried, by the delivery itself
    assert len(emu.records(model).metrics) == 1
