"""A run whose every work result failed ends ERROR (StatusReporter + WorkTally, mock engine, no simulator)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.status import StatusReporter
from flip_nvflare.components.work import WorkTally
from flip_nvflare.constants import FlipEvents, ModelStatus
from flip_nvflare.errors import FlipConfigError
from tests.engine import FakeEngine, hub_calls, server_job, with_peer


def _result(engine: FakeEngine, client: str, task: str, result: Shareable) -> None:
    ctx = with_peer(engine.new_context(), client)
    engine.fire(
        EventType.BEFORE_PROCESS_SUBMISSION, ctx, **{FLContextKey.TASK_RESULT: result, FLContextKey.TASK_NAME: task}
    )


def _ok() -> Shareable:
    return DXO(DataKind.METRICS, data={"accuracy": 0.5}).to_shareable()


def _statuses(hub: object) -> list[str]:
    return [call[1] for call in hub_calls(hub, "status")]


@pytest.mark.parametrize("task", ["train", "evaluate"])
def test_every_work_result_failed_ends_error_although_the_results_were_uploaded(tmp_path: Path, task: str) -> None:
    reporter = StatusReporter()
    engine, hub = server_job(tmp_path, reporter)
    engine.start_run()
    engine.fire(AppEventType.ROUND_STARTED)
    for client in ("site-1", "site-2"):
        _result(engine, client, task, make_reply(ReturnCode.EXECUTION_EXCEPTION))
    _result(engine, "site-1", "validate", _ok())  # not work: does not count
    engine.fire(EventType.ABOUT_TO_END_RUN)
    engine.fire(FlipEvents.RESULTS_UPLOADED)
    engine.fire(EventType.END_RUN)
    assert _statuses(hub) == ["INITIATED", "PREPARED", "TRAINING_STARTED", "ERROR"]
    assert reporter.final_status is ModelStatus.ERROR


def test_one_good_result_keeps_the_run_a_success_and_aborted_results_count_neither_way(tmp_path: Path) -> None:
    reporter = StatusReporter()
    engine, hub = server_job(tmp_path, reporter)
    engine.start_run()
    _result(engine, "site-1", "evaluate", make_reply(ReturnCode.EXECUTION_EXCEPTION))
    _result(engine, "site-2", "evaluate", make_reply(ReturnCode.TASK_ABORTED))
    _result(engine, "site-2", "evaluate", _ok())
    engine.fire(EventType.ABOUT_TO_END_RUN)
    engine.fire(FlipEvents.RESULTS_UPLOADED)
    engine.fire(EventType.END_RUN)
    assert _statuses(hub)[-1] == "RESULTS_UPLOADED"


@pytest.mark.parametrize(("task", "final"), [("train", "RESULTS_UPLOADED"), ("my_eval", "ERROR")])
def test_a_job_without_uploader_and_failed_work_ends_error_and_work_tasks_are_configurable(
    tmp_path: Path, task: str, final: str
) -> None:
    reporter = StatusReporter(work_tasks=["my_eval"])
    engine, hub = server_job(tmp_path, reporter)
    engine.start_run()
    _result(engine, "site-1", task, make_reply(ReturnCode.EXECUTION_EXCEPTION))
    engine.end_run()
    assert _statuses(hub)[-1] == final


def test_the_tally_names_the_task_and_refuses_a_bad_list() -> None:
    tally = WorkTally(["train"])
    assert tally.all_failed() is None
    with pytest.raises(FlipConfigError):
        WorkTally("train")
