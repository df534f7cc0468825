"""Build and run the server-widget test jobs in NVFlare's simulator (2 clients, NumPy model).

A job can carry several "FLIP sides": a FlipBackend with its own id plus the full set of server
widgets pointing at it through ``flip_id``. One run with a dev side and a prod side checks both
backends on the same real run (each side has its own session, results folder and hub).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APP_SOURCE = Path(__file__).parent / "jobs" / "flip_widgets_app.py"
NP_PERSISTOR = "nvflare.app_common.np.np_model_persistor.NPModelPersistor"
NP_LOCATOR = "nvflare.app_common.np.np_model_locator.NPModelLocator"


@dataclass
class FlipSide:
    """One FlipBackend and the server widgets that use it."""

    flip_id: str
    mode: str
    flip_args: dict[str, Any] = field(default_factory=dict)
    remove_after_upload: list[str] | None = None
    include: list[str] | None = None

    @property
    def results_dir(self) -> str:
        return f"flip_results_{self.flip_id}"

    def components(self, evaluation: bool) -> list[dict[str, Any]]:
        def comp(kind: str, cls: str, **args: Any) -> dict[str, Any]:
            return {"id": f"{kind}_{self.flip_id}", "path": f"flip_nvflare.components.{cls}", "args": args}

        backend_args = {"mode": self.mode, "model_id": "{model_id}", **self.flip_args}
        uploader: dict[str, Any] = {"flip_id": self.flip_id, "results_dir": self.results_dir}
        if self.remove_after_upload is not None:
            uploader["remove_after_upload"] = self.remove_after_upload
        if self.include is not None:
            uploader["include"] = self.include
        generator = "EvaluationJsonGenerator" if evaluation else "ValidationJsonGenerator"
        return [
            {"id": self.flip_id, "path": "flip_nvflare.components.FlipBackend", "args": backend_args},
            comp("status", "StatusReporter", flip_id=self.flip_id),
            comp("metrics", "MetricsForwarder", flip_id=self.flip_id),
            comp("progress", "ProgressReporter", flip_id=self.flip_id),
            comp("exceptions", "ExceptionForwarder", flip_id=self.flip_id),
            comp("json", generator, results_dir=self.results_dir),
            comp("upload", "ResultsUploader", **uploader),
        ]


@dataclass
class WidgetJob:
    """A FLIP training or evaluation job using the server widgets.

    Attributes:
        root: Folder for the job, its workspace and the client ledgers.
        model_id: The model id written into the server config (as the hub would).
        sides: The FLIP sides of the server.
        evaluation: An evaluation job (InitEvaluation + GlobalModelEval) instead of training
            (InitTraining + ScatterAndGather + CrossSiteModelEval).
        rounds: Global rounds of a training job.
        executor_args: Extra args of the clients' WidgetTestExecutor.
        server_extras: Extra server components (e.g. AbortAt, HubOutage), placed first.
        client_api_eval: Evaluation jobs: evaluate with a stock NVFlare Client API script.
    """

    root: Path
    model_id: str
    sides: list[FlipSide]
    evaluation: bool = False
    rounds: int = 2
    executor_args: dict[str, Any] = field(default_factory=dict)
    server_extras: list[dict[str, Any]] = field(default_factory=list)
    client_api_eval: bool = False

    @property
    def job_dir(self) -> Path:
        return self.root / "job"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def ledger_dir(self) -> Path:
        return self.root / "ledgers"

    @property
    def server_run_dir(self) -> Path:
        return self.workspace / "server" / "simulate_job"

    @property
    def eval_model(self) -> Path:
        return self.root / "model_to_evaluate.npy"

    def dev_output(self, side: FlipSide) -> Path:
        return Path(side.flip_args["dev_output_dir"])

    def write(self) -> Path:
        app = self.job_dir / "app"
        (app / "config").mkdir(parents=True, exist_ok=True)
        (app / "custom").mkdir(parents=True, exist_ok=True)
        shutil.copy(APP_SOURCE, app / "custom" / APP_SOURCE.name)
        meta = {"name": "flip_widgets", "resource_spec": {}, "deploy_map": {"app": ["@ALL"]}, "min_clients": 2}
        (self.job_dir / "meta.json").write_text(json.dumps(meta))
        (app / "config" / "config_fed_server.json").write_text(json.dumps(self._server_config(), indent=1))
        (app / "config" / "config_fed_client.json").write_text(json.dumps(self._client_config(), indent=1))
        return self.job_dir

    def _server_config(self) -> dict[str, Any]:
        components: list[dict[str, Any]] = list(self.server_extras)
        for side in self.sides:
            components += side.components(self.evaluation)
        if self.evaluation:
            import numpy as np

            np.save(self.eval_model, np.full((3, 3), 5.0, dtype=np.float32))
            components.append({"id": "model_locator", "path": NP_LOCATOR, "args": {"model_name": {"server": str(self.eval_model)}}})
            workflows = [
                {"id": "init", "path": "flip_nvflare.controllers.InitEvaluation", "args": {"min_clients": "{min_clients}"}},
                {
                    "id": "evaluate",
                    "path": "nvflare.app_common.workflows.global_model_eval.GlobalModelEval",
                    "args": {"model_locator_id": "model_locator", "validation_task_name": "evaluate"},
                },
            ]
        else:
            components += [
                {"id": "persistor", "path": NP_PERSISTOR, "args": {}},
                {
                    "id": "shareable_generator",
                    "path": "nvflare.app_common.shareablegenerators.full_model_shareable_generator."
                    "FullModelShareableGenerator",
                },
                {
                    "id": "aggregator",
                    "path": "nvflare.app_common.aggregators.intime_accumulate_model_aggregator."
                    "InTimeAccumulateWeightedAggregator",
                    "args": {"expected_data_kind": "WEIGHTS"},
                },
                {"id": "model_locator", "path": NP_LOCATOR, "args": {}},
            ]
            workflows = [
                {"id": "init", "path": "flip_nvflare.controllers.InitTraining", "args": {"min_clients": "{min_clients}"}},
                {
                    "id": "sag",
                    "path": "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather",
                    "args": {
                        "min_clients": "{min_clients}",
                        "num_rounds": "{global_rounds}",
                        "wait_time_after_min_received": 0,
                        "persistor_id": "persistor",
                        "ignore_result_error": False,
                    },
                },
                {
                    "id": "cross_site_validate",
                    "path": "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval",
                    "args": {"model_locator_id": "model_locator", "submit_model_task_name": ""},
                },
            ]
        return {
            "format_version": 2,
            "flip_mode": self.sides[0].mode,
            "model_id": self.model_id,
            "min_clients": 2,
            "global_rounds": self.rounds,
            "server": {"task_request_interval": 0.2},
            "task_data_filters": [],
            "task_result_filters": [],
            "components": components,
            "workflows": workflows,
        }

    def _client_config(self) -> dict[str, Any]:
        executor = {
            "path": "flip_widgets_app.WidgetTestExecutor",
            "args": {"ledger_dir": str(self.ledger_dir), **self.executor_args},
        }
        executors: list[dict[str, Any]] = []
        tasks = ["init_task", "train", "validate", "post_task"] if self.evaluation else [
            "init_training", "train", "validate", "post_validation"
        ]
        if self.client_api_eval:
            tasks = [t for t in tasks if t != "evaluate"]
            executors.append(
                {
                    "tasks": ["evaluate"],
                    "executor": {
                        "path": "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor",
                        "args": {
                            "execution_mode": "in_process",
                            "task_script_path": "eval_script.py",
                            "evaluate_task_name": "evaluate",
                            "params_exchange_format": "numpy",
                        },
                    },
                }
            )
        elif self.evaluation:
            tasks.append("evaluate")
        executors.append({"tasks": tasks, "executor": executor})
        return {
            "format_version": 2,
            "flip_mode": self.sides[0].mode,
            "executors": executors,
            "task_result_filters": [],
            "task_data_filters": [],
            "components": [
                {"id": "analytics_sender", "path": "nvflare.app_common.widgets.streaming.AnalyticsSender"},
                {
                    "id": "event_to_fed",
                    "path": "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent",
                    "args": {"events_to_convert": ["analytix_log_stats"]},
                },
            ],
        }

    def run(self, env: dict[str, str] | None = None) -> "RunResult":
        """Write the job, run it in the simulator (with ``env`` set) and return what happened."""
        from nvflare.private.fed.app.simulator.simulator_runner import SimulatorRunner

        self.write()
        if self.client_api_eval:
            (self.job_dir / "app" / "custom" / "eval_script.py").write_text(EVAL_SCRIPT)
        started = time.monotonic()
        with _environment(env or {}):
            runner = SimulatorRunner(
                job_folder=str(self.job_dir), workspace=str(self.workspace), n_clients=2, threads=2
            )
            code = int(runner.run())
        return RunResult(self, code, time.monotonic() - started)


#: A stock NVFlare Client API evaluation script: no FLIP code, metrics through SummaryWriter.
EVAL_SCRIPT = '''
import numpy as np

import nvflare.client as flare
from nvflare.client.tracking import SummaryWriter

flare.init()
writer = SummaryWriter()
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    mean = float(np.mean(next(iter(model.params.values()))))
    for batch in range(3):
        writer.add_scalar("eval_loss@batch", 1.0 / (batch + 1), global_step=batch)
    writer.add_scalar("accuracy", mean / 10.0)
    flare.send(flare.FLModel(metrics={"accuracy": mean / 10.0}))
'''


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class RunResult:
    """A finished simulator run of a WidgetJob."""

    job: WidgetJob
    return_code: int
    seconds: float

    def server_log(self) -> str:
        logs = sorted((self.job.workspace / "server").rglob("log.txt"))
        return "\n".join(p.read_text(errors="replace") for p in logs)

    def client_metrics(self) -> list[dict[str, Any]]:
        """Every valid metric the clients sent, from their ledgers."""
        records = []
        for path in sorted(self.job.ledger_dir.glob("*.jsonl")):
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return records

    def dev_ledger(self, side: FlipSide, name: str) -> list[dict[str, Any]]:
        path = self.job.dev_output(side) / name
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def dev_zips(self, side: FlipSide) -> list[Path]:
        return sorted((self.job.dev_output(side) / "results").rglob("*.zip"))

    def results_folder(self, side: FlipSide) -> Path:
        return self.job.server_run_dir / side.results_dir


def zip_names(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as zf:
        return set(zf.namelist())


def zip_json(path: Path, name: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(name))
