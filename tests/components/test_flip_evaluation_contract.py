"""FLIP's evaluation contract in the simulator, dev and prod sides in one run each.

The job is flip_evaluation's shape (InitEvaluation, EvaluateModels, CheckpointModelLocator, the
evaluation widgets). Two runs:

- an evaluator written as FLIP's are (one task, a COLLECTION of every model, read by name; metrics
  keyed by model name, nested groups) that reads ``FlipConstants.LOCAL_DEV`` (prod clients: False);
- an evaluator that reads one model's WEIGHTS per call (the runner hands them one at a time) and
  fails on every model: the run ends ERROR, and the results still record each failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.components.simjobs import (
    APP_SOURCE,
    CONTROLLERS,
    DualRun,
    PlanContext,
    PlannedRun,
    RunPool,
    WidgetJob,
    download_results,
    dual_run,
    dual_sides,
    planned_run,
    zip_json,
)
from tests.support.simjob import client_config, flip_backend, server_config, write_job

pytestmark = pytest.mark.e2e

MODELS = {"alpha": 1.0, "beta": 3.0}

FLIP_STYLE_EVALUATOR = """
import json
from pathlib import Path

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import make_reply

from flip_nvflare import FLIP
from flip_nvflare.constants import FlipConstants, PTConstants, ResourceType


class FLIP_EVALUATOR(Executor):
    def __init__(self, evaluate_task_name=PTConstants.EvalTaskName, project_id="", query=""):
        super().__init__()
        self._task = evaluate_task_name
        self.flip = FLIP()
        self.resource = ResourceType.SEGMENTATION
        with open(Path(__file__).parent / "config.json") as f:
            self.models = list(json.load(f)["models"])

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        if task_name != self._task:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        dxo = from_shareable(shareable)
        results = {}
        for name in self.models:
            model = dxo.data.get(name)
            if not model.data_kind == DataKind.WEIGHTS:
                return make_reply(ReturnCode.BAD_TASK_DATA)
            mean = float(np.mean([np.mean(v) for v in model.data.values()]))
            results[name] = {"lesion": {"mean_weight": mean}, "local_dev": int(FlipConstants.LOCAL_DEV)}
        return DXO(data_kind=DataKind.METRICS, data=results).to_shareable()
"""

FAILING_PER_MODEL_EVALUATOR = """
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import make_reply
from nvflare.app_common.app_constant import AppConstants


class FLIP_EVALUATOR(Executor):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        assert dxo.get_meta_prop("model_name") == shareable.get_header(AppConstants.MODEL_OWNER)
        raise RuntimeError("cannot evaluate " + shareable.get_header(AppConstants.MODEL_OWNER))
"""


@dataclass
class ContractEvalJob(WidgetJob):
    """An evaluation job of flip_evaluation's shape, with the given evaluator."""

    evaluator: str = ""

    def write(self) -> Path:
        import torch

        checkpoints = self.root / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        for name, value in MODELS.items():
            torch.save({"w": torch.full((2, 2), value)}, checkpoints / f"{name}.pt")
        components: list[dict[str, Any]] = []
        for side in self.sides:
            components += side.components(evaluation=True)
            components.append(
                {
                    "id": f"evaluation_reporter_{side.flip_id}",
                    "path": "flip_nvflare.components.EvaluationReporter",
                    "args": {"flip_id": side.flip_id, "results_dir": side.results_dir},
                }
            )
        components.append(
            {
                "id": "model_locator",
                "path": "flip_nvflare.locators.CheckpointModelLocator",
                "args": {"checkpoint_dir": str(checkpoints)},
            }
        )
        workflows = [
            {"id": "init", "path": f"{CONTROLLERS}.InitEvaluation", "args": {"min_clients": "{min_clients}"}},
            {"id": "evaluation", "path": f"{CONTROLLERS}.EvaluateModels", "args": {}},
        ]
        server = server_config(
            self.client_mode, rounds=1, components=components, workflows=workflows, model_id=self.model_id
        )
        client = client_config(
            self.client_mode,
            executors=[
                {"tasks": ["evaluate"], "executor": {"path": "flip_nvflare.executors.EvaluatorRunner"}},
                {"tasks": ["init_task", "post_task"], "executor": {"path": "flip_widgets_app.WidgetTestExecutor"}},
            ],
            components=[flip_backend(mode="{flip_mode}")],
        )
        config = '{"models": {"alpha": {"checkpoint": "alpha.pt"}, "beta": {"checkpoint": "beta.pt"}}}'
        custom: dict[str, str | Path] = {
            APP_SOURCE.name: APP_SOURCE,
            "evaluator.py": self.evaluator,
            "config.json": config,
        }
        return write_job(self.job_dir, name="flip_contract", server=server, client=client, custom=custom)


def _plan(ctx: PlanContext, name: str, evaluator: str) -> PlannedRun:
    root = ctx.tmp(name)
    model = ctx.hub.register_model(trusts=("Trust_1", "Trust_2"))
    dev, prod = dual_sides(root)
    job = ContractEvalJob(root=root, model_id=model.model_id, sides=[dev, prod], evaluation=True, evaluator=evaluator)
    data = {"hub": ctx.hub, "model_id": model.model_id, "dev": dev, "prod": prod, "root": root}
    return PlannedRun(job, ctx.hub.env(), data)


@planned_run("flip-shape-evaluation", seconds=25)
def plan_flip_shape(ctx: PlanContext) -> PlannedRun:
    return _plan(ctx, "flip-shape-evaluation", FLIP_STYLE_EVALUATOR)


@planned_run("all-failed-evaluation", seconds=25)
def plan_all_failed(ctx: PlanContext) -> PlannedRun:
    return _plan(ctx, "all-failed-evaluation", FAILING_PER_MODEL_EVALUATOR)


@pytest.fixture(scope="module")
def flip_shape(widget_runs: RunPool) -> DualRun:
    return dual_run(widget_runs, "flip-shape-evaluation")


@pytest.fixture(scope="module")
def all_failed(widget_runs: RunPool) -> DualRun:
    return dual_run(widget_runs, "all-failed-evaluation")


def _zips(run: DualRun) -> list[Path]:
    (key,) = run.hub.results(run.model_id)
    return [download_results(run.hub.env(), key, run.root / "downloaded.zip"), *run.result.dev_zips(run.dev)]


def test_a_flip_evaluator_gets_every_model_in_one_task_and_its_metrics_are_recorded(flip_shape: DualRun) -> None:
    assert flip_shape.result.return_code == 0, flip_shape.result.server_log()[-3000:]
    expected = {
        name: {"lesion": {"mean_weight": value}, "local_dev": 0}  # prod clients: FlipConstants.LOCAL_DEV is False
        for name, value in MODELS.items()
    }
    for path in _zips(flip_shape):
        assert zip_json(path, "evaluation_results.json") == {"site-1": expected, "site-2": expected}
        assert zip_json(path, "evaluation_failures.json") == []
    records = flip_shape.hub.records(flip_shape.model_id)
    assert records.status_names() == ["INITIATED", "PREPARED", "RUNNING", "RESULTS_UPLOADED"]
    dev = [r["status"] for r in flip_shape.result.dev_ledger(flip_shape.dev, "status.jsonl")]
    assert dev == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]
    sent = {(m.trust, m.label): m.result for m in records.metrics}
    for trust in ("Trust_1", "Trust_2"):
        assert sent[(trust, "alpha/lesion/mean_weight")] == 1.0
        assert sent[(trust, "beta/lesion/mean_weight")] == 3.0
        assert sent[(trust, "beta/local_dev")] == 0.0


def test_when_every_evaluation_fails_the_run_ends_error_and_each_failure_is_recorded(all_failed: DualRun) -> None:
    assert all_failed.result.return_code == 0, all_failed.result.server_log()[-3000:]
    records = all_failed.hub.records(all_failed.model_id)
    assert records.status_names() == ["INITIATED", "PREPARED", "RUNNING", "ERROR"]
    dev = [r["status"] for r in all_failed.result.dev_ledger(all_failed.dev, "status.jsonl")]
    assert dev == ["INITIATED", "PREPARED", "TRAINING_STARTED", "ERROR"]
    failed = {"alpha": {"error": "EXECUTION_EXCEPTION"}, "beta": {"error": "EXECUTION_EXCEPTION"}}
    for path in _zips(all_failed):
        assert zip_json(path, "evaluation_results.json") == {"site-1": failed, "site-2": failed}
        failures = zip_json(path, "evaluation_failures.json")
        assert {(f["site"], f["model"], f["reason"]) for f in failures} == {
            (site, model, "EXECUTION_EXCEPTION") for site in ("site-1", "site-2") for model in MODELS
        }
    logs = [log.log for log in records.logs if log.log]
    assert len(logs) == 2 and all("cannot evaluate alpha" in log and "cannot evaluate beta" in log for log in logs)
    assert "gets them one at a time" in "\n".join(all_failed.result.job.log(site) for site in ("site-1", "site-2"))
