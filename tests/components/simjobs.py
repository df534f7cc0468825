"""Build and run the server-widget test jobs in NVFlare's simulator (2 clients, NumPy model).

A job can carry several "FLIP sides": a FlipBackend with its own id plus the full set of server
widgets pointing at it through ``flip_id``. One run with a dev side and a prod side checks both
backends on the same real run (each side has its own session, results folder and hub).
"""

from __future__ import annotations

import json
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flip_emulator.handle import EmulatorHandle, start_emulator
from tests.support.simjob import (
    FLIP_BACKEND,
    NP_LOCATOR,
    JobFolders,
    SimulatorProcess,
    client_config,
    flip_backend,
    numpy_model_components,
    read_jsonl,
    scatter_and_gather,
    server_config,
    write_job,
)

APP_SOURCE = Path(__file__).parent / "jobs" / "flip_widgets_app.py"
CONTROLLERS = "flip_nvflare.controllers"


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
            {"id": self.flip_id, "path": FLIP_BACKEND, "args": backend_args},
            comp("status", "StatusReporter", flip_id=self.flip_id),
            comp("metrics", "MetricsForwarder", flip_id=self.flip_id),
            comp("progress", "ProgressReporter", flip_id=self.flip_id),
            comp("exceptions", "ExceptionForwarder", flip_id=self.flip_id),
            comp("json", generator, results_dir=self.results_dir),
            comp("upload", "ResultsUploader", **uploader),
        ]


@dataclass
class WidgetJob(JobFolders):
    """A FLIP training or evaluation job using the server widgets.

    Attributes:
        root: Folder for the job, its workspace and the client ledgers.
        model_id: The model id written into the server config (as the hub would).
        sides: The FLIP sides of the server.
        evaluation: An evaluation job (InitEvaluation + GlobalModelEval) instead of training
            (InitTraining + ScatterAndGather + CrossSiteModelEval).
        rounds: Global rounds of a training job.
        trainer_args: Extra args of the clients' trainer (flip_widgets_app.WidgetTrainer, run as
            FLIP_TRAINER by flip_nvflare's TrainerRunner).
        server_extras: Extra server components (e.g. AbortAt, HubOutage), placed first.
        client_api_eval: Evaluation jobs: evaluate with a stock NVFlare Client API script.
        controller: Training jobs: ``"sag"`` (ScatterAndGather) or ``"fedavg"`` (FedAvg).
        declare_flip_mode: Write the top-level ``flip_mode`` key (False: a job that forgot it).
    """

    model_id: str
    sides: list[FlipSide]
    evaluation: bool = False
    rounds: int = 2
    trainer_args: dict[str, Any] = field(default_factory=dict)
    server_extras: list[dict[str, Any]] = field(default_factory=list)
    client_api_eval: bool = False
    controller: str = "sag"
    declare_flip_mode: bool = True

    @property
    def ledger_dir(self) -> Path:
        return self.root / "ledgers"

    @property
    def server_run_dir(self) -> Path:
        return self.run_dir("server")

    @property
    def client_mode(self) -> str:
        return "prod" if any(side.mode == "prod" for side in self.sides) else "dev"

    @property
    def eval_model(self) -> Path:
        return self.root / "model_to_evaluate.npy"

    def dev_output(self, side: FlipSide) -> Path:
        return Path(side.flip_args["dev_output_dir"])

    def write(self) -> Path:
        server, client = self._server_config(), self._client_config()
        if not self.declare_flip_mode:
            server.pop("flip_mode")
            client.pop("flip_mode")
        custom: dict[str, str | Path] = {
            APP_SOURCE.name: APP_SOURCE,
            "trainer.py": "from flip_widgets_app import WidgetTrainer as FLIP_TRAINER\n",
        }
        if self.client_api_eval:
            custom["eval_script.py"] = EVAL_SCRIPT
        return write_job(self.job_dir, name="flip_widgets", server=server, client=client, custom=custom)

    def _server_config(self) -> dict[str, Any]:
        components: list[dict[str, Any]] = list(self.server_extras)
        for side in self.sides:
            components += side.components(self.evaluation)
        if self.evaluation:
            import numpy as np

            np.save(self.eval_model, np.full((3, 3), 5.0, dtype=np.float32))
            locator_args = {"model_name": {"server": str(self.eval_model)}}
            components.append({"id": "model_locator", "path": NP_LOCATOR, "args": locator_args})
            workflows = [
                {"id": "init", "path": f"{CONTROLLERS}.InitEvaluation", "args": {"min_clients": "{min_clients}"}},
                {
                    "id": "evaluate",
                    "path": "nvflare.app_common.workflows.global_model_eval.GlobalModelEval",
                    "args": {"model_locator_id": "model_locator", "validation_task_name": "evaluate"},
                },
            ]
        else:
            components += [
                *numpy_model_components("WEIGHTS"),
                {"id": "model_locator", "path": NP_LOCATOR, "args": {}},
            ]
            training = {
                "sag": scatter_and_gather(ignore_result_error=False),
                "fedavg": {
                    "id": "fedavg",
                    "path": "nvflare.app_common.workflows.fedavg.FedAvg",
                    "args": {
                        "num_clients": "{min_clients}",
                        "num_rounds": "{global_rounds}",
                        "persistor_id": "persistor",
                        "ignore_result_error": False,
                    },
                },
            }[self.controller]
            workflows = [
                {"id": "init", "path": f"{CONTROLLERS}.InitTraining", "args": {"min_clients": "{min_clients}"}},
                training,
                {
                    "id": "cross_site_validate",
                    "path": "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval",
                    "args": {"model_locator_id": "model_locator", "submit_model_task_name": ""},
                },
            ]
        return server_config(
            self.client_mode, rounds=self.rounds, components=components, workflows=workflows, model_id=self.model_id
        )

    def _client_config(self) -> dict[str, Any]:
        helper = ["init_task", "post_task"] if self.evaluation else ["init_training", "validate", "post_validation"]
        executors: list[dict[str, Any]] = [
            {
                "tasks": ["train"],
                "executor": {
                    "path": "flip_nvflare.executors.TrainerRunner",
                    "args": {"app_args": {"ledger_dir": str(self.ledger_dir), **self.trainer_args}},
                },
            }
        ]
        if self.client_api_eval:
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
            helper.append("evaluate")
        executors.append({"tasks": helper, "executor": {"path": "flip_widgets_app.WidgetTestExecutor"}})
        return client_config(
            self.client_mode,
            executors=executors,
            components=[
                flip_backend(mode="{flip_mode}"),
                {"id": "analytics_sender", "path": "nvflare.app_common.widgets.streaming.AnalyticsSender"},
                {
                    "id": "event_to_fed",
                    "path": "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent",
                    "args": {"events_to_convert": ["analytix_log_stats"]},
                },
            ],
        )

    def run(self, env: Mapping[str, str | None] | None = None, timeout: float = 900) -> RunResult:
        """Write the job, run it in the simulator (in a subprocess) and return what happened.

        ``env`` is set for the run (a ``None`` value unsets the variable).
        """
        return start_run(self, env or {}).wait(timeout)


#: A stock NVFlare Client API evaluation script: no FLIP code, metrics through SummaryWriter.
EVAL_SCRIPT = """
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
"""


class RunningJob:
    """A WidgetJob running in the simulator in a subprocess (so several can run at once)."""

    def __init__(self, job: WidgetJob, env: Mapping[str, str | None]) -> None:
        job.write()
        self.job = job
        self._started = time.monotonic()
        self._process = SimulatorProcess(job.job_dir, job.workspace, job.root / "simulator.log", env)

    def wait(self, timeout: float) -> RunResult:
        """Wait for the run to end (killing it after ``timeout`` seconds) and return its result."""
        code = self._process.wait(timeout)
        return RunResult(self.job, code, time.monotonic() - self._started)

    def kill(self) -> None:
        self._process.kill()


def start_run(job: WidgetJob, env: Mapping[str, str | None]) -> RunningJob:
    """Start ``job`` in the simulator in a subprocess."""
    return RunningJob(job, env)


# ---------------------------------------------------------------------- runs shared by a test session
#
# The e2e modules plan their run with ``@planned_run(...)``; the session fixture ``widget_runs``
# (conftest.py) starts the runs of every selected module at once, a few in parallel (a simulator run
# mostly waits), and each module's fixture takes its result.


@dataclass
class PlannedRun:
    """A run to start: the job, its environment, and what the module's tests need about it."""

    job: WidgetJob
    env: Mapping[str, str | None]
    data: dict[str, Any] = field(default_factory=dict)


class PlanContext:
    """What a plan gets: temporary folders, the shared H2 hub, a way to keep resources for the session."""

    def __init__(self, tmp_path_factory: Any, stack: ExitStack) -> None:
        self._tmp = tmp_path_factory
        self._stack = stack
        self._hub: EmulatorHandle | None = None

    def tmp(self, name: str) -> Path:
        return Path(self._tmp.mktemp(name))

    @property
    def hub(self) -> EmulatorHandle:
        """The shared emulator (H2 hub, moto S3), started on first use."""
        if self._hub is None:
            self._hub = self.keep(start_emulator(self.tmp("widgets-emulator"), hub_api="h2"))
        return self._hub

    def keep(self, context: Any) -> Any:
        """Enter a context manager that lives until the end of the session."""
        return self._stack.enter_context(context)


PlanFactory = Callable[[PlanContext], PlannedRun]
#: name -> (module, expected seconds, factory); filled when the test modules are collected.
PLANS: dict[str, tuple[str, float, PlanFactory]] = {}


def planned_run(name: str, seconds: float) -> Callable[[PlanFactory], PlanFactory]:
    """Register a module's run; ``seconds`` (its rough length) orders the start, longest first."""

    def register(factory: PlanFactory) -> PlanFactory:
        PLANS[name] = (factory.__module__, seconds, factory)
        return factory

    return register


class RunPool:
    """Starts planned runs in subprocesses, at most ``max_parallel`` at once, longest first."""

    def __init__(self, max_parallel: int = 3) -> None:
        self._slots = threading.Semaphore(max_parallel)
        self._plans: dict[str, PlannedRun] = {}
        self._done: dict[str, RunResult | BaseException] = {}
        self._events: dict[str, threading.Event] = {}
        self._running: list[RunningJob] = []
        self._lock = threading.Lock()

    def start(self, plans: list[tuple[str, PlannedRun]]) -> None:
        for name, plan in plans:
            self._plans[name] = plan
            self._events[name] = threading.Event()
        threading.Thread(target=self._schedule, args=(plans,), daemon=True).start()

    def _schedule(self, plans: list[tuple[str, PlannedRun]]) -> None:
        for name, plan in plans:
            self._slots.acquire()
            threading.Thread(target=self._run, args=(name, plan), daemon=True).start()

    def _run(self, name: str, plan: PlannedRun) -> None:
        try:
            running = start_run(plan.job, plan.env)
            with self._lock:
                self._running.append(running)
            self._done[name] = running.wait(timeout=900)
        except BaseException as exc:  # handed to the test that asks for this run
            self._done[name] = exc
        finally:
            self._slots.release()
            self._events[name].set()

    def result(self, name: str, timeout: float = 1200) -> tuple[PlannedRun, RunResult]:
        if name not in self._events:
            raise KeyError(f"run {name!r} was not planned for this session")
        if not self._events[name].wait(timeout):
            raise TimeoutError(f"run {name!r} did not finish within {timeout:g} s")
        outcome = self._done[name]
        if isinstance(outcome, BaseException):
            raise outcome
        return self._plans[name], outcome

    def close(self) -> None:
        with self._lock:
            running = list(self._running)
        for job in running:
            job.kill()


@dataclass
class RunResult:
    """A finished simulator run of a WidgetJob."""

    job: WidgetJob
    return_code: int
    seconds: float

    def server_log(self) -> str:
        return self.job.log("server")

    def simulator_output(self) -> str:
        return (self.job.root / "simulator.log").read_text(errors="replace")

    def client_metrics(self) -> list[dict[str, Any]]:
        """Every valid metric the clients sent, from their ledgers."""
        return [record for path in sorted(self.job.ledger_dir.glob("*.jsonl")) for record in read_jsonl(path)]

    def dev_ledger(self, side: FlipSide, name: str) -> list[dict[str, Any]]:
        return read_jsonl(self.job.dev_output(side) / name)

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


def dual_sides(root: Path) -> tuple[FlipSide, FlipSide]:
    """A dev side (first; keeps every file so the prod side finds them) and a prod side."""
    dev = FlipSide("flip_dev", "dev", {"dev_output_dir": str(root / "dev_output")}, remove_after_upload=[])
    prod = FlipSide("flip", "prod")
    return dev, prod


@dataclass
class DualRun:
    """A finished run that reported to a dev ledger (``dev``) and to the shared emulated hub (``prod``)."""

    result: RunResult
    hub: EmulatorHandle
    model_id: str
    dev: FlipSide
    prod: FlipSide
    root: Path


def plan_dual_run(ctx: PlanContext, name: str, **job_args: Any) -> PlannedRun:
    """Plan a WidgetJob named ``name`` with a dev and a prod side, for a model linked to two trusts."""
    root = ctx.tmp(name)
    model = ctx.hub.register_model(trusts=("Trust_1", "Trust_2"))
    dev, prod = dual_sides(root)
    job = WidgetJob(root=root, model_id=model.model_id, sides=[dev, prod], **job_args)
    data = {"hub": ctx.hub, "model_id": model.model_id, "dev": dev, "prod": prod, "root": root}
    return PlannedRun(job, ctx.hub.env(), data)


def dual_run(pool: RunPool, name: str) -> DualRun:
    """The finished run planned as ``name`` by :func:`plan_dual_run`."""
    planned, result = pool.result(name)
    return DualRun(result=result, **planned.data)


def download_results(env: dict[str, str], key: str, destination: Path) -> Path:
    """Download one results zip from the emulator's S3."""
    import boto3

    bucket = env["UPLOADED_FEDERATED_DATA_BUCKET"].removeprefix("s3://").split("/", 1)[0]
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    destination.parent.mkdir(parents=True, exist_ok=True)
    client.download_file(bucket, key, str(destination))
    return destination


def metric_key(record: dict[str, Any], client_field: str = "site") -> tuple[Any, ...]:
    """What identifies a metric, from a client ledger line (``site``) or a hub record (``fl_client_name``)."""
    x_value = record.get("x_value")
    value = record["value"] if "value" in record else record["result"]
    return (
        record[client_field],
        record["label"],
        record["round"] if "round" in record else record["global_round"],
        round(float(value), 9),
        None if x_value is None else float(x_value),
        record.get("x_label"),
    )
