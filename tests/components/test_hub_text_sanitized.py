"""Text a client sets (return codes, reply headers, DXO fields) is sanitized before the server sends it on.

The server does not know a trust's cohort, so it applies the rules that need none: a return code is
shown only if it is one of NVFlare's, and other text loses identifier shapes (NHS numbers, long
digit runs, dates) and data paths. Each test plays a careless or malicious client app.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nvflare.apis.client import Client
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.evaluation_report import FAILURES_JSON, EvaluationReporter
from flip_nvflare.components.exceptions import ExceptionForwarder
from flip_nvflare.components.status import StatusReporter
from flip_nvflare.constants import FlipEvents, FlipHeaders, FlipProps
from flip_nvflare.controllers import CleanupClients, InitTraining
from tests.engine import FakeEngine, hub_calls, server_job, with_peer


def wide(text: str) -> str:
    """``text`` in full-width forms (U+FF01 to U+FF5E, and the ideographic space)."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


#: A return code no NVFlare component sets: free text holding a name, an NHS number and a data path.
BAD_RC = "Failed for Mrs Jane O'Doe,\n  NHS 943 476 5919, /health/records/jane o doe.csv"
#: An exception header a client app set itself (not through the FLIP runners' sanitizer).
BAD_HEADER = (
    "Traceback (most recent call last):\n"
    '  File "custom/trainer.py", line 63, in execute\n'
    f"KeyError: patient {wide('NHS 943-476-5919')} born 03.02.1980 (MRN 1234567890)\n"
    "  see /mnt/trust/images/net-1/ACC000001/scan.nii and C:\\trust\\notes.txt"
)
#: What none of the text the hub (or the results zip, or the server log) receives may contain.
LEAKS = (
    "Jane",
    "Doe",
    "943",
    wide("943"),
    "5919",
    "1980",
    "1234567890",
    "/health",
    "records",
    "/mnt",
    "ACC000001",
    "notes.txt",
)


def leaked(text: object) -> list[str]:
    shown = json.dumps(text, ensure_ascii=False) if not isinstance(text, str) else text
    return [item for item in LEAKS if item in shown]


def server_log(caplog: pytest.LogCaptureFixture) -> str:
    """What FLIP's components wrote to the server's log.

    NVFlare's own context prefix (``[identity=server, ..., peer_rc=..., task_name=...]: ``) is left
    out: NVFlare adds it to every line logged while a client's result is processed, and writes the
    same in its own lines; it is NVFlare's local log, not something FLIP sends on.
    """
    return "\n".join(_CONTEXT_PREFIX.sub("", record.getMessage()) for record in caplog.records)


_CONTEXT_PREFIX = re.compile(r"^\[identity=[^\n]*?, peer_rc=[\s\S]*?\]: |^\[identity=[^\]\n]*\]: ")


# --------------------------------------------------------------------------- ExceptionForwarder


def submit(engine: FakeEngine, client: str, result: Shareable, task_name: str) -> None:
    ctx = with_peer(engine.new_context(), client)
    engine.fire(
        EventType.BEFORE_PROCESS_SUBMISSION,
        ctx,
        **{FLContextKey.TASK_RESULT: result, FLContextKey.TASK_NAME: task_name},
    )


def test_exception_forwarder_sends_no_client_identifiers_to_the_hub(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    forwarder = ExceptionForwarder()
    engine, hub = server_job(tmp_path, forwarder)
    engine.start_run()
    with caplog.at_level(logging.DEBUG):
        submit(engine, "site-1", make_reply(BAD_RC, headers={FlipHeaders.EXCEPTION: BAD_HEADER}), "train 9434765919")
        submit(engine, "site-2", make_reply(BAD_RC), "validate")
    summary = forwarder.session.summary() if forwarder.session else {}
    engine.end_run()

    logs = hub_calls(hub, "log")
    assert len(logs) == 2
    for _kind, text, _client, _kw in logs:
        assert leaked(text) == [], text
    texts = {client: text for _kind, text, client, _kw in logs}
    # what a developer needs is still there
    assert 'File "custom/trainer.py", line 63, in execute' in texts["site-1"]
    assert "KeyError: patient" in texts["site-1"]
    assert "failed with" in texts["site-2"] and "The site sent no exception text" in texts["site-2"]
    assert leaked(summary) == [], summary  # the run summary goes into the results zip
    assert leaked(server_log(caplog)) == []


def test_exception_forwarder_keeps_nvflare_return_codes_and_cuts_after_redacting(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, ExceptionForwarder())
    engine.start_run()
    # an NHS number that a cut at 16 KiB would split if the text were cut before it is redacted
    text = "y" * (16 * 1024 - 6) + " 943 476 5919 " + "z" * 5000
    submit(engine, "site-1", make_reply(ReturnCode.EXECUTION_EXCEPTION, headers={FlipHeaders.EXCEPTION: text}), "train")
    engine.end_run()

    [(_kind, sent, _client, _kw)] = hub_calls(hub, "log")
    assert sent.startswith("Task 'train' failed with EXECUTION_EXCEPTION.\n")
    assert sent.endswith("\n[truncated]") and "943" not in sent and "476" not in sent


# --------------------------------------------------------------------------- EvaluationReporter


def evaluation_result(engine: FakeEngine, site: str, owner: str, value: object) -> None:
    engine.fire(
        AppEventType.VALIDATION_RESULT_RECEIVED,
        **{AppConstants.DATA_CLIENT: site, AppConstants.MODEL_OWNER: owner, AppConstants.VALIDATION_RESULT: value},
    )


def test_evaluation_failures_and_metric_names_carry_no_client_identifiers(tmp_path: Path) -> None:
    reporter = EvaluationReporter()
    engine, hub = server_job(tmp_path, reporter)
    engine.start_run()
    evaluation_result(engine, "site-1", "SRV_model", make_reply(BAD_RC))
    evaluation_result(engine, "site-2", "SRV_model", DXO("Jane O'Doe 943 476 5919", {"auc": 0.5}).to_shareable())
    metrics = {"auc": 0.75, "auc for 943 476 5919 born 1980-02-03": 0.5, "/health/records/x": 0.1}
    evaluation_result(engine, "site-1", "SRV_other", DXO(DataKind.METRICS, metrics).to_shareable())
    engine.end_run()

    written = json.loads((engine.run_dir / "flip_results" / FAILURES_JSON).read_text())
    assert [(f["site"], f["model"]) for f in written] == [("site-1", "model"), ("site-2", "model")]
    assert leaked(written) == [], written
    assert leaked(reporter.failures) == []
    labels = [call[1] for call in hub_calls(hub, "metric")]
    assert "other/auc" in labels and len(labels) == 3
    assert leaked(labels) == [], labels


def test_evaluation_failures_keep_nvflare_return_codes_and_data_kinds(tmp_path: Path) -> None:
    reporter = EvaluationReporter()
    engine, _hub = server_job(tmp_path, reporter)
    engine.start_run()
    evaluation_result(engine, "site-1", "SRV_model", make_reply(ReturnCode.EXECUTION_EXCEPTION))
    evaluation_result(engine, "site-2", "SRV_model", DXO(DataKind.WEIGHTS, {"w": 1.0}).to_shareable())
    engine.end_run()

    assert [f["reason"] for f in reporter.failures] == ["EXECUTION_EXCEPTION", "the result is WEIGHTS, not METRICS"]


# --------------------------------------------------------------------------- StatusReporter


def test_status_reporter_logs_no_client_identifiers_from_the_failure_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reporter = StatusReporter()
    engine, hub = server_job(tmp_path, reporter)
    engine.start_run()
    assert reporter.session is not None
    # NVFlare's own workflows put a client's return code in their panic reason
    reporter.session.journal.mark_failed(f"Result from site-1 is bad, error code: {BAD_RC}.")
    with caplog.at_level(logging.DEBUG):
        engine.end_run()

    assert [call[1] for call in hub_calls(hub, "status")][-1] == "ERROR"
    log = server_log(caplog)
    assert "run failed: Result from site-1 is bad, error code: Failed for Mrs" in log
    # free text the server cannot recognise (a name) stays; identifier shapes and paths do not
    assert [item for item in ("943", "5919", "/health", "records", "doe.csv") if item in log] == [], log


# --------------------------------------------------------------------------- InitTraining / CleanupClients


def answering(controller: Any, engine: FakeEngine, replies: dict[str, Shareable]) -> None:
    """Make ``broadcast_and_wait`` hand ``replies`` to the controller's result callback, as NVFlare would."""

    def broadcast_and_wait(*, task: Any, fl_ctx: Any, targets: list[str], **_kw: Any) -> None:
        for name in targets:
            client_task = SimpleNamespace(result=replies[name], client=Client(name, None), task=task)
            task.result_received_cb(client_task, engine.new_context())

    controller.broadcast_and_wait = broadcast_and_wait
    controller.cancel_task = lambda *args, **kwargs: None


def test_init_training_forwards_no_client_return_code_text(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    controller = InitTraining()
    engine, _hub = server_job(tmp_path, clients=("site-1", "site-2"))
    backend = engine.components["flip"]
    engine.start_run()
    summary = {"accessions": "943 476 5919", "ready": "/health/records/jane o doe.csv"}
    answering(
        controller,
        engine,
        {
            "site-1": make_reply(BAD_RC),
            "site-2": make_reply(ReturnCode.OK, headers={FlipHeaders.PREPARATION_SUMMARY: summary}),
        },
    )
    with caplog.at_level(logging.DEBUG):
        controller.control_flow(engine.abort_signal, engine.new_context())

    [failed] = engine.fired(FlipEvents.PREPARATION_FAILED)
    [panic] = engine.fired(EventType.FATAL_SYSTEM_ERROR)
    assert failed.props[FlipProps.PREPARATION_FAILED_CLIENT] == "site-1"
    for what in (failed.data, failed.props[FlipProps.PREPARATION_FAILURE], panic.data, server_log(caplog)):
        assert leaked(what) == [], what
    assert "Data preparation failed at site-1" in panic.data
    session = backend.session(engine.new_context())  # type: ignore[attr-defined]
    assert leaked(session.summary()) == []  # the journal's failure goes into the run summary
    engine.end_run()


def test_init_training_still_names_nvflare_return_codes(tmp_path: Path) -> None:
    controller = InitTraining()
    engine, _hub = server_job(tmp_path, clients=("site-1",))
    engine.start_run()
    answering(controller, engine, {"site-1": make_reply(ReturnCode.EXECUTION_EXCEPTION)})
    controller.control_flow(engine.abort_signal, engine.new_context())

    engine.end_run()

    [failed] = engine.fired(FlipEvents.PREPARATION_FAILED)
    assert failed.data == "Data preparation failed at site-1: EXECUTION_EXCEPTION"


def test_cleanup_clients_logs_no_client_text(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    controller = CleanupClients()
    engine, _hub = server_job(tmp_path, clients=("site-1", "site-2"))
    engine.start_run()
    counts = {"deleted": 2, "kept": "Jane O'Doe 943 476 5919", "/health/records/x.csv": 1}
    answering(
        controller,
        engine,
        {
            "site-1": make_reply(BAD_RC),
            "site-2": make_reply(ReturnCode.OK, headers={FlipHeaders.CLEANUP_SUMMARY: counts}),
        },
    )
    with caplog.at_level(logging.DEBUG):
        controller.control_flow(engine.abort_signal, engine.new_context())
        controller.process_result_of_unknown_task(
            Client("site-1", None), "post 943 476 5919", "id", make_reply(ReturnCode.OK), engine.new_context()
        )
    engine.end_run()

    log = server_log(caplog)
    assert "site-2 finished 'post_validation'" in log and "'deleted': 2" in log
    assert leaked(log) == [], log
