"""ExceptionForwarder on a mock engine: failed client results become hub log entries for the trust."""

from __future__ import annotations

from pathlib import Path

import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.app_constant import AppConstants

from flip_nvflare.components.exceptions import ExceptionForwarder
from flip_nvflare.constants import FlipHeaders
from flip_nvflare.errors import FlipConfigError
from tests.engine import FakeEngine, hub_calls, server_job, with_peer


def submit(engine: FakeEngine, client: str | None, result: object, task_name: str | None = "train") -> None:
    ctx = engine.new_context()
    if client is not None:
        with_peer(ctx, client)
    engine.fire(
        EventType.BEFORE_PROCESS_SUBMISSION,
        ctx,
        **{FLContextKey.TASK_RESULT: result},
        **({FLContextKey.TASK_NAME: task_name} if task_name is not None else {}),
    )


def failed(rc: str = ReturnCode.EXECUTION_EXCEPTION, text: str | None = None, round_: int | None = None) -> Shareable:
    reply = make_reply(rc, headers={FlipHeaders.EXCEPTION: text} if text is not None else None)
    if round_ is not None:
        reply.set_header(AppConstants.CURRENT_ROUND, round_)
    return reply


def logs(hub: object) -> list[tuple[object, ...]]:
    return sorted(call[1:] for call in hub_calls(hub, "log"))


def test_a_failed_result_sends_its_sanitized_text_for_the_trust(tmp_path: Path) -> None:
    forwarder = ExceptionForwarder()
    engine, hub = server_job(tmp_path, forwarder)
    engine.start_run()
    submit(engine, "site-1", failed(text="ValueError: the learning rate is negative", round_=2))
    summary = forwarder.session.summary() if forwarder.session else {}
    engine.end_run()

    assert logs(hub) == [
        (
            "Task 'train' (round 2) failed with EXECUTION_EXCEPTION.\nValueError: the learning rate is negative",
            "site-1",
            {"trust_name": "Trust_1"},
        )
    ]
    errors = summary["client_errors"]["site-1"]
    assert len(errors) == 1
    assert (errors[0]["task"], errors[0]["round"], errors[0]["return_code"]) == ("train", 2, "EXECUTION_EXCEPTION")


def test_a_result_without_exception_text_gets_a_note(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, ExceptionForwarder())
    engine.start_run()
    submit(engine, "site-2", failed(ReturnCode.EXECUTION_RESULT_ERROR, text="   "), task_name=None)
    engine.end_run()

    assert logs(hub) == [
        (
            "Task 'task' failed with EXECUTION_RESULT_ERROR. The site sent no exception text; its own log has the "
            "details.",
            "site-2",
            {"trust_name": "Trust_2"},
        )
    ]


def test_long_texts_are_truncated(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, ExceptionForwarder())
    engine.start_run()
    submit(engine, "site-1", failed(text="x" * 20_000))
    engine.end_run()

    sent = logs(hub)
    assert len(sent) == 1
    text = str(sent[0][0])
    assert text.endswith("x" * 100 + "\n[truncated]")
    assert text.count("x") == 16 * 1024


def test_ok_aborted_and_unattributed_results_are_not_reported(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, ExceptionForwarder())
    engine.start_run()
    submit(engine, "site-1", make_reply(ReturnCode.OK))
    submit(engine, "site-1", make_reply(ReturnCode.TASK_ABORTED))
    submit(engine, None, failed(text="no peer"))
    submit(engine, "site-1", "not a shareable")
    submit(engine, "site-3", failed(text="reported"))
    engine.end_run()

    assert [(text.split("\n")[-1], client) for text, client, _kw in logs(hub)] == [("reported", "site-3")]


def test_ignored_return_codes_can_be_set_but_ok_is_never_reported(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, ExceptionForwarder(ignore_return_codes=[ReturnCode.EXECUTION_EXCEPTION]))
    engine.start_run()
    submit(engine, "site-1", make_reply(ReturnCode.OK))
    submit(engine, "site-1", failed(text="ignored"))
    submit(engine, "site-1", make_reply(ReturnCode.TASK_ABORTED))
    engine.end_run()

    assert [text for text, _client, _kw in logs(hub)] == [
        "Task 'train' failed with TASK_ABORTED. The site sent no exception text; its own log has the details."
    ]


def test_ignore_return_codes_must_be_names() -> None:
    with pytest.raises(FlipConfigError, match="ignore_return_codes must be a list of return code names"):
        ExceptionForwarder(ignore_return_codes=[ReturnCode.OK, 3])  # type: ignore[list-item]
