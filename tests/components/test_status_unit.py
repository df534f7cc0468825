"""StatusReporter driven by events on a mock engine (no simulator): the statuses the hub receives."""

from __future__ import annotations

from pathlib import Path

import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.backend import FlipBackend
from flip_nvflare.components.status import StatusReporter
from flip_nvflare.constants import FlipEvents, FlipProps, ModelStatus
from tests.engine import PROD_ENV, FakeEngine, hub_calls, server_job


def statuses(hub: object) -> list[str]:
    return [call[1] for call in hub_calls(hub, "status")]


def test_a_completed_run_without_uploader_reports_the_lifecycle_then_the_completed_status(tmp_path: Path) -> None:
    reporter = StatusReporter()
    engine, hub = server_job(tmp_path, reporter)

    engine.start_run()
    engine.fire(FlipEvents.TRAINING_INITIATED)
    engine.fire(FlipEvents.PREPARATION_DONE)
    engine.fire(AppEventType.ROUND_STARTED)
    engine.fire(AppEventType.ROUND_STARTED)  # a status is sent once
    engine.end_run()

    assert statuses(hub) == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]
    assert reporter.final_status is ModelStatus.RESULTS_UPLOADED
    assert reporter.session is not None and reporter.session.closed


def test_a_later_status_sends_the_skipped_ones_and_never_goes_back(tmp_path: Path) -> None:
    reporter = StatusReporter(status_events={"INITIATED": ["custom_start"]}, completed_status="STOPPED")
    engine, hub = server_job(tmp_path, reporter)

    engine.start_run()  # START_RUN no longer triggers INITIATED
    engine.fire(AppEventType.TRAINING_STARTED)
    engine.fire(AppEventType.INITIAL_MODEL_LOADED)  # PREPARED after TRAINING_STARTED: ignored
    engine.fire("custom_start")
    engine.end_run()

    assert statuses(hub) == ["INITIATED", "PREPARED", "TRAINING_STARTED", "STOPPED"]


@pytest.mark.parametrize("event_type", [EventType.FATAL_SYSTEM_ERROR, FlipEvents.PREPARATION_FAILED])
def test_a_fatal_error_is_the_one_final_status(tmp_path: Path, event_type: str) -> None:
    reporter = StatusReporter()
    engine, hub = server_job(tmp_path, reporter)

    engine.start_run()
    engine.fire(event_type, **{FLContextKey.EVENT_DATA: "site-1 could not prepare"})
    assert reporter.final_status is ModelStatus.ERROR  # queued at once, not at END_RUN
    engine.fire(AppEventType.ROUND_STARTED)  # nothing after the final status
    engine.fire(FlipEvents.RESULTS_UPLOADED)
    engine.end_run()

    assert statuses(hub) == ["INITIATED", "ERROR"]
    assert reporter.session is not None
    assert reporter.session.summary()["failure"] == "site-1 could not prepare"


def test_an_aborted_run_is_stopped(tmp_path: Path) -> None:
    reporter = StatusReporter()
    engine, hub = server_job(tmp_path, reporter)

    engine.start_run()
    engine.fire(AppEventType.ROUND_STARTED)
    engine.abort_signal.trigger("aborted by the admin")
    engine.end_run()

    assert statuses(hub) == ["INITIATED", "PREPARED", "TRAINING_STARTED", "STOPPED"]
    assert reporter.final_status is ModelStatus.STOPPED


def test_an_abort_signal_after_about_to_end_run_is_not_an_abort(tmp_path: Path) -> None:
    reporter = StatusReporter()
    engine, hub = server_job(tmp_path, reporter)

    engine.start_run()
    engine.fire(EventType.ABOUT_TO_END_RUN)
    engine.abort_signal.trigger("teardown")  # the simulator's own teardown does this
    engine.fire(EventType.END_RUN)

    assert statuses(hub) == ["INITIATED", "RESULTS_UPLOADED"]


def test_with_an_uploader_the_final_status_comes_from_its_event_and_only_for_this_backend(tmp_path: Path) -> None:
    reporter = StatusReporter()
    engine, hub = server_job(tmp_path, reporter)

    engine.start_run()
    assert reporter.session is not None
    reporter.session.results_upload_expected = True
    engine.fire(EventType.ABOUT_TO_END_RUN)
    engine.fire(FlipEvents.RESULTS_UPLOADED, **{FlipProps.RESULTS_FLIP_ID: "other_flip"})  # another backend's
    assert reporter.final_status is None
    engine.fire(FlipEvents.RESULTS_UPLOAD_FAILED, **{FlipProps.RESULTS_FLIP_ID: "flip"})
    engine.fire(EventType.END_RUN)

    assert statuses(hub) == ["INITIATED", "RESULTS_UPLOAD_FAILED"]


def test_a_new_run_starts_the_lifecycle_again(tmp_path: Path) -> None:
    reporter = StatusReporter()
    engine, hub = server_job(tmp_path, reporter)
    engine.start_run()
    engine.fire(EventType.FATAL_SYSTEM_ERROR)
    engine.end_run()

    second, second_hub = server_job(tmp_path / "second", reporter)
    second.start_run()
    second.end_run()

    assert statuses(hub) == ["INITIATED", "ERROR"]
    assert statuses(second_hub) == ["INITIATED", "RESULTS_UPLOADED"]


def test_without_a_usable_backend_the_reporter_is_idle_and_the_run_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in PROD_ENV:
        monkeypatch.delenv(name, raising=False)
    reporter = StatusReporter()
    backend = FlipBackend(mode="prod", model_id="6b0f2d4e-1c3a-4e5f-8a7b-9c0d1e2f3a4b")
    engine = FakeEngine(tmp_path, components={"flip": backend}, listeners=[reporter])

    engine.start_run()
    engine.fire(AppEventType.ROUND_STARTED)
    engine.end_run()

    assert reporter.session is None and reporter.final_status is None
    panics = engine.fired(EventType.FATAL_SYSTEM_ERROR)
    assert len(panics) == 1
    assert "FLIP backend not usable" in panics[0].data
