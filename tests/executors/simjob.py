"""Build small FLIP jobs (dev or prod mode) and run them in NVFlare's simulator, for the e2e tests.

The jobs use a NumPy model (no PyTorch) so a 2-client, 2-round run takes seconds. A server-side
``EventRecorder`` (written into the job's custom folder) appends what the tests need to check to
a JSON-lines file: every client result (task, return code, ``exception`` header) and every FLIP
event with its props. The run is in this process (:func:`tests.support.simjob.run_simulator`).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.simjob import (
    JobFolders,
    client_config,
    flip_backend,
    numpy_model_components,
    read_jsonl,
    run_simulator,
    scatter_and_gather,
    server_config,
    write_job,
)

RECORDER = textwrap.dedent(
    """
    import json
    import threading

    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_component import FLComponent
    from nvflare.apis.fl_constant import FLContextKey, ReturnCode

    from flip_nvflare.constants import FlipEvents, FlipProps

    _PROPS = (
        FlipProps.PREPARATION_TARGETS,
        FlipProps.PREPARATION_FAILED_CLIENT,
        FlipProps.PREPARATION_FAILURE,
        FlipProps.PREPARATION_SUMMARY,
    )
    _FLIP_EVENTS = (FlipEvents.TRAINING_INITIATED, FlipEvents.PREPARATION_DONE, FlipEvents.PREPARATION_FAILED)


    class EventRecorder(FLComponent):
        def __init__(self, path):
            super().__init__()
            self._path = path
            self._lock = threading.Lock()

        def _write(self, record):
            with self._lock, open(self._path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=str) + "\\n")

        def handle_event(self, event_type, fl_ctx):
            if event_type == EventType.BEFORE_PROCESS_SUBMISSION:
                result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
                peer = fl_ctx.get_peer_context()
                self._write({
                    "kind": "result",
                    "client": peer.get_identity_name() if peer else None,
                    "task": fl_ctx.get_prop(FLContextKey.TASK_NAME),
                    "rc": result.get_return_code(ReturnCode.OK) if result is not None else None,
                    "exception": result.get_header("exception") if result is not None else None,
                    "headers": {k: v for k, v in (result.get("__headers__") or {}).items() if k.startswith("flip_")}
                    if result is not None else {},
                })
            elif event_type in _FLIP_EVENTS:
                props = {p: fl_ctx.get_prop(p) for p in _PROPS}
                data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
                self._write({"kind": "event", "event": event_type, "props": props, "data": data})
            elif event_type == EventType.FATAL_SYSTEM_ERROR:
                self._write({"kind": "panic", "reason": fl_ctx.get_prop(FLContextKey.EVENT_DATA)})
    """
)


@dataclass
class SimJob(JobFolders):
    """One FLIP job folder to run in the simulator.

    Attributes:
        root: Where the job folder and the workspace go.
        mode: ``dev`` or ``prod``.
        client_executors: The client config's ``executors`` list.
        workflows: The server config's ``workflows``; default InitTraining, ScatterAndGather, CleanupClients.
        custom_files: Extra files of the app's ``custom/`` folder (name -> source).
        flip_args: Extra args of the FlipBackend component (both sides).
        rounds: Global rounds of ScatterAndGather.
        client_vars: Extra top-level keys of the client config.
    """

    mode: str
    client_executors: list[dict[str, Any]]
    workflows: list[dict[str, Any]] | None = None
    custom_files: dict[str, str] = field(default_factory=dict)
    flip_args: dict[str, Any] = field(default_factory=dict)
    rounds: int = 2
    client_vars: dict[str, Any] = field(default_factory=dict)

    @property
    def record_file(self) -> Path:
        return self.root / "records.jsonl"

    def write(self) -> Path:
        flip = flip_backend(mode="{flip_mode}", **self.flip_args)
        client = client_config(
            self.mode,
            executors=self.client_executors,
            components=[flip],
            **{
                "project_id": "encrypted-project-envelope-0001",
                "query": "SELECT person_id, accession_id FROM omop.person WHERE year_of_birth > 1950",
                **self.client_vars,
            },
        )
        recorder = {"id": "recorder", "path": "recorder.EventRecorder", "args": {"path": str(self.record_file)}}
        server = server_config(
            self.mode,
            rounds=self.rounds,
            components=[flip, *numpy_model_components("WEIGHT_DIFF"), recorder],
            workflows=self.workflows if self.workflows is not None else default_workflows(),
        )
        custom = {"recorder.py": RECORDER, **self.custom_files}
        return write_job(self.job_dir, name="flip_test", server=server, client=client, custom=custom)

    def run(self) -> int:
        self.write()
        return run_simulator(self.job_dir, self.workspace)

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.record_file)

    def results(self, task: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["kind"] == "result" and r["task"] == task]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["kind"] == "event" and r["event"] == event]


def default_workflows(init: str = "InitTraining", post_task: str = "post_validation") -> list[dict[str, Any]]:
    return [
        {"id": "init", "path": f"flip_nvflare.controllers.{init}", "args": {"min_clients": "{min_clients}"}},
        scatter_and_gather(
            start_round=0,
            aggregator_id="aggregator",
            shareable_generator_id="shareable_generator",
            train_task_name="train",
            train_timeout=0,
        ),
        {"id": "cleanup", "path": "flip_nvflare.controllers.CleanupClients", "args": {"task_name": post_task}},
    ]


def standard_executors(**preparer_args: Any) -> list[dict[str, Any]]:
    """CohortPreparer on init_training, TrainerRunner on train, ImageCleanup on post_validation."""
    return [
        {
            "tasks": ["init_training"],
            "executor": {
                "path": "flip_nvflare.executors.CohortPreparer",
                "args": {"project_id": "{project_id}", "query": "{query}", **preparer_args},
            },
        },
        {
            "tasks": ["train", "submit_model"],
            "executor": {
                "path": "flip_nvflare.executors.TrainerRunner",
                "args": {"project_id": "{project_id}", "query": "{query}"},
            },
        },
        {"tasks": ["post_validation"], "executor": {"path": "flip_nvflare.executors.ImageCleanup"}},
    ]


#: A trainer written the FLIP way: an NVFlare Executor using FLIP(), the prepared cohort and the helpers.
FLIP_STYLE_TRAINER = """
import json
from pathlib import Path

from nvflare.apis.dxo import from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import make_reply
from nvflare.app_common.app_constant import AppConstants

from flip_nvflare import FLIP, get_model_weights_diff, prepared_cohort, send_metrics_value


class FLIP_TRAINER(Executor):
    def __init__(self, train_task_name=AppConstants.TASK_TRAIN, submit_model_task_name="submit_model",
                 exclude_vars=None, project_id="", query="", flip=None):
        super().__init__()
        self._train_task_name = train_task_name
        self.project_id = project_id
        self.query = query
        self.flip = FLIP()
        self.flip_arg = flip
        self.cohort_at_init = len(prepared_cohort().dataframe)

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        if task_name != self._train_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        cohort = prepared_cohort(fl_ctx)
        files = sum(1 for folder in cohort.folders.values() for p in folder.rglob("*") if p.is_file())
        dxo = from_shareable(shareable)
        new_weights = {k: v + 1.0 for k, v in dxo.data.items()}
        run_dir = Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()))
        evidence = {
            "site": fl_ctx.get_identity_name(),
            "backend": type(self.flip).__name__,
            "flip_arg_is_backend": self.flip_arg is self.flip,
            "project_id": self.project_id,
            "query": self.query,
            "rows_at_init": self.cohort_at_init,
            "rows": len(cohort.dataframe),
            "ready": len(cohort.folders),
            "missing": len(cohort.missing),
            "ready_rows": len(cohort.ready_dataframe()),
            "files": files,
        }
        with open(run_dir / "trainer_evidence.jsonl", "a") as fh:
            fh.write(json.dumps(evidence) + "\\n")
        send_metrics_value("LOSS_FUNCTION", 0.25, fl_ctx)
        return get_model_weights_diff(dxo.data, new_weights, 10).to_shareable()
"""
