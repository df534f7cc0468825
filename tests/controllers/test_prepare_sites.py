"""InitTraining / InitEvaluation with more sites than min_clients: warned at job start; sites left behind named."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from nvflare.apis.client import Client

from flip_nvflare.constants import FlipEvents
from flip_nvflare.controllers import InitEvaluation, InitTraining
from tests.controllers.test_prepare_unit import ControllerRun, panics, prepared, run_controller
from tests.engine import FakeEngine

SITES = ["site-1", "site-2", "site-3", "site-4"]


@pytest.fixture
def runs() -> Iterator[list[ControllerRun]]:
    started: list[ControllerRun] = []
    yield started
    for run in started:
        run.close()


def every_site_prepares(runs: list[ControllerRun], controller: InitTraining, engine: FakeEngine) -> None:
    """Run ``controller`` to its end with every site of :data:`SITES` answering that it prepared."""
    run = run_controller(runs, controller, engine)
    run.wait_scheduled()
    for site in SITES:
        run.answer(site, prepared(1, 1))
    run.finish()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings' texts, without NVFlare's ``[identity=..., run=...]: `` prefix."""
    return [r.getMessage().split("]: ", 1)[-1] for r in caplog.records if r.levelno == logging.WARNING]


def test_min_clients_below_the_sites_is_warned_at_job_start_with_its_cost(
    tmp_path: Path, runs: list[ControllerRun], caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine(tmp_path, clients=SITES)
    with caplog.at_level(logging.WARNING):
        every_site_prepares(runs, InitTraining(min_clients=2), engine)

    (warning,) = [w for w in warnings_of(caplog) if "(job start)" in w]
    assert warning.startswith(
        "min_clients is 2 but 4 sites take part (site-1, site-2, site-3, site-4): each round aggregates only the "
        "first 2 results that arrive and the other sites' work is discarded"
    )
    assert "Set min_clients to 4 to train on every site." in warning
    assert panics(engine) == []


def test_min_clients_equal_to_the_sites_is_not_warned(
    tmp_path: Path, runs: list[ControllerRun], caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine(tmp_path, clients=SITES)
    with caplog.at_level(logging.WARNING):
        every_site_prepares(runs, InitTraining(min_clients=4), engine)
    assert warnings_of(caplog) == []
    assert len(engine.fired(FlipEvents.PREPARATION_DONE)) == 1


def test_moving_on_names_the_sites_not_prepared_and_what_happens_to_them(
    tmp_path: Path, runs: list[ControllerRun], caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine(tmp_path, clients=SITES)
    with caplog.at_level(logging.WARNING):
        run = run_controller(runs, InitTraining(min_clients=2), engine)
        run.wait_scheduled()
        run.take_task("site-3")  # site-3 is still preparing when the run moves on; site-4 never asked
        run.answer("site-1", prepared(2, 2))
        run.answer("site-2", prepared(2, 2))
        run.finish()

    assert len(engine.fired(FlipEvents.PREPARATION_DONE)) == 1 and panics(engine) == []
    (moving_on,) = [w for w in warnings_of(caplog) if w.startswith("Moving on")]
    assert moving_on.startswith(
        "Moving on with 2 of 4 sites prepared (min_clients 2); not prepared: site-3, site-4. "
        "Still preparing: site-3; each finishes its preparation before it takes another task"
    )
    assert (
        "Never sent the preparation task: site-4; each prepares its cohort when its first task arrives, or refuses "
        "that task with a clear error if it cannot (no site runs on an unprepared cohort)." in moving_on
    )
    assert "Each round aggregates the first 2 results" in moving_on
    # the task is over: site-4 is not sent a preparation task any more
    _name, _task_id, data = run.comm.process_task_request(Client("site-4", None), engine.new_context())
    assert data is None


def test_evaluation_names_its_own_cost(
    tmp_path: Path, runs: list[ControllerRun], caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine(tmp_path, clients=SITES[:3])
    with caplog.at_level(logging.WARNING):
        run = run_controller(runs, InitEvaluation(min_clients=1), engine)
        run.wait_scheduled()
        run.answer("site-2", prepared(1, 1))
        run.finish()

    texts = warnings_of(caplog)
    start = next(w for w in texts if "(job start)" in w)
    assert "the run goes on once 1 have prepared their data; each of the others prepares before its first" in start
    moving_on = next(w for w in texts if w.startswith("Moving on"))
    assert "not prepared: site-1, site-3" in moving_on and "aggregates" not in moving_on
