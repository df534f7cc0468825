"""Write NVFlare job folders and run them in the simulator (2 clients): what every simulator test shares.

A job folder holds ``meta.json`` and one app, ``app``, deployed to every site:
``app/config/config_fed_server.json``, ``app/config/config_fed_client.json`` and the ``app/custom``
files. The builders here make the parts both kinds of test job use (the config skeletons, the
NumPy model components, ScatterAndGather); :class:`JobFolders` says where the job and the
simulator's workspace are and reads what a run left there.

Run as ``python -m tests.support.simjob JOB_FOLDER WORKSPACE`` it runs a job in the simulator
and exits with the simulator's return code (see :class:`SimulatorProcess`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 2
NP_PERSISTOR = "nvflare.app_common.np.np_model_persistor.NPModelPersistor"
NP_LOCATOR = "nvflare.app_common.np.np_model_locator.NPModelLocator"
SHAREABLE_GENERATOR = (
    "nvflare.app_common.shareablegenerators.full_model_shareable_generator.FullModelShareableGenerator"
)
AGGREGATOR = "nvflare.app_common.aggregators.intime_accumulate_model_aggregator.InTimeAccumulateWeightedAggregator"
SCATTER_AND_GATHER = "nvflare.app_common.workflows.scatter_and_gather.ScatterAndGather"
FLIP_BACKEND = "flip_nvflare.backend.FlipBackend"


def server_config(
    flip_mode: str,
    *,
    rounds: int,
    components: list[dict[str, Any]],
    workflows: list[dict[str, Any]],
    **top: Any,
) -> dict[str, Any]:
    """A server config for 2 clients, quick task polling, no filters; ``top`` adds top-level keys."""
    return {
        "format_version": 2,
        "flip_mode": flip_mode,
        **top,
        "min_clients": CLIENTS,
        "global_rounds": rounds,
        "server": {"task_request_interval": 0.2},
        "task_data_filters": [],
        "task_result_filters": [],
        "components": components,
        "workflows": workflows,
    }


def client_config(
    flip_mode: str, *, executors: list[dict[str, Any]], components: list[dict[str, Any]], **top: Any
) -> dict[str, Any]:
    """A client config without filters; ``top`` adds top-level keys."""
    return {
        "format_version": 2,
        "flip_mode": flip_mode,
        **top,
        "executors": executors,
        "task_result_filters": [],
        "task_data_filters": [],
        "components": components,
    }


def flip_backend(**args: Any) -> dict[str, Any]:
    """The FlipBackend component (id ``flip``)."""
    return {"id": "flip", "path": FLIP_BACKEND, "args": args}


def numpy_model_components(expected_data_kind: str) -> list[dict[str, Any]]:
    """The persistor, shareable generator and aggregator of a NumPy model trained with ScatterAndGather."""
    return [
        {"id": "persistor", "path": NP_PERSISTOR, "args": {}},
        {"id": "shareable_generator", "path": SHAREABLE_GENERATOR},
        {"id": "aggregator", "path": AGGREGATOR, "args": {"expected_data_kind": expected_data_kind}},
    ]


def scatter_and_gather(**args: Any) -> dict[str, Any]:
    """The ScatterAndGather workflow (id ``sag``) over every client for ``{global_rounds}`` rounds."""
    return {
        "id": "sag",
        "path": SCATTER_AND_GATHER,
        "args": {
            "min_clients": "{min_clients}",
            "num_rounds": "{global_rounds}",
            "wait_time_after_min_received": 0,
            "persistor_id": "persistor",
            **args,
        },
    }


def write_job(
    job_dir: Path,
    *,
    name: str,
    server: dict[str, Any],
    client: dict[str, Any],
    custom: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write a job folder whose one app goes to every site.

    Args:
        job_dir: The folder to write (made if missing).
        name: The job's name in ``meta.json``.
        server: The server config.
        client: The client config.
        custom: Files of ``app/custom``, by name: source text (dedented) or a file to copy.

    Returns:
        ``job_dir``.
    """
    app = job_dir / "app"
    (app / "config").mkdir(parents=True, exist_ok=True)
    (app / "custom").mkdir(parents=True, exist_ok=True)
    meta = {"name": name, "resource_spec": {}, "deploy_map": {"app": ["@ALL"]}, "min_clients": CLIENTS}
    (job_dir / "meta.json").write_text(json.dumps(meta))
    (app / "config" / "config_fed_server.json").write_text(json.dumps(server, indent=1))
    (app / "config" / "config_fed_client.json").write_text(json.dumps(client, indent=1))
    for file_name, content in (custom or {}).items():
        if isinstance(content, Path):
            shutil.copy(content, app / "custom" / file_name)
        else:
            (app / "custom" / file_name).write_text(textwrap.dedent(content))
    return job_dir


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; none if it does not exist."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class JobFolders:
    """Where a simulator job lives: the job folder and the simulator's workspace, both under ``root``."""

    root: Path

    @property
    def job_dir(self) -> Path:
        return self.root / "job"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    def run_dir(self, site: str) -> Path:
        """The run folder of ``site`` (``server``, ``site-1``...) in the workspace."""
        return self.workspace / site / "simulate_job"

    def log(self, site: str) -> str:
        """Every ``log.txt`` the run left for ``site``, joined."""
        return "\n".join(p.read_text(errors="replace") for p in sorted((self.workspace / site).rglob("log.txt")))


def run_simulator(job_dir: Path, workspace: Path) -> int:
    """Run a job in the simulator in this process; return its return code."""
    from nvflare.private.fed.app.simulator.simulator_runner import SimulatorRunner

    runner = SimulatorRunner(job_folder=str(job_dir), workspace=str(workspace), n_clients=CLIENTS, threads=CLIENTS)
    return int(runner.run())


class SimulatorProcess:
    """A job running in the simulator in a subprocess (so several can run at once), output to ``log``.

    Args:
        job_dir: The job folder.
        workspace: The simulator's workspace.
        log: Where the subprocess's output goes.
        env: Set for the run (a ``None`` value unsets the variable).
    """

    def __init__(self, job_dir: Path, workspace: Path, log: Path, env: Mapping[str, str | None]) -> None:
        full_env = {k: v for k, v in os.environ.items() if k not in env}
        full_env.update({k: v for k, v in env.items() if v is not None})
        self._log: IO[bytes] = open(log, "wb")  # closed in wait()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.simjob", str(job_dir), str(workspace)],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait(self, timeout: float) -> int:
        """Wait for the run to end (killing it after ``timeout`` seconds); return its return code."""
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._log.close()

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(run_simulator(Path(sys.argv[1]), Path(sys.argv[2])))
