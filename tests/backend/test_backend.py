"""FlipBackend on a mock engine: dev or prod from the mode, refusals at START_RUN, lookups by id."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import MagicMock

import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.server_engine_spec import ServerEngineSpec

from flip_nvflare.backend import FlipBackend, get_flip_backend, get_hub_session
from flip_nvflare.constants import FlipEvents, FlipMode, HubApi, ModelStatus
from flip_nvflare.core.dev import FLIPStandardDev
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.errors import FlipConfigError
from tests.components.fakes import RecordingHub
from tests.engine import MODEL_ID, PROD_ENV, FakeEngine, FixedBackend

SERVER_ENV = {
    "FLIP_API_INTERNAL_URL": "http://hub.example:8000",
    "INTERNAL_SERVICE_KEY": "hub-key",
    "UPLOADED_FEDERATED_DATA_BUCKET": "s3://results/flip",
}
CLIENT_ENV = {
    "DATA_ACCESS_API_URL": "http://data.example:8001",
    "IMAGING_API_URL": "http://imaging.example:8002",
    "TRUST_INTERNAL_SERVICE_KEY": "trust-key",
    "NET_ID": "net-1",
}


@pytest.fixture(autouse=True)
def _no_flip_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROD_ENV:
        monkeypatch.delenv(name, raising=False)


def panics(engine: FakeEngine) -> list[str]:
    return [str(event.data) for event in engine.fired(EventType.FATAL_SYSTEM_ERROR)]


def test_dev_mode_builds_a_dev_backend_recording_in_the_run_folder(tmp_path: Path) -> None:
    flip = FlipBackend(mode="dev")
    engine = FakeEngine(tmp_path, components={"flip": flip})

    engine.start_run()
    backend = get_flip_backend(engine.new_context())

    assert flip.mode is FlipMode.DEV
    assert isinstance(backend, FLIPStandardDev)
    assert backend.output_dir == engine.run_dir / "flip_dev"
    assert get_flip_backend(engine.new_context()) is backend  # built once
    assert panics(engine) == []


def test_dev_output_dir_argument_is_used(tmp_path: Path) -> None:
    flip = FlipBackend(mode="dev", dev_output_dir=str(tmp_path / "ledger"))
    engine = FakeEngine(tmp_path, components={"flip": flip})

    backend = get_flip_backend(engine.new_context())

    assert isinstance(backend, FLIPStandardDev) and backend.output_dir == tmp_path / "ledger"


def test_dev_mode_is_refused_in_a_secure_deployment_and_the_run_stopped_once(tmp_path: Path) -> None:
    flip = FlipBackend(mode="dev")
    engine = FakeEngine(tmp_path, components={"flip": flip}, secure=True)

    engine.start_run()

    assert len(panics(engine)) == 1
    assert "provisioned (secure) deployment" in panics(engine)[0]
    with pytest.raises(FlipConfigError, match="allow_dev_in_secure_mode"):
        get_flip_backend(engine.new_context())
    assert len(panics(engine)) == 1  # the same failure is raised again, the run is not stopped twice


def test_dev_mode_in_a_secure_deployment_when_allowed(tmp_path: Path) -> None:
    flip = FlipBackend(mode="dev", allow_dev_in_secure_mode=True)
    engine = FakeEngine(tmp_path, components={"flip": flip}, secure=True)

    engine.start_run()

    assert panics(engine) == []
    assert isinstance(get_flip_backend(engine.new_context()), FLIPStandardDev)


def test_prod_on_the_server_names_every_missing_setting(tmp_path: Path) -> None:
    flip = FlipBackend(mode="prod", model_id=MODEL_ID)
    engine = FakeEngine(tmp_path, components={"flip": flip})

    engine.start_run()

    assert len(panics(engine)) == 1
    for name in ("FLIP_API_INTERNAL_URL", "INTERNAL_SERVICE_KEY", "UPLOADED_FEDERATED_DATA_BUCKET"):
        assert name in panics(engine)[0]
    with pytest.raises(FlipConfigError, match="INTERNAL_SERVICE_KEY"):
        get_hub_session(engine.new_context())


def test_prod_on_a_client_names_the_trust_settings_once_each(tmp_path: Path) -> None:
    flip = FlipBackend(mode="prod")
    engine = FakeEngine(tmp_path, server=False, components={"flip": flip})

    with pytest.raises(FlipConfigError) as raised:
        get_flip_backend(engine.new_context())

    message = str(raised.value)
    for name in ("DATA_ACCESS_API_URL", "IMAGING_API_URL", "TRUST_INTERNAL_SERVICE_KEY", "NET_ID"):
        assert name in message
    assert "FLIP_API_INTERNAL_URL" not in message  # a trust never needs the hub's settings
    assert message.count("TRUST_INTERNAL_SERVICE_KEY") == 2  # once per missing-settings sentence, no duplicate
    assert len(panics(engine)) == 1


def test_prod_with_settings_builds_the_prod_backend_and_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SERVER_ENV.items():
        monkeypatch.setenv(name, value)
    flip = FlipBackend(mode="prod", model_id=MODEL_ID, hub_api="h2")
    engine = FakeEngine(tmp_path, components={"flip": flip})

    engine.start_run()
    session = get_hub_session(engine.new_context())

    assert panics(engine) == []
    assert isinstance(session.backend, FLIPStandardProd)
    assert session.hub_api is HubApi.H2 and session.flip_mode == "prod" and session.model_id == MODEL_ID
    assert get_hub_session(engine.new_context()) is session
    engine.fire(EventType.END_RUN)
    assert session.closed


def test_prod_client_with_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CLIENT_ENV.items():
        monkeypatch.setenv(name, value)
    engine = FakeEngine(tmp_path, server=False, components={"flip": FlipBackend(mode="prod")})

    engine.start_run()

    assert panics(engine) == []
    assert isinstance(get_flip_backend(engine.new_context()), FLIPStandardProd)


def test_prod_settings_check_can_be_turned_off(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path, components={"flip": FlipBackend(mode="prod", check_settings=False)})

    engine.start_run()

    assert panics(engine) == []
    assert isinstance(get_flip_backend(engine.new_context()), FLIPStandardProd)


def test_a_prod_hub_session_needs_a_model_id_from_somewhere(tmp_path: Path) -> None:
    engine = FakeEngine(
        tmp_path, components={"flip": FlipBackend(mode="prod", model_id="{model_id}", check_settings=False)}
    )

    with pytest.raises(FlipConfigError, match="This prod job names no model id"):
        get_hub_session(engine.new_context())
    assert len(panics(engine)) == 1


def test_a_dev_hub_session_without_a_model_id_uses_the_all_zero_dev_id(tmp_path: Path) -> None:
    from flip_nvflare.jobs.identity import DEV_MODEL_ID

    engine = FakeEngine(tmp_path, components={"flip": FlipBackend(mode="dev", model_id="")})

    session = get_hub_session(engine.new_context())

    assert session.model_id == DEV_MODEL_ID == "00000000-0000-0000-0000-000000000000"
    session.release("FlipBackend")


def test_a_hub_session_is_refused_on_a_client(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path, server=False, components={"flip": FlipBackend(mode="dev", model_id=MODEL_ID)})

    engine.start_run()  # a client never builds the session by itself
    assert panics(engine) == []
    with pytest.raises(FlipConfigError, match="run on the server only"):
        get_hub_session(engine.new_context())


def test_lookup_without_the_component_says_what_to_add(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)

    with pytest.raises(FlipConfigError, match=r"no component with id 'flip'.*flip_nvflare\.backend\.FlipBackend"):
        get_flip_backend(engine.new_context())
    with pytest.raises(FlipConfigError, match="no component with id 'other'"):
        get_hub_session(engine.new_context(), "other")


def test_lookup_of_a_component_that_is_not_a_flip_backend(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path, components={"flip": MagicMock(spec=ServerEngineSpec)})

    with pytest.raises(FlipConfigError, match=r"Component 'flip' is a \w+, not flip_nvflare\.backend\.FlipBackend"):
        get_flip_backend(engine.new_context())


@pytest.mark.parametrize(
    ("event_type", "data", "failure"),
    [
        (EventType.FATAL_SYSTEM_ERROR, "the aggregator crashed", "the aggregator crashed"),
        (EventType.FATAL_SYSTEM_ERROR, None, "fatal error"),
        (FlipEvents.PREPARATION_FAILED, None, "a client's preparation failed"),
        (FlipEvents.PREPARATION_FAILED, "Data preparation failed at site-2: X", "Data preparation failed at site-2: X"),
    ],
)
def test_failures_are_recorded_in_the_run_journal(
    tmp_path: Path, event_type: str, data: str | None, failure: str
) -> None:
    hub = RecordingHub()
    engine = FakeEngine(tmp_path, components={"flip": FixedBackend(hub)})
    engine.start_run()
    session = get_hub_session(engine.new_context())

    engine.fire(event_type, **{FLContextKey.EVENT_DATA: data})
    engine.fire(EventType.FATAL_SYSTEM_ERROR, **{FLContextKey.EVENT_DATA: "a later failure"})

    assert session.journal.failure == failure  # the first reason is kept
    engine.fire(EventType.END_RUN)
    assert session.closed


def test_end_run_closes_the_session_and_the_backend(tmp_path: Path) -> None:
    hub = RecordingHub()
    engine = FakeEngine(tmp_path, components={"flip": FixedBackend(hub)})
    engine.start_run()
    session = get_hub_session(engine.new_context())
    session.report_status(ModelStatus.INITIATED)

    engine.fire(EventType.END_RUN)

    assert session.closed and hub.closed
    assert [(method, args) for method, args, _s, _e in hub.calls] == [("status", ("INITIATED",))]


def test_end_run_on_a_client_closes_the_backend(tmp_path: Path) -> None:
    hub = RecordingHub()
    engine = FakeEngine(tmp_path, server=False, components={"flip": FixedBackend(hub)})
    engine.start_run()
    assert get_flip_backend(engine.new_context()) is hub

    engine.fire(EventType.END_RUN)

    assert hub.closed


def test_end_run_before_any_backend_was_built_is_harmless(tmp_path: Path) -> None:
    hub = RecordingHub()
    engine = FakeEngine(tmp_path, server=False, components={"flip": FixedBackend(hub)})

    engine.fire(EventType.END_RUN)

    assert not hub.closed and panics(engine) == []
