"""The hub's ``Idempotency-Key`` handling and the lost-answer fault, over real HTTP.

A hub write carrying a key it has already seen (same route, same model) gets the first answer again
and is not recorded again; the repeat is listed in the model's ``duplicates``. The same key with a
different request is refused with 422. The ``lose_answer`` fault records a call and then loses its
answer, so a client's retry can be shown to be recorded once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from flip_emulator.faults import FaultBoard, FaultSpec
from flip_emulator.handle import EmulatorHandle
from flip_emulator.store import DuplicateRecord, ModelRecords
from flip_nvflare.constants import IDEMPOTENCY_KEY_HEADER

METRIC = {"trust": "Trust_1", "fl_client_name": "Trust_1", "global_round": 1, "label": "LOSS", "result": 0.5}
LOG = {"trust": "Trust_1", "fl_client_name": "Trust_1", "log": "round 1 done", "success": True}


@pytest.fixture
def emu(flip_emulator_shared: EmulatorHandle) -> EmulatorHandle:
    return flip_emulator_shared


@pytest.fixture
def hub(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.hub_url, headers={"X-Internal-Service-Key": emu.hub_key}, timeout=10) as client:
        yield client


def keyed(key: str) -> dict[str, str]:
    return {IDEMPOTENCY_KEY_HEADER: key}


def counts(records: ModelRecords) -> tuple[int, int, int]:
    return len(records.statuses), len(records.metrics), len(records.logs)


@pytest.mark.parametrize("hub_api", ["h1", "h2"])
def test_a_repeated_key_gets_the_same_answer_and_is_recorded_once(
    emu: EmulatorHandle, hub: httpx.Client, hub_api: str
) -> None:
    emu.set_hub_api(hub_api)
    model = emu.register_model(trusts=["Trust_1"]).model_id
    status_key, metric_key, log_key = (str(uuid.uuid4()) for _ in range(3))
    calls = [
        ("PUT", f"/model/{model}/status/INITIATED", None, status_key),
        ("POST", f"/model/{model}/metrics", METRIC, metric_key),
        ("POST", f"/model/{model}/logs", LOG, log_key),
    ]
    for method, path, body, key in calls:
        first = hub.request(method, path, json=body, headers=keyed(key))
        again = [hub.request(method, path, json=body, headers=keyed(key)) for _ in range(2)]
        assert first.is_success, first.text
        for answer in again:
            assert (answer.status_code, answer.content) == (first.status_code, first.content)
    records = emu.records(model)
    assert counts(records) == (1, 1, 1)
    assert records.duplicates == [
        DuplicateRecord(route="hub.status", key=status_key, count=2, conflicts=0),
        DuplicateRecord(route="hub.metrics", key=metric_key, count=2, conflicts=0),
        DuplicateRecord(route="hub.logs", key=log_key, count=2, conflicts=0),
    ]
    assert emu.duplicates(model) == records.duplicates
    assert ModelRecords.from_json(records.to_json()) == records
    assert all(r.status_code < 300 for r in emu.requests("hub"))  # every attempt reached the hub


def test_a_key_reused_for_a_different_request_is_refused_with_422(emu: EmulatorHandle, hub: httpx.Client) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    key = str(uuid.uuid4())
    assert hub.put(f"/model/{model}/status/INITIATED", headers=keyed(key)).status_code == 200
    refused = hub.put(f"/model/{model}/status/PREPARED", headers=keyed(key))
    assert refused.status_code == 422
    assert IDEMPOTENCY_KEY_HEADER in refused.json()["detail"]
    metric_key = str(uuid.uuid4())
    assert hub.post(f"/model/{model}/metrics", json=METRIC, headers=keyed(metric_key)).status_code == 204
    changed = {**METRIC, "result": 0.25}
    assert hub.post(f"/model/{model}/metrics", json=changed, headers=keyed(metric_key)).status_code == 422
    # The same body with its keys in another order is the same request.
    reordered = dict(reversed(list(METRIC.items())))
    assert hub.post(f"/model/{model}/metrics", json=reordered, headers=keyed(metric_key)).status_code == 204
    records = emu.records(model)
    assert records.status_names() == ["INITIATED"] and records.model is not None
    assert records.model.status == "INITIATED"
    assert [m.result for m in records.metrics] == [0.5]
    assert emu.duplicates(model) == [
        DuplicateRecord(route="hub.status", key=key, count=1, conflicts=1),
        DuplicateRecord(route="hub.metrics", key=metric_key, count=2, conflicts=1),
    ]


def test_keys_are_scoped_to_route_and_model_and_optional(emu: EmulatorHandle, hub: httpx.Client) -> None:
    first, second = (emu.register_model(trusts=["Trust_1"]).model_id for _ in range(2))
    key = str(uuid.uuid4())
    assert hub.put(f"/model/{first}/status/INITIATED", headers=keyed(key)).status_code == 200
    assert hub.put(f"/model/{second}/status/INITIATED", headers=keyed(key)).status_code == 200
    assert hub.post(f"/model/{first}/logs", json=LOG, headers=keyed(key)).status_code == 200
    for _ in range(2):  # without the header every call is recorded, as before
        assert hub.post(f"/model/{first}/metrics", json=METRIC).status_code == 204
    assert counts(emu.records(first)) == (1, 2, 1)
    assert counts(emu.records(second)) == (1, 0, 0)
    assert emu.duplicates(first) == emu.duplicates(second) == []


def test_an_error_answer_is_not_kept(emu: EmulatorHandle, hub: httpx.Client) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    key = str(uuid.uuid4())
    unlinked = {**LOG, "trust": "Trust_9"}
    assert hub.post(f"/model/{model}/logs", json=unlinked, headers=keyed(key)).status_code == 400
    assert hub.post(f"/model/{model}/logs", json=unlinked, headers=keyed(key)).status_code == 400
    emu.register_model(model, trusts=["Trust_9"])
    assert hub.post(f"/model/{model}/logs", json=unlinked, headers=keyed(key)).status_code == 200
    assert len(emu.records(model).logs) == 1 and emu.duplicates(model) == []


@pytest.mark.parametrize("value", ["", "not-a-uuid", "x" * 300])
def test_a_malformed_key_is_refused_with_400(emu: EmulatorHandle, hub: httpx.Client, value: str) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    answer = hub.put(f"/model/{model}/status/INITIATED", headers=keyed(value))
    assert answer.status_code == 400 and IDEMPOTENCY_KEY_HEADER in answer.json()["detail"]
    assert emu.records(model).statuses == []


def test_reset_forgets_the_keys(emu: EmulatorHandle, hub: httpx.Client) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    key = str(uuid.uuid4())
    assert hub.put(f"/model/{model}/status/INITIATED", headers=keyed(key)).status_code == 200
    emu.reset(images=False)
    emu.register_model(model, trusts=["Trust_1"])
    assert hub.put(f"/model/{model}/status/INITIATED", headers=keyed(key)).status_code == 200
    assert emu.records(model).status_names() == ["INITIATED"] and emu.duplicates(model) == []


# ---------------------------------------------------------------------- the lost-answer fault


def test_lost_answer_dropping_the_connection_then_a_retry_is_recorded_once(
    emu: EmulatorHandle, hub: httpx.Client
) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    emu.set_fault("hub.metrics", error_first=1, lose_answer=True, drop_connection=True)
    key = str(uuid.uuid4())
    with pytest.raises(httpx.RemoteProtocolError):
        hub.post(f"/model/{model}/metrics", json=METRIC, headers=keyed(key))
    assert len(emu.records(model).metrics) == 1  # recorded, though the client never heard so
    retry = hub.post(f"/model/{model}/metrics", json=METRIC, headers=keyed(key))
    assert retry.status_code == 204
    assert len(emu.records(model).metrics) == 1
    assert emu.duplicates(model) == [DuplicateRecord(route="hub.metrics", key=key, count=1, conflicts=0)]
    attempts = [(r.status_code, r.fault) for r in emu.requests("hub") if r.route == "hub.metrics"]
    assert attempts == [(0, "lose_answer=204,dropped"), (204, None)]


def test_lost_answer_with_an_error_answer_and_without_a_key(emu: EmulatorHandle, hub: httpx.Client) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    emu.set_fault("hub.status", error_every=2, lose_answer=True, error_status=502, retry_after=1)
    answers = [hub.put(f"/model/{model}/status/INITIATED") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 502, 200, 502]
    assert answers[1].headers["retry-after"] == "1" and "answer" in answers[1].json()["detail"]
    # No key: every attempt whose answer was lost is recorded as well (what the key prevents).
    assert emu.records(model).status_names() == ["INITIATED"] * 4
    faults = [r.fault for r in emu.requests("hub") if r.route == "hub.status"]
    assert faults == [None, "lose_answer=200,error=502", None, "lose_answer=200,error=502"]


def test_drop_connection_without_lose_answer_refuses_before_handling(emu: EmulatorHandle, hub: httpx.Client) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    emu.set_fault("hub.logs", error_first=1, drop_connection=True)
    with pytest.raises(httpx.RemoteProtocolError):
        hub.post(f"/model/{model}/logs", json=LOG)
    assert emu.records(model).logs == []
    assert hub.post(f"/model/{model}/logs", json=LOG).status_code == 200
    assert len(emu.records(model).logs) == 1


def test_lose_answer_follows_the_error_selection() -> None:
    board = FaultBoard()
    board.set("hub.status", FaultSpec.from_strings({"error_every": "2", "lose_answer": "yes"}))
    decisions = [board.decide("hub.status") for _ in range(4)]
    assert [(d.error_status, d.lose_answer) for d in decisions] == [(None, False), (503, True)] * 2
    assert decisions[1].label == "lose_answer,error=503"
    dropped = FaultSpec(error_first=1, drop_connection=True)
    board.set("hub.logs", dropped)
    assert board.decide("hub.logs").label == "dropped"
    assert FaultSpec.from_mapping(dropped.as_dict()) == dropped
    with pytest.raises(ValueError, match="error_first, error_every or error_rate"):
        FaultSpec(lose_answer=True)
    with pytest.raises(ValueError, match="error_first, error_every or error_rate"):
        FaultSpec(drop_connection=True)
