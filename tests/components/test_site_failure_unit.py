"""A site that fails mid-run, on a mock engine: SiteLossReporter, the StatusReporter's hand-off, the JobWatcher."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest
from nvflare.apis.client import Client
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, RunProcessKey

from flip_nvflare.components import handoff
from flip_nvflare.components.job_watch import (
    JobWatcher,
    final_status_for,
    flip_job_identity,
    server_config_from_app,
)
from flip_nvflare.components.site_loss import SiteLossReporter
from flip_nvflare.components.status import StatusReporter
from flip_nvflare.constants import ModelStatus
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.jobs.templates import template_dir
from tests.components.fakes import RecordingHub
from tests.engine import JOB_ID, MODEL_ID, hub_calls, server_job


def _lose(engine: Any, client: str) -> None:
    engine.fire(EventType.CLIENT_DISCONNECTED, **{FLContextKey.DISCONNECTED_CLIENT_NAME: client})


def test_a_lost_site_is_named_once_at_the_hub_and_recorded_and_the_run_continues(tmp_path: Path) -> None:
    reporter = SiteLossReporter(policy="continue")
    engine, hub = server_job(tmp_path, reporter, StatusReporter())
    engine.start_run()
    _lose(engine, "site-2")
    _lose(engine, "site-2")  # NVFlare may report it again in a later workflow
    assert reporter.session is not None
    summary = reporter.session.summary()
    engine.end_run()

    logs = hub_calls(hub, "log")
    assert len(logs) == 1 and logs[0][2] == "site-2" and logs[0][3]["trust_name"] == "Trust_2"
    assert "Trust_2" in logs[0][1] and "continues" in logs[0][1]
    assert [(e["client"], e["trust"]) for e in summary["sites_lost"]] == [("site-2", "Trust_2")]
    assert EventType.FATAL_SYSTEM_ERROR not in engine.event_types()
    assert [c[1] for c in hub_calls(hub, "status")][-1] == "RESULTS_UPLOADED"


def test_policy_end_ends_the_run_with_error(tmp_path: Path) -> None:
    reporter = SiteLossReporter(policy="end")
    engine, hub = server_job(tmp_path, reporter, StatusReporter())
    engine.start_run()
    _lose(engine, "site-1")
    engine.end_run()

    assert EventType.FATAL_SYSTEM_ERROR in engine.event_types()
    assert [c[1] for c in hub_calls(hub, "status")] == ["INITIATED", "ERROR"]
    assert "on_site_lost: end" in hub_calls(hub, "log")[0][1]


@pytest.mark.parametrize("raw", [None, "", "{on_site_lost}", "continue", "END"])
def test_policy_values(raw: object) -> None:
    SiteLossReporter(policy=raw)  # type: ignore[arg-type]


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(FlipConfigError, match="on_site_lost"):
        SiteLossReporter(policy="ignore")


def test_with_a_job_watcher_an_aborted_run_leaves_its_final_status_to_the_watcher(tmp_path: Path) -> None:
    reporter = StatusReporter()
    engine, hub = server_job(tmp_path, reporter)
    root = Path(engine.workspace.get_root_dir())
    handoff.handoff_dir(root).mkdir(parents=True)
    (handoff.handoff_dir(root) / handoff.WATCHING_MARKER).write_text("x")

    engine.start_run()
    engine.abort_signal.trigger("aborted by NVFlare")
    engine.end_run()

    assert "STOPPED" not in [c[1] for c in hub_calls(hub, "status")]
    found = handoff.read_handoff(root, JOB_ID)
    assert found is not None and found["aborted"] is True and found["final_status"] is None
    assert found["model_id"] == MODEL_ID and found["trusts"]["site-2"] == "Trust_2"


def test_without_a_job_watcher_no_handoff_is_written(tmp_path: Path) -> None:
    engine, _ = server_job(tmp_path, StatusReporter())
    engine.start_run()
    engine.end_run()
    assert not handoff.handoff_dir(engine.workspace.get_root_dir()).exists()


# ---------------------------------------------------------------------------- JobWatcher


def _watcher_engine(participants: dict[str, str], registered: dict[str, str]) -> Any:
    engine = MagicMock()
    engine.run_processes = {
        "job-1": {RunProcessKey.PARTICIPANTS: {tok: Client(name, tok) for tok, name in participants.items()}}
    }
    engine.client_manager = SimpleNamespace(clients={tok: Client(name, tok) for tok, name in registered.items()})
    return engine


def test_a_restarted_site_is_reported_dead_to_its_job_again_and_again_but_not_too_often() -> None:
    watcher = JobWatcher(renotify_interval=5)
    watcher._engine = _watcher_engine({"a": "site-1", "b": "site-2"}, {"a": "site-1", "c": "site-2"})

    assert watcher.check_sites(now=100.0) == [("job-1", "site-2", "site restarted: its job is gone")]
    assert watcher.check_sites(now=102.0) == []
    assert watcher.check_sites(now=105.5) == [("job-1", "site-2", "site restarted: its job is gone")]
    watcher._engine.notify_dead_job.assert_called_with("job-1", "site-2", "site restarted: its job is gone")


def test_a_site_gone_for_good_is_reported_and_a_registered_one_never() -> None:
    watcher = JobWatcher()
    watcher._engine = _watcher_engine({"a": "site-1", "b": "site-2"}, {"a": "site-1"})
    assert watcher.check_sites(now=1.0) == [("job-1", "site-2", "site disconnected")]
    watcher._engine = _watcher_engine({"a": "site-1"}, {"a": "site-1"})
    assert watcher.check_sites(now=50.0) == []


def test_the_flip_identity_of_a_template_job() -> None:
    config = json.loads((template_dir("standard") / "config_fed_server.json").read_text())
    config.update(model_id=MODEL_ID, flip_mode="prod")
    assert flip_job_identity(config) == {"model_id": MODEL_ID, "flip_mode": "prod", "hub_api": None}
    assert flip_job_identity({"components": [{"path": "other.Thing"}]}) is None


def test_the_server_config_is_read_from_a_zipped_app(tmp_path: Path) -> None:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app_server/config/config_fed_server.json", json.dumps({"model_id": MODEL_ID}))
    assert server_config_from_app(buffer.getvalue()) == {"model_id": MODEL_ID}


@pytest.mark.parametrize(
    ("status", "failed", "final"),
    [
        ("FINISHED:COMPLETED", False, None),
        ("FINISHED:ABORTED", False, ModelStatus.STOPPED),
        ("FINISHED:ABORTED", True, ModelStatus.ERROR),
        ("FINISHED:EXECUTION_EXCEPTION", False, ModelStatus.ERROR),
        ("FINISHED:ABNORMAL", True, ModelStatus.ERROR),
        ("FINISHED:FAILED_TO_RUN", False, ModelStatus.ERROR),
    ],
)
def test_final_status_only_stopped_for_a_persons_abort(status: str, failed: bool, final: ModelStatus | None) -> None:
    assert final_status_for(status, failed) is final


def test_settle_names_the_failed_trust_then_sends_the_final_status() -> None:
    hub = RecordingHub()
    watcher = JobWatcher()
    watcher.backend_factory = lambda _hub_api: hub
    identity = {"model_id": MODEL_ID, "flip_mode": "prod", "trusts": {"site-2": "Trust_B"}}
    thread = watcher.settle("job-1", identity, "FINISHED:EXECUTION_EXCEPTION", ModelStatus.ERROR, [("site-2", 101)])
    assert thread is not None
    thread.join(10)

    (log,) = hub_calls(hub, "log")
    assert log[2] == "site-2" and log[3]["trust_name"] == "Trust_B" and "ended unexpectedly" in log[1]
    assert hub_calls(hub, "status") == [("status", "ERROR")]


def test_settle_sends_nothing_for_a_dev_job() -> None:
    watcher = JobWatcher()
    watcher.backend_factory = MagicMock()
    identity = {"model_id": MODEL_ID, "flip_mode": "dev"}
    assert watcher.settle("job-1", identity, "FINISHED:EXECUTION_EXCEPTION", ModelStatus.ERROR, []) is None
    watcher.backend_factory.assert_not_called()


def test_bad_watcher_arguments_are_refused() -> None:
    with pytest.raises(FlipConfigError, match="check_interval"):
        JobWatcher(check_interval=0)


def test_a_run_that_failed_on_the_server_tells_every_trust_of_the_run_why() -> None:
    hub = RecordingHub()
    watcher = JobWatcher()
    watcher.backend_factory = lambda _hub_api: hub
    identity = {"model_id": MODEL_ID, "flip_mode": "prod", "trusts": {"site-1": "Trust_1", "site-2": "Trust_2"}}
    thread = watcher.settle("job-1", identity, "FINISHED:EXECUTION_EXCEPTION", ModelStatus.ERROR, [])
    assert thread is not None
    thread.join(10)
    logs = hub_calls(hub, "log")
    assert [log[2] for log in logs] == ["Trust_1", "Trust_2"]
    assert all("could not go on at the FL server" in log[1] and "/" not in log[1] for log in logs)
    assert hub_calls(hub, "status") == [("status", "ERROR")]


def test_the_identity_names_the_trusts_of_the_run() -> None:
    config = json.loads((template_dir("standard") / "config_fed_server.json").read_text())
    config.update(model_id=MODEL_ID, flip_mode="prod", participating_clients=["site-1", "site-7"])
    identity = flip_job_identity(config)
    assert identity is not None and identity["trusts"] == {"site-1": "Trust_1", "site-7": "Trust_7"}


def _failure_message(token: str, job_id: str, code: int) -> Any:
    from nvflare.private.defs import CellMessageHeaderKeys, JobFailureMsgKey

    message = MagicMock()
    message.payload = {JobFailureMsgKey.JOB_ID: job_id, JobFailureMsgKey.CODE: code}
    message.get_header.side_effect = lambda key, default=None: token if key == CellMessageHeaderKeys.TOKEN else default
    return message


@pytest.mark.parametrize(("policy", "kept"), [("continue", False), ("end", True), (None, True)])
def test_a_died_job_process_is_a_lost_site_only_when_the_job_says_continue(
    tmp_path: Path, policy: str | None, kept: bool
) -> None:
    from nvflare.private.defs import JobFailureMsgKey

    from flip_nvflare.components import handoff

    watcher = JobWatcher()
    watcher._root = tmp_path
    handoff.handoff_dir(tmp_path).mkdir(parents=True)
    (handoff.handoff_dir(tmp_path) / handoff.WATCHING_MARKER).write_text("x")
    if policy is not None:
        handoff.update_handoff(tmp_path, "job-1", on_site_lost=policy)
    engine = MagicMock()
    engine.client_manager.clients = {"tok": MagicMock()}
    engine.client_manager.clients["tok"].name = "site-2"
    watcher._engine = engine
    message = _failure_message("tok", "job-1", 101)
    assert watcher._failure_report(message) is None
    if kept:  # NVFlare ends the run on the report, and the watcher names the site afterwards
        assert message.payload[JobFailureMsgKey.CODE] == 101 and watcher._failures == {"job-1": [("site-2", 101)]}
        engine.notify_dead_job.assert_not_called()
    else:  # the report no longer ends the run; the job learns of a lost site instead
        assert message.payload[JobFailureMsgKey.CODE] == 0 and watcher._failures == {}
        engine.notify_dead_job.assert_called_once_with("job-1", "site-2", "job process ended unexpectedly")


def test_a_died_job_process_keeps_being_reported_so_later_workflows_drop_the_site(tmp_path: Path) -> None:
    """NVFlare gives a dead-job notice to the running workflow only: cross-site validation must hear it too."""
    from flip_nvflare.components import handoff

    watcher = JobWatcher(renotify_interval=5.0)
    watcher._root = tmp_path
    handoff.handoff_dir(tmp_path).mkdir(parents=True)
    (handoff.handoff_dir(tmp_path) / handoff.WATCHING_MARKER).write_text("x")
    handoff.update_handoff(tmp_path, "job-1", on_site_lost="continue")
    engine = MagicMock()
    site = MagicMock()
    site.name = "site-2"
    engine.client_manager.clients = {"tok": site}
    engine.run_processes = {"job-1": {RunProcessKey.PARTICIPANTS: {"tok": site}}}
    watcher._engine = engine
    watcher._failure_report(_failure_message("tok", "job-1", 101))
    engine.notify_dead_job.reset_mock()
    start = watcher._notified[("job-1", "site-2")]

    assert watcher.check_sites(now=start + 1.0) == []  # within renotify_interval: not yet
    assert watcher.check_sites(now=start + 6.0) == [("job-1", "site-2", "job process ended unexpectedly")]
    assert watcher.check_sites(now=start + 12.0) == [("job-1", "site-2", "job process ended unexpectedly")]
    engine.run_processes = {}  # the job ended
    assert watcher.check_sites(now=start + 20.0) == []
    assert engine.notify_dead_job.call_count == 2
