"""ClientApiRunner: NVFlare's Client API executor plus the job's backend for FLIP() and sanitized failure text."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from flip_nvflare import FLIP
from flip_nvflare.backend import FlipBackend
from flip_nvflare.client import clear_script_backend
from flip_nvflare.constants import FlipHeaders
from flip_nvflare.executors.client_api import (
    IN_PROCESS_THREAD,
    ClientApiRunner,
    _forget_failure,
    _install_thread_hook,
)
from flip_nvflare.executors.script import FAILURE_FILE
from tests.engine import FakeEngine

QUERY = "SELECT accession_id FROM omop.secret_cohort WHERE year_of_birth < 1950"
PROJECT = "encrypted-project-envelope-0001"


class _Backend:
    """Stands in for NVFlare's in-process backend: returns the reply it is given."""

    def __init__(self, reply: Shareable) -> None:
        self.reply = reply

    def execute(self, *_: Any) -> Shareable:
        return self.reply


def _runner(tmp_path: Path, reply: Shareable) -> tuple[ClientApiRunner, FakeEngine]:
    runner = ClientApiRunner(
        execution_mode="in_process", task_script_path="custom/trainer.py", project_id=PROJECT, query=QUERY
    )
    engine = FakeEngine(tmp_path, server=False, components={"flip": FlipBackend(mode="dev"), "runner": runner})
    runner._backend = _Backend(reply)  # type: ignore[assignment]
    runner._app_dir = tmp_path / "app"
    runner._app_dir.mkdir(exist_ok=True)
    return runner, engine


def _execute(runner: ClientApiRunner, engine: FakeEngine) -> Shareable:
    return runner.execute("train", Shareable(), engine.new_context(), Signal())


def test_an_ok_reply_passes_unchanged(tmp_path: Path) -> None:
    reply = DXO(DataKind.WEIGHT_DIFF, {"w": 1}).to_shareable()
    runner, engine = _runner(tmp_path, reply)
    assert _execute(runner, engine) is reply and reply.get_header(FlipHeaders.EXCEPTION) is None


def test_an_external_scripts_failure_file_becomes_sanitized_text_and_the_payload_is_dropped(tmp_path: Path) -> None:
    failed = DXO(DataKind.WEIGHT_DIFF, {"w": 1}).to_shareable()
    failed.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
    runner, engine = _runner(tmp_path, failed)
    _forget_failure()
    (tmp_path / "app" / FAILURE_FILE).write_text(
        'Traceback (most recent call last):\n  File "/data/trust/images/ACC000123/scan.nii", line 3, in <module>\n'
        f"FileNotFoundError: cannot read /data/trust/images/ACC000123/scan.nii for {QUERY!r} in {PROJECT}\n"
    )
    result = _execute(runner, engine)
    text = result.get_header(FlipHeaders.EXCEPTION)
    assert "FileNotFoundError" in text
    for leaked in ("secret_cohort", "year_of_birth", PROJECT, "/data/trust/images"):
        assert leaked not in text, text
    assert set(result) == {"__headers__"}  # no weights leave with a failure


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_in_process_scripts_exception_is_caught_as_its_thread_ends(tmp_path: Path) -> None:
    runner, engine = _runner(tmp_path, make_reply(ReturnCode.EXECUTION_EXCEPTION))
    _forget_failure()
    _install_thread_hook()

    def script() -> None:
        raise ValueError(f"bad value in {QUERY}")

    thread = threading.Thread(target=script, name=IN_PROCESS_THREAD)
    thread.start()
    thread.join()
    text = _execute(runner, engine).get_header(FlipHeaders.EXCEPTION)
    assert "ValueError" in text and "secret_cohort" not in text


def test_a_failure_without_text_says_so(tmp_path: Path) -> None:
    runner, engine = _runner(tmp_path, make_reply(ReturnCode.EXECUTION_EXCEPTION))
    _forget_failure()
    assert "ended without a result for task 'train'" in _execute(runner, engine).get_header(FlipHeaders.EXCEPTION)


def test_a_symlinked_failure_file_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("PATIENT ROWS")
    runner, engine = _runner(tmp_path, make_reply(ReturnCode.EXECUTION_EXCEPTION))
    _forget_failure()
    (tmp_path / "app" / FAILURE_FILE).symlink_to(secret)
    assert "PATIENT" not in _execute(runner, engine).get_header(FlipHeaders.EXCEPTION)


def test_start_run_makes_the_jobs_backend_what_flip_returns_until_the_run_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = ClientApiRunner(execution_mode="in_process", task_script_path="custom/trainer.py")
    flip = FlipBackend(mode="dev")
    engine = FakeEngine(tmp_path, server=False, components={"flip": flip, "runner": runner})
    monkeypatch.setattr(
        "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor.handle_event", lambda *a: None
    )
    engine.start_run()
    assert FLIP() is flip.get(engine.new_context())
    engine.end_run()
    clear_script_backend()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["-c"])
    with pytest.raises(Exception, match="called outside a job"):
        FLIP()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_abort_caused_by_the_script_raising_is_reported_as_its_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flip_nvflare.executors.client_api.SCRIPT_FAILURE_WAIT", 0.0)
    runner, engine = _runner(tmp_path, make_reply(ReturnCode.TASK_ABORTED))
    _forget_failure()
    assert _execute(runner, engine).get_return_code() == ReturnCode.TASK_ABORTED  # no script failure: as NVFlare said

    _install_thread_hook()
    thread = threading.Thread(target=lambda: 1 / 0, name=IN_PROCESS_THREAD)
    thread.start()
    thread.join()
    aborted_by_server = Signal()
    aborted_by_server.trigger("server ended the task")
    runner._backend = _Backend(make_reply(ReturnCode.TASK_ABORTED))  # type: ignore[assignment]
    result = runner.execute("train", Shareable(), engine.new_context(), aborted_by_server)
    assert result.get_return_code() == ReturnCode.TASK_ABORTED
    runner._backend = _Backend(make_reply(ReturnCode.TASK_ABORTED))  # type: ignore[assignment]
    result = _execute(runner, engine)
    assert result.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert "ZeroDivisionError" in result.get_header(FlipHeaders.EXCEPTION)


def test_script_metrics_pass_the_sites_metric_policy(tmp_path: Path) -> None:
    import json

    from nvflare.apis.analytix import AnalyticsData, AnalyticsDataType

    from flip_nvflare.executors.client_api import admit_analytics
    from flip_nvflare.filters.metric_policy import METRIC_POLICY_FILE

    _, engine = _runner(tmp_path, make_reply(ReturnCode.OK))
    local = Path(engine.workspace.get_root_dir()) / "local"
    fl_ctx = engine.new_context()

    def scalar(tag: str, value: object) -> Any:
        return AnalyticsData(tag, value, AnalyticsDataType.SCALAR, global_step=1).to_dxo()

    text = AnalyticsData("note", "ACC000123 looked odd", AnalyticsDataType.TEXT).to_dxo()
    assert admit_analytics(scalar("LOSS", 0.5), fl_ctx) is not None  # no policy: today's behaviour
    assert admit_analytics(text, fl_ctx) is not None
    assert admit_analytics(scalar("LOSS", float("nan")), fl_ctx) is None  # never non-finite

    (local / METRIC_POLICY_FILE).write_text(json.dumps({"allow": ["val_*", "val/*"], "significant_digits": 2}))
    fl_ctx = engine.new_context()
    assert admit_analytics(scalar("LOSS", 0.5), fl_ctx) is None
    kept = admit_analytics(scalar("val_acc", 0.123456), fl_ctx)
    assert kept is not None and kept.data["track_value"] == 0.12
    many = AnalyticsData("val", {"acc": 0.9, "x": float("inf")}, AnalyticsDataType.SCALARS).to_dxo()
    assert admit_analytics(many, fl_ctx).data["track_value"] == {"acc": 0.9}
    assert admit_analytics(text, fl_ctx) is None  # text cannot be checked: it stays when a policy exists
