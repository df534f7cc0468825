"""A FLIP training app moved to flip-nvflare by changing its imports only: no GLOBAL_ROUNDS in its
config.json (FLIP's hub fills in 1) and FlipConstants read inside the app (dev: LOCAL_DEV is True)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flip_nvflare.constants import JobType
from flip_nvflare.jobs.create import JobRequest, build_job
from flip_nvflare_demo.data import DemoData
from tests.e2e.conftest import DevRun
from tests.e2e.jobtools import copy_app, dev_ledger, jsonl, load_config, read_zip, simulate

pytestmark = pytest.mark.e2e

#: Appended to the demo's trainer.py: the app reads FlipConstants as FLIP apps do, in every task.
FLIP_CONSTANTS_TRAINER = """

from flip_nvflare.constants import FlipConstants

_DemoTrainer = FLIP_TRAINER


class FLIP_TRAINER(_DemoTrainer):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        if FlipConstants.LOCAL_DEV is not True:
            raise RuntimeError("FlipConstants.LOCAL_DEV should be True in a dev job")
        return super().execute(task_name, shareable, fl_ctx, abort_signal)
"""


@pytest.fixture(scope="module")
def no_global_rounds(tmp_path_factory: pytest.TempPathFactory, demo_data: DemoData) -> tuple[DevRun, tuple[str, ...]]:
    root = tmp_path_factory.mktemp("no-global-rounds")
    app = copy_app(root / "app", LOCAL_ROUNDS=1)
    config = json.loads((app / "config.json").read_text())
    del config["GLOBAL_ROUNDS"]
    (app / "config.json").write_text(json.dumps(config))
    with (app / "trainer.py").open("a") as trainer:
        trainer.write(FLIP_CONSTANTS_TRAINER)
    created = build_job(JobRequest(JobType.STANDARD, app, root / "job", dev_data=demo_data.root))
    return DevRun(created.job_dir, simulate(created.job_dir, root / "workspace")), created.notes


def test_an_app_without_global_rounds_runs_one_round(no_global_rounds: tuple[DevRun, tuple[str, ...]]) -> None:
    run, notes = no_global_rounds
    assert any("has no GLOBAL_ROUNDS: the job runs 1 federated round" in note for note in notes)
    server = load_config(run.job, "server")
    assert server["global_rounds"] == 1
    (zip_path,) = (dev_ledger(run.result) / "results" / server["model_id"]).glob("*.zip")
    summary = read_zip(zip_path).json("run_summary.json")
    assert summary["outcome"] == "completed"
    assert summary["rounds_aggregated"] == 1
    statuses = [record["status"] for record in jsonl(dev_ledger(run.result) / "status.jsonl")]
    assert statuses == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]


def test_an_app_reading_flip_constants_runs(no_global_rounds: tuple[DevRun, tuple[str, ...]]) -> None:
    run, _ = no_global_rounds
    assert "FlipConstants.LOCAL_DEV should be" not in run.result.log_path.read_text()
    assert Path(run.job / "app" / "custom" / "trainer.py").read_text().endswith(FLIP_CONSTANTS_TRAINER)
