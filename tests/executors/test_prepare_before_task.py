"""A runner asked to run before its site prepared: it prepares first, or refuses the task; never runs unprepared.

On a mock client engine with the dev backend: the job's CohortPreparer makes itself known at
START_RUN; a TrainerRunner then gets ``train`` without any ``init_training`` having run at this
site (the server moved on once ``min_clients`` sites had prepared).
"""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from nvflare.apis.dxo import from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from flip_nvflare.backend import FlipBackend
from flip_nvflare.constants import FlipHeaders, FlipProps
from flip_nvflare.executors.cohort import CohortPreparer
from flip_nvflare.executors.manifest import MANIFEST_FILE, prepared_dir
from flip_nvflare.executors.runners import TrainerRunner
from tests.engine import FakeEngine

#: A trainer that answers with how many studies of the prepared cohort are ready, and counts its calls.
TRAINER = """
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.executor import Executor

from flip_nvflare import prepared_cohort

CALLS = []


class FLIP_TRAINER(Executor):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        CALLS.append(task_name)
        rows = len(prepared_cohort().ready_dataframe())
        return DXO(DataKind.METRICS, data={"rows": rows}).to_shareable()
"""


@pytest.fixture(autouse=True)
def forget_app_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def client(tmp_path: Path, *, with_preparer: bool = True, csv_rows: int = 3) -> tuple[FakeEngine, TrainerRunner]:
    """site-1 of a dev job: data, the app in custom/, a started run; the job's preparer if asked."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    lines = ["accession_id,label"]
    for row in range(csv_rows):
        (data / "images" / f"ACC{row}").mkdir()
        lines.append(f"ACC{row},{row % 2}")
    if csv_rows:
        (data / "cohort.csv").write_text("\n".join(lines) + "\n")
    flip = FlipBackend(mode="dev", dev_dataframe=str(data / "cohort.csv"), dev_images_dir=str(data / "images"))
    runner = TrainerRunner(project_id="enc-project", query="SELECT accession_id FROM cohort")
    listeners = [CohortPreparer(project_id="enc-project", query="SELECT accession_id FROM cohort", retry_delay=0)]
    engine = FakeEngine(
        tmp_path, server=False, components={"flip": flip}, listeners=[runner, *(listeners if with_preparer else [])]
    )
    custom = Path(engine.workspace.get_app_custom_dir(engine.job_id))
    custom.mkdir(parents=True)
    (custom / "trainer.py").write_text(textwrap.dedent(TRAINER))
    engine.start_run()
    return engine, runner


def train(engine: FakeEngine, runner: TrainerRunner) -> Shareable:
    return runner.execute("train", Shareable(), engine.new_context(), Signal())


def app_calls() -> list[str]:
    return list(sys.modules["trainer"].CALLS) if "trainer" in sys.modules else []


def test_the_preparer_makes_itself_known_at_start_run(tmp_path: Path) -> None:
    engine, _ = client(tmp_path)
    assert isinstance(engine.new_context().get_prop(FlipProps.COHORT_PREPARER), CohortPreparer)


def test_an_unprepared_site_prepares_before_its_first_task(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine, runner = client(tmp_path)
    manifest = prepared_dir(engine.run_dir) / MANIFEST_FILE
    assert not manifest.exists()

    with caplog.at_level(logging.INFO):
        reply = train(engine, runner)

    assert reply.get_return_code() == ReturnCode.OK
    assert from_shareable(reply).data == {"rows": 3}  # the app saw the prepared cohort
    assert manifest.is_file()
    messages = [r.getMessage() for r in caplog.records]
    assert any("Task 'train' arrived before this site prepared its cohort" in m for m in messages)
    assert any("Cohort prepared before task 'train': 3/3 ready." in m for m in messages)

    first = manifest.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert train(engine, runner).get_return_code() == ReturnCode.OK
    assert manifest.stat().st_mtime_ns == first  # prepared once
    assert not any("arrived before this site prepared" in r.getMessage() for r in caplog.records)
    assert app_calls() == ["train", "train"]


def test_a_site_that_prepared_runs_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine, runner = client(tmp_path)
    preparer = engine.new_context().get_prop(FlipProps.COHORT_PREPARER)
    assert preparer.execute("init_training", Shareable(), engine.new_context(), Signal()).get_return_code() == "OK"

    with caplog.at_level(logging.INFO):
        assert train(engine, runner).get_return_code() == ReturnCode.OK
    assert not any("arrived before this site prepared" in r.getMessage() for r in caplog.records)


def test_a_site_that_cannot_prepare_refuses_the_task_and_never_runs_the_app(tmp_path: Path) -> None:
    engine, runner = client(tmp_path, csv_rows=0)  # no cohort CSV at this site

    reply = train(engine, runner)

    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    text = reply.get_header(FlipHeaders.EXCEPTION)
    assert "Task 'train' refused: this site has not prepared its cohort for this job" in text
    assert "Dev cohort CSV missing" in text  # why, without the path
    assert str(tmp_path) not in text
    assert app_calls() == []


def test_a_job_without_a_preparer_runs_the_app_as_before(tmp_path: Path) -> None:
    engine, runner = client(tmp_path, with_preparer=False)

    reply = train(engine, runner)

    assert app_calls() == ["train"]  # the app ran; it found no prepared cohort and said how to add one
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert "This job has no prepared cohort" in reply.get_header(FlipHeaders.EXCEPTION)
