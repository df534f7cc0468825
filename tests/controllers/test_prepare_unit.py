"""InitTraining, InitEvaluation and CleanupClients driven through NVFlare's own task machinery, without a simulator.

Each controller gets NVFlare's real server-side communicator (WFCommServer) on a mock engine; the
test plays the clients: it asks for the task and submits replies the way a client's runner would.
``control_flow`` runs in a thread, as in NVFlare's ServerRunner.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nvflare.apis.client import Client
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.impl.controller import Controller
from nvflare.apis.impl.wf_comm_server import WFCommServer
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from flip_nvflare.constants import FlipEvents, FlipHeaders, FlipProps, FlipTasks
from flip_nvflare.controllers import CleanupClients, InitEvaluation, InitTraining
from tests.engine import FakeEngine

#: Bound on every wait: a controller that does not finish within it is a failure, not a slow test.
DEADLINE = 20.0


class ControllerRun:
    """One controller's ``control_flow`` in a thread, with NVFlare's WFCommServer between it and the test."""

    def __init__(self, controller: Controller, engine: FakeEngine) -> None:
        self.controller = controller
        self.engine = engine
        self.abort_signal = Signal()
        self.comm = WFCommServer(task_check_period=0.01)
        controller.set_communicator(self.comm)
        self.ctx = engine.new_context()
        self.comm.initialize_run(self.ctx)
        controller.start_controller(self.ctx)
        self.scheduled = threading.Event()
        self.error: BaseException | None = None
        wait_for_task = self.comm.wait_for_task

        def waiting(task: object, abort_signal: Signal) -> None:
            self.scheduled.set()  # the task is scheduled: clients may ask for it
            wait_for_task(task, abort_signal)  # type: ignore[arg-type]

        self.comm.wait_for_task = waiting  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self._control_flow, daemon=True)

    def _control_flow(self) -> None:
        try:
            self.controller.control_flow(self.abort_signal, self.engine.new_context())
        except BaseException as exc:  # pragma: no cover - reported by finish()
            self.error = exc

    def start(self) -> ControllerRun:
        self.thread.start()
        return self

    def wait_scheduled(self) -> None:
        assert self.scheduled.wait(DEADLINE), "the controller never scheduled its task"

    def take_task(self, client: str) -> tuple[str, str, Shareable]:
        """Ask for a task as ``client`` does; return (task name, task id, data)."""
        name, task_id, data = self.comm.process_task_request(Client(client, None), self.engine.new_context())
        assert isinstance(data, Shareable), f"{client} got no task ({name})"
        return name, task_id, data

    def answer(self, client: str, reply: Shareable) -> str:
        name, task_id, _data = self.take_task(client)
        self.comm.process_submission(Client(client, None), name, task_id, reply, self.engine.new_context())
        return name

    def finish(self) -> None:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "control_flow did not return"
        assert self.error is None, f"control_flow raised {self.error!r}"

    def close(self) -> None:
        self.abort_signal.trigger("test over")
        self.thread.join(DEADLINE)
        self.controller.stop_controller(self.ctx)
        self.comm.finalize_run(self.ctx)


@pytest.fixture
def runs() -> Iterator[list[ControllerRun]]:
    started: list[ControllerRun] = []
    yield started
    for run in started:
        run.close()


def run_controller(runs: list[ControllerRun], controller: Controller, engine: FakeEngine) -> ControllerRun:
    run = ControllerRun(controller, engine)
    runs.append(run)
    return run.start()


def prepared(ready: int, accessions: int) -> Shareable:
    return make_reply(
        ReturnCode.OK, headers={FlipHeaders.PREPARATION_SUMMARY: {"ready": ready, "accessions": accessions}}
    )


def panics(engine: FakeEngine) -> list[str]:
    return [str(event.data) for event in engine.fired(EventType.FATAL_SYSTEM_ERROR)]


def test_every_client_prepares_then_preparation_done(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1", "site-2"])
    run = run_controller(runs, InitTraining(), engine)
    run.wait_scheduled()

    assert run.answer("site-1", prepared(9, 10)) == FlipTasks.INIT_TRAINING
    assert run.answer("site-2", make_reply(ReturnCode.OK)) == FlipTasks.INIT_TRAINING
    run.finish()

    assert engine.event_types().count(FlipEvents.TRAINING_INITIATED) == 1
    initiated = engine.fired(FlipEvents.TRAINING_INITIATED)[0]
    assert initiated.props[FlipProps.PREPARATION_TARGETS] == ["site-1", "site-2"]
    done = engine.fired(FlipEvents.PREPARATION_DONE)
    assert len(done) == 1
    assert done[0].props[FlipProps.PREPARATION_SUMMARY] == {"site-1": {"ready": 9, "accessions": 10}, "site-2": {}}
    assert engine.fired(FlipEvents.PREPARATION_FAILED) == [] and panics(engine) == []


def test_init_evaluation_sends_its_own_task(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1"])
    run = run_controller(runs, InitEvaluation(), engine)
    run.wait_scheduled()

    assert run.answer("site-1", prepared(1, 1)) == FlipTasks.INIT_TASK
    run.finish()

    assert len(engine.fired(FlipEvents.PREPARATION_DONE)) == 1


def test_a_client_that_fails_stops_the_run_naming_it_but_not_its_error(
    tmp_path: Path, runs: list[ControllerRun]
) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1", "site-2"])
    run = run_controller(runs, InitTraining(), engine)
    run.wait_scheduled()
    reply = make_reply(
        ReturnCode.EXECUTION_EXCEPTION, headers={FlipHeaders.EXCEPTION: "ValueError: accession ACC-123 is broken"}
    )

    run.answer("site-1", reply)
    run.finish()  # site-2 is not waited for: the run ends anyway

    failed = engine.fired(FlipEvents.PREPARATION_FAILED)
    assert len(failed) == 1
    assert failed[0].props[FlipProps.PREPARATION_FAILED_CLIENT] == "site-1"
    assert failed[0].props[FlipProps.PREPARATION_FAILURE] == "EXECUTION_EXCEPTION"
    assert failed[0].data == "Data preparation failed at site-1: EXECUTION_EXCEPTION"
    assert len(panics(engine)) == 1
    assert panics(engine)[0].startswith("Data preparation failed at site-1 (site-1: EXECUTION_EXCEPTION).")
    assert all("ACC-123" not in text for text in panics(engine))
    assert engine.fired(FlipEvents.PREPARATION_DONE) == []


def test_a_client_without_the_executor_is_told_what_to_add(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1"])
    run = run_controller(runs, InitEvaluation(), engine)
    run.wait_scheduled()

    run.answer("site-1", make_reply(ReturnCode.TASK_UNKNOWN))
    run.finish()

    failure = engine.fired(FlipEvents.PREPARATION_FAILED)[0].props[FlipProps.PREPARATION_FAILURE]
    assert failure == "TASK_UNKNOWN: the client has no executor for task 'init_task' (add CohortPreparer for it)"
    assert len(panics(engine)) == 1


def test_enough_clients_is_min_clients(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1", "site-2", "site-3"])
    run = run_controller(runs, InitTraining(min_clients=2), engine)
    run.wait_scheduled()

    run.answer("site-3", prepared(1, 1))
    run.answer("site-1", prepared(2, 2))
    run.finish()

    done = engine.fired(FlipEvents.PREPARATION_DONE)
    assert len(done) == 1 and sorted(done[0].props[FlipProps.PREPARATION_SUMMARY]) == ["site-1", "site-3"]
    assert panics(engine) == []


def test_clients_that_do_not_answer_fail_the_preparation(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1", "site-2"])
    controller = InitTraining()
    run = run_controller(runs, controller, engine)
    run.wait_scheduled()

    run.answer("site-1", prepared(1, 1))
    run.take_task("site-2")  # site-2 takes the task and never answers; the run is stopped meanwhile
    controller.stop_controller(engine.new_context())
    run.finish()

    failed = engine.fired(FlipEvents.PREPARATION_FAILED)
    assert len(failed) == 1 and failed[0].props[FlipProps.PREPARATION_FAILED_CLIENT] is None
    assert failed[0].props[FlipProps.PREPARATION_FAILURE] == (
        "only 1 of the 2 required clients prepared their data; site-2 did not answer."
    )
    assert panics(engine) == [
        "Data preparation failed: only 1 of the 2 required clients prepared their data; site-2 did not answer."
    ]


def test_a_preparation_that_times_out_says_so(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1", "site-2"])
    run = run_controller(runs, InitTraining(task_timeout=1), engine)
    run.wait_scheduled()

    run.answer("site-2", prepared(1, 1))
    run.finish()  # the task's own timeout ends the wait

    assert engine.fired(FlipEvents.PREPARATION_FAILED)[0].props[FlipProps.PREPARATION_FAILURE] == (
        "only 1 of the 2 required clients prepared their data; site-1 timed out."
    )


def test_an_aborted_run_reports_nothing(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1", "site-2"])
    run = run_controller(runs, InitTraining(), engine)
    run.wait_scheduled()

    run.answer("site-1", prepared(1, 1))
    run.abort_signal.trigger("aborted by the admin")
    run.finish()

    assert len(engine.fired(FlipEvents.TRAINING_INITIATED)) == 1
    assert engine.fired(FlipEvents.PREPARATION_DONE) == engine.fired(FlipEvents.PREPARATION_FAILED) == []
    assert panics(engine) == []


def test_participating_clients_must_be_connected(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1", "site-2"])
    run = run_controller(runs, InitTraining(participating_clients=["site-2", "site-9"]), engine)
    run.finish()

    assert not run.scheduled.is_set()  # nothing was broadcast
    assert engine.fired(FlipEvents.TRAINING_INITIATED) == []
    failed = engine.fired(FlipEvents.PREPARATION_FAILED)
    assert len(failed) == 1
    assert failed[0].data == (
        "Data preparation failed: participating client(s) site-9 are not connected (connected: site-1, site-2)."
    )
    assert len(panics(engine)) == 1


def test_only_participating_clients_are_asked(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1", "site-2"])
    run = run_controller(runs, InitTraining(participating_clients=["site-2"]), engine)
    run.wait_scheduled()

    name, _task_id, data = run.comm.process_task_request(Client("site-1", None), engine.new_context())
    assert (name, data) == ("", None)  # site-1 is not a target
    run.answer("site-2", prepared(3, 3))
    run.finish()

    assert engine.fired(FlipEvents.TRAINING_INITIATED)[0].props[FlipProps.PREPARATION_TARGETS] == ["site-2"]
    assert len(engine.fired(FlipEvents.PREPARATION_DONE)) == 1


def test_more_required_clients_than_connected_fails_at_once(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1", "site-2"])
    run = run_controller(runs, InitTraining(min_clients=3), engine)
    run.finish()

    assert not run.scheduled.is_set()
    assert panics(engine) == [
        "Data preparation failed: 3 clients must prepare (min_clients) but only 2 are connected (site-1, site-2)."
    ]


def test_a_late_result_changes_nothing(
    tmp_path: Path, runs: list[ControllerRun], caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1"])
    run = run_controller(runs, InitTraining(), engine)
    run.wait_scheduled()
    run.answer("site-1", prepared(1, 1))
    run.finish()

    with caplog.at_level(logging.INFO):
        run.comm.process_submission(
            Client("site-1", None), FlipTasks.INIT_TRAINING, "an-old-task-id", prepared(1, 1), engine.new_context()
        )

    assert any("Ignoring a late result from site-1" in r.getMessage() for r in caplog.records)
    assert len(engine.fired(FlipEvents.PREPARATION_DONE)) == 1


def test_cleanup_asks_every_client_and_never_fails_the_run(
    tmp_path: Path, runs: list[ControllerRun], caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1", "site-2"])
    run = run_controller(runs, CleanupClients(), engine)
    run.wait_scheduled()

    with caplog.at_level(logging.INFO):
        assert run.answer("site-1", make_reply(ReturnCode.OK, headers={FlipHeaders.CLEANUP_SUMMARY: {"deleted": 3}}))
        run.answer("site-2", make_reply(ReturnCode.EXECUTION_EXCEPTION))
        run.finish()

    messages = [r.getMessage() for r in caplog.records]
    assert any("site-1 finished 'post_validation': {'deleted': 3}" in m for m in messages)
    assert any("site-2 answered 'post_validation' with EXECUTION_EXCEPTION" in m for m in messages)
    assert panics(engine) == [] and engine.fired(FlipEvents.PREPARATION_FAILED) == []


def test_cleanup_of_participating_clients_only(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1", "site-2"])
    run = run_controller(runs, CleanupClients(task_name=FlipTasks.POST_TASK, participating_clients=["site-2"]), engine)
    run.wait_scheduled()

    assert run.answer("site-2", make_reply(ReturnCode.OK)) == FlipTasks.POST_TASK
    run.finish()

    nobody = run_controller(runs, CleanupClients(participating_clients=["site-7"]), engine)
    nobody.finish()
    assert not nobody.scheduled.is_set()  # no participating client is connected: nothing to ask
    assert panics(engine) == []


def test_stopping_the_cleanup_ends_its_wait(tmp_path: Path, runs: list[ControllerRun]) -> None:
    engine = FakeEngine(tmp_path, clients=["site-1"])
    controller = CleanupClients(task_timeout=0)  # would wait for ever for site-1
    run = run_controller(runs, controller, engine)
    run.wait_scheduled()
    run.take_task("site-1")

    controller.stop_controller(engine.new_context())
    run.finish()

    name, _task_id, data = run.comm.process_task_request(Client("site-1", None), engine.new_context())
    assert (name, data) == ("", None)  # no task is out any more
    assert panics(engine) == []
