"""The emulated flip-api over real HTTP: keys, registry, and the two hub generations."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from flip_emulator.handle import EmulatorHandle

H1_ONLY, H2_ONLY = "TRAINING_STARTED", "RUNNING"


@pytest.fixture
def emu(flip_emulator_shared: EmulatorHandle) -> EmulatorHandle:
    return flip_emulator_shared


@pytest.fixture
def hub(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.hub_url, headers={"X-Internal-Service-Key": emu.hub_key}, timeout=10) as client:
        yield client


def status(hub: httpx.Client, model_id: str, name: str) -> httpx.Response:
    return hub.put(f"/model/{model_id}/status/{name}")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/status/INITIATED", None),
        ("POST", "/metrics", {"trust": "Trust_1", "global_round": 0, "label": "L", "result": 1.0}),
        ("POST", "/logs", {"trust": "Trust_1", "log": "x"}),
    ],
)
def test_every_hub_route_needs_the_hub_key(emu: EmulatorHandle, method: str, path: str, body: object) -> None:
    model = emu.register_model()
    url = f"{emu.hub_url}/model/{model.model_id}{path}"
    answers = {
        "missing": httpx.request(method, url, json=body),
        "wrong": httpx.request(method, url, json=body, headers={"X-Internal-Service-Key": emu.hub_key + "x"}),
        "trust key": httpx.request(method, url, json=body, headers={"X-Internal-Service-Key": emu.trust_key}),
        "trust header": httpx.request(method, url, json=body, headers={"X-Trust-Internal-Service-Key": emu.hub_key}),
    }
    assert {k: r.status_code for k, r in answers.items()} == dict.fromkeys(answers, 401)
    assert "Missing" in answers["missing"].json()["detail"]
    assert "Invalid" in answers["wrong"].json()["detail"]
    assert emu.hub_key not in answers["wrong"].text
    records = emu.records(model.model_id)
    assert (records.statuses, records.metrics, records.logs) == ([], [], [])
    assert httpx.get(f"{emu.hub_base}/health").status_code == 200  # /health is open


def test_unknown_model_and_bad_model_id(emu: EmulatorHandle, hub: httpx.Client) -> None:
    unknown = str(uuid.uuid4())
    assert status(hub, unknown, "INITIATED").status_code == 404
    assert (
        hub.post(
            f"/model/{unknown}/metrics", json={"trust": "Trust_1", "global_round": 0, "label": "L", "result": 1}
        ).status_code
        == 404
    )
    assert status(hub, "not-a-uuid", "INITIATED").status_code == 422
    assert emu.records(unknown).model is None


def test_h1_statuses_and_metrics(emu: EmulatorHandle, hub: httpx.Client) -> None:
    model = emu.register_model(trusts=["Trust_1", "Trust_2"]).model_id
    for name in ("INITIATED", "PREPARED", H1_ONLY):
        assert status(hub, model, name).json() == {"success": "status set"}
    assert status(hub, model, H2_ONLY).status_code == 422
    assert status(hub, model, "RESULTS_UPLOAD_FAILED").status_code == 422
    assert status(hub, model, "STOPPED").status_code == 200
    assert status(hub, model, "ERROR").status_code == 200  # H1 has no STOPPED rule
    ok = hub.post(f"/model/{model}/metrics", json={"trust": "Trust_2", "globalRound": 3, "label": "L", "result": 0.5})
    assert ok.status_code == 204 and ok.content == b""
    assert (
        hub.post(
            f"/model/{model}/metrics", json={"trust": "site-2", "global_round": 3, "label": "L", "result": 0.5}
        ).status_code
        == 400
    )
    assert (
        hub.post(
            f"/model/{model}/metrics", json={"trust": "Trust_9", "global_round": 3, "label": "L", "result": 0.5}
        ).status_code
        == 400
    )
    assert (
        hub.post(
            f"/model/{model}/metrics", json={"fl_client_name": "site-2", "global_round": 3, "label": "L", "result": 0.5}
        ).status_code
        == 422
    )
    records = emu.records(model)
    assert records.status_names() == ["INITIATED", "PREPARED", H1_ONLY, "STOPPED", "ERROR"]
    assert all(s.applied for s in records.statuses) and records.model is not None and records.model.status == "ERROR"
    assert [(m.trust, m.global_round, m.result) for m in records.metrics] == [("Trust_2", 3, 0.5)]


def test_h2_statuses_and_the_stopped_rule(emu: EmulatorHandle, hub: httpx.Client) -> None:
    emu.set_hub_api("h2")
    model = emu.register_model().model_id
    assert status(hub, model, H1_ONLY).status_code == 422
    sent = ["INITIATED", "PREPARED", H2_ONLY, "STOPPED", "PREPARED", H2_ONLY, "ERROR", "RESULTS_UPLOADED",
            "RESULTS_UPLOAD_FAILED", "INITIATED"]  # fmt: skip
    for name in sent:
        assert status(hub, model, name).status_code == 200
    records = emu.records(model)
    assert records.status_names() == sent
    ignored = [s.status for s in records.statuses if not s.applied]
    assert ignored == ["PREPARED", H2_ONLY, "ERROR", "RESULTS_UPLOADED", "RESULTS_UPLOAD_FAILED"]
    assert records.model is not None and records.model.status == "INITIATED"


def test_h2_metrics_resolve_client_names(emu: EmulatorHandle, hub: httpx.Client) -> None:
    emu.set_hub_api("h2")
    model = emu.register_model(trusts=["Trust_1", "Trust_2"]).model_id
    body = {"fl_client_name": "site-1", "global_round": 0, "label": "train_loss", "result": 1.5}
    assert hub.post(f"/model/{model}/metrics", json=body).status_code == 204
    assert hub.post(f"/model/{model}/metrics", json={**body, "x_value": 2.5, "x_label": "epoch"}).status_code == 204
    assert hub.post(f"/model/{model}/metrics", json={**body, "fl_client_name": "site-3"}).status_code == 400
    assert hub.post(f"/model/{model}/metrics", json={**body, "x_label": "x" * 65}).status_code == 422
    assert (
        hub.post(
            f"/model/{model}/metrics", json={"trust": "Trust_1", "global_round": 0, "label": "L", "result": 1}
        ).status_code
        == 422
    )
    records = emu.records(model)
    assert [(m.trust, m.fl_client_name, m.x_value, m.x_label) for m in records.metrics] == [
        ("Trust_1", "site-1", None, None),
        ("Trust_1", "site-1", 2.5, "epoch"),
    ]


@pytest.mark.parametrize("hub_api", ["h1", "h2"])
def test_compatible_bodies_are_accepted_by_both_generations(
    emu: EmulatorHandle, hub: httpx.Client, hub_api: str
) -> None:
    emu.set_hub_api(hub_api)
    model = emu.register_model(trusts=["Trust_1"]).model_id
    metric = {
        "trust": "Trust_1",
        "fl_client_name": "site-1",
        "global_round": 2,
        "label": "AVERAGE_SCORE",
        "result": 0.75,
    }
    log = {
        "trust": "Trust_1",
        "fl_client_name": "site-1",
        "log": "Traceback (most recent call last): ...",
        "success": False,
    }
    assert hub.post(f"/model/{model}/metrics", json=metric).status_code == 204
    assert hub.post(f"/model/{model}/logs", json=log).json() == {"detail": "Created"}
    records = emu.records(model)
    assert [(m.trust, m.global_round, m.label, m.result, m.hub_api) for m in records.metrics] == [
        ("Trust_1", 2, "AVERAGE_SCORE", 0.75, hub_api)
    ]
    assert [(lg.trust, lg.log, lg.success) for lg in records.logs] == [("Trust_1", log["log"], False)]


@pytest.mark.parametrize("bad", ['{"trust":"Trust_1","global_round":0,"label":"L","result":NaN}',
                                 '{"trust":"Trust_1","global_round":0,"label":"L","result":Infinity}',
                                 '{"trust":"Trust_1","global_round":-1,"label":"L","result":1}',
                                 '{"trust":"Trust_1","global_round":0,"label":"L"}',
                                 '[1, 2]'])  # fmt: skip
def test_malformed_metrics_get_422(emu: EmulatorHandle, hub: httpx.Client, bad: str) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    answer = hub.post(f"/model/{model}/metrics", content=bad, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert emu.records(model).metrics == []


def test_h1_logs_need_a_linked_trust(emu: EmulatorHandle, hub: httpx.Client) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    assert hub.post(f"/model/{model}/logs", json={"trust": "Trust_2", "log": "x"}).status_code == 400
    assert hub.post(f"/model/{model}/logs", json={"fl_client_name": "site-1", "log": "x"}).status_code == 422
    assert emu.records(model).logs == []


def test_h2_typed_progress_events(emu: EmulatorHandle, hub: httpx.Client) -> None:
    emu.set_hub_api("h2")
    model = emu.register_model(trusts=["Trust_1", "Trust_2"]).model_id
    good = [
        {"event_type": "JOB_WAITING_FOR_RESOURCES", "details": {"attempt": 1, "max_attempts": 3, "final": False,
                                                                 "requested": 2}, "fl_client_name": None},
        {"event_type": "ROUND_STARTED", "global_round": 1, "details": {"total_rounds": 2}},
        {"event_type": "CLIENT_RESULT_RECEIVED", "global_round": 1, "details": {"size_bytes": 1024},
         "fl_client_name": "site-2"},
        {"event_type": "ROUND_AGGREGATED", "global_round": 1, "details": {"returned": 2, "expected": 2}},
    ]  # fmt: skip
    for body in good:
        assert hub.post(f"/model/{model}/logs", json=body).status_code == 200, body
    bad = [
        {"event_type": "ROUND_STARTED", "global_round": 0, "details": {"total_rounds": 2}},
        {"event_type": "ROUND_STARTED", "details": {"total_rounds": 2}},
        {"event_type": "ROUND_FINISHED", "global_round": 1, "details": {}},
        {"event_type": "ROUND_STARTED", "global_round": 1, "details": {"blob": "x" * 8200}},
        {"event_type": "ROUND_STARTED", "global_round": 1, "log": "both", "details": {}},
        {"success": True},
    ]
    for body in bad:
        assert hub.post(f"/model/{model}/logs", json=body).status_code == 422, body
    at_limit = {"blob": "x" * (8192 - len('{"blob":""}'))}
    assert (
        hub.post(
            f"/model/{model}/logs", json={"event_type": "ROUND_STARTED", "global_round": 2, "details": at_limit}
        ).status_code
        == 200
    )
    logs = emu.records(model).logs
    assert [(lg.event_type, lg.global_round, lg.trust) for lg in logs] == [
        ("JOB_WAITING_FOR_RESOURCES", None, None),
        ("ROUND_STARTED", 1, None),
        ("CLIENT_RESULT_RECEIVED", 1, "Trust_2"),
        ("ROUND_AGGREGATED", 1, None),
        ("ROUND_STARTED", 2, None),
    ]
    assert logs[2].details == {"size_bytes": 1024}


def test_open_mode_accepts_any_model_and_trust(emu: EmulatorHandle, hub: httpx.Client) -> None:
    emu.set_settings(open=True)
    model = str(uuid.uuid4())
    assert status(hub, model, "INITIATED").status_code == 200
    assert (
        hub.post(
            f"/model/{model}/metrics", json={"trust": "Trust_7", "global_round": 0, "label": "L", "result": 2}
        ).status_code
        == 204
    )
    records = emu.records(model)
    assert records.model is not None and records.model.trusts == ["Trust_7"]
    assert records.model.registered_by == "open"
    emu.set_settings(open=False)
    assert status(hub, str(uuid.uuid4()), "INITIATED").status_code == 404


def test_validation_errors_do_not_echo_the_body(emu: EmulatorHandle, hub: httpx.Client) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    answer = hub.post(
        f"/model/{model}/metrics", json={"trust": "Trust_1", "global_round": "secret-value", "label": "L", "result": 1}
    )
    assert answer.status_code == 422
    assert "secret-value" not in answer.text
