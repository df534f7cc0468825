"""HubWidget, the base of the server widgets, and its helpers, on a mock engine."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from flip_nvflare.components.session import HubSession, RunOutcome
from flip_nvflare.components.widget import ClientRounds, HubWidget, as_round, peer_name, result_round, run_outcome
from flip_nvflare.errors import FlipConfigError
from tests.engine import FakeEngine, server_job, with_peer


class Recorder(HubWidget):
    """Records the events it is given; raises on the event named ``boom``."""

    def __init__(self, flip_id: str = "flip") -> None:
        super().__init__(flip_id)
        self.seen: list[str] = []

    def on_event(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        self.seen.append(event_type)
        if event_type == "boom":
            raise RuntimeError("the widget broke")


def test_flip_id_must_name_a_component() -> None:
    assert Recorder("flip_2").flip_id == "flip_2"
    with pytest.raises(FlipConfigError, match="Recorder: flip_id must be the id of the FlipBackend component"):
        Recorder("")


def test_a_widget_sees_every_event_of_the_run_and_its_errors_never_escape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    widget = Recorder()
    engine, _hub = server_job(tmp_path, widget)
    engine.start_run()
    with caplog.at_level(logging.ERROR):
        engine.fire("boom")
    engine.fire("after")
    engine.end_run()
    engine.fire("after the end")  # the session is kept (closed) until the next START_RUN

    assert widget.seen == [
        EventType.START_RUN,
        "boom",
        "after",
        EventType.ABOUT_TO_END_RUN,
        EventType.END_RUN,
        "after the end",
    ]
    assert any("failed on event boom: RuntimeError: the widget broke" in r.getMessage() for r in caplog.records)
    assert widget.session is not None and widget.session.closed


def test_the_session_closes_when_its_last_holder_lets_go(tmp_path: Path) -> None:
    first, second = Recorder(), Recorder()
    engine, hub = server_job(tmp_path, first, second)
    engine.start_run()
    session = first.session
    assert session is not None and second.session is session

    end = engine.new_context()
    engine.components["flip"].handle_event(EventType.END_RUN, end)  # type: ignore[attr-defined]
    first.handle_event(EventType.END_RUN, end)
    assert not session.closed and not hub.closed  # type: ignore[attr-defined]
    second.handle_event(EventType.END_RUN, end)
    assert session.closed and hub.closed  # type: ignore[attr-defined]


def test_without_the_backend_component_a_widget_is_idle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    widget = Recorder(flip_id="missing")
    engine, _hub = server_job(tmp_path, widget)
    with caplog.at_level(logging.WARNING):
        engine.start_run()
    engine.fire("anything")
    engine.end_run()

    assert widget.session is None and widget.seen == []
    assert any("is idle: the FLIP backend is not usable" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, 3), (0, 0), (3.0, 3), (2.5, None), (-1, None), (True, None), ("2", None), (None, None), ([1], None)],
)
def test_as_round(value: object, expected: int | None) -> None:
    assert as_round(value) == expected


def test_result_round_reads_the_cookie_then_the_header() -> None:
    both = Shareable()
    both.add_cookie(AppConstants.CONTRIBUTION_ROUND, 5)
    both.set_header(AppConstants.CURRENT_ROUND, 7)
    header_only = Shareable()
    header_only.set_header(AppConstants.CURRENT_ROUND, 7)
    bad_cookie = Shareable()
    bad_cookie.add_cookie(AppConstants.CONTRIBUTION_ROUND, "five")
    bad_cookie.set_header(AppConstants.CURRENT_ROUND, 1)

    assert result_round(both) == 5
    assert result_round(header_only) == 7
    assert result_round(bad_cookie) == 1
    assert result_round(Shareable()) is None


def test_client_rounds_remember_each_clients_last_task(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)
    rounds = ClientRounds()
    assert rounds.of("site-1") == 0

    rounds.round_started(engine.fire("x", **{AppConstants.CURRENT_ROUND: 3}))
    task = Shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 2)
    rounds.task_sent(engine.fire("x", with_peer(engine.new_context(), "site-1"), **{FLContextKey.TASK_DATA: task}))
    rounds.task_sent(engine.fire("x", **{FLContextKey.TASK_DATA: task}))  # no peer: ignored
    rounds.task_sent(engine.fire("x", with_peer(engine.new_context(), "site-2"), **{FLContextKey.TASK_DATA: "x"}))
    rounds.round_started(engine.fire("x", **{AppConstants.CURRENT_ROUND: "four"}))  # not a round: ignored

    assert rounds.of("site-1") == 2
    assert rounds.of("site-2") == 3
    assert rounds.server_round == 3


def test_peer_name(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path)
    assert peer_name(with_peer(engine.new_context(), "site-4")) == "site-4"
    assert peer_name(engine.new_context()) is None
    assert peer_name(with_peer(engine.new_context(), "")) is None


def test_run_outcome(tmp_path: Path) -> None:
    widget = Recorder()
    engine, _hub = server_job(tmp_path, widget)
    engine.start_run()
    session = widget.session
    assert session is not None

    assert run_outcome(engine.new_context(), session) is RunOutcome.COMPLETED
    assert run_outcome(engine.fire("x", **{FLContextKey.FATAL_SYSTEM_ERROR: True}), session) is RunOutcome.FAILED
    engine.abort_signal.trigger("stop")
    assert run_outcome(engine.new_context(), session) is RunOutcome.ABORTED
    engine.fire(EventType.ABOUT_TO_END_RUN)  # settles the outcome: aborted
    session.journal.mark_failed("late failure")
    assert run_outcome(engine.new_context(), session) is RunOutcome.FAILED  # a failure always counts
    engine.fire(EventType.END_RUN)
    assert session.outcome is RunOutcome.ABORTED
