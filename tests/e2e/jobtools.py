"""Helpers of the end-to-end tests: app copies, deployment-style config rewrites, simulator runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flip_nvflare_demo.cli import app_dir
from flip_nvflare_demo.simulate import SimulationResult, run_simulation

JOBPARTS = Path(__file__).parent / "jobparts"
#: A cohort query on the emulator's synthetic OMOP population: one row per study, labelled 1 when
#: its radiology report describes a lesion (the emulator draws the lesion into the image too).
PROD_QUERY = (
    "SELECT io.accession_id, CASE WHEN n.note_text LIKE '%lesion%' THEN 1 ELSE 0 END AS label "
    "FROM omop.image_occurrence io JOIN omop.note n ON n.note_event_id = io.image_occurrence_id"
)


#: The demo's Client API app (scripts and the job.py that builds its recipe).
DEMO_CLIENT_API = Path(__file__).resolve().parents[2] / "flip_nvflare_demo" / "app_client_api"


def demo_client_api_job() -> Any:
    """The demo's Client API ``job.py`` as a module (imported as a FLIP tutorial's job.py is run)."""
    sys.path.insert(0, str(DEMO_CLIENT_API))
    try:
        import job

        return job
    finally:
        sys.path.remove(str(DEMO_CLIENT_API))


def copy_app(target: Path, *, parts: tuple[str, ...] = (), **config: Any) -> Path:
    """A copy of the demo app with ``config.json`` keys changed and test job parts added."""
    shutil.copytree(app_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    path = target / "config.json"
    values = json.loads(path.read_text())
    values.update(config)
    path.write_text(json.dumps(values, indent=2))
    for part in parts:
        shutil.copy(JOBPARTS / part, target / part)
    return target


def load_config(job: Path, side: str) -> dict[str, Any]:
    """``config_fed_server.json`` (side ``server``) or ``config_fed_client.json`` (``client``) of a job."""
    data: dict[str, Any] = json.loads((job / "app" / "config" / f"config_fed_{side}.json").read_text())
    return data


def save_config(job: Path, side: str, config: dict[str, Any]) -> None:
    (job / "app" / "config" / f"config_fed_{side}.json").write_text(json.dumps(config, indent=2))


def rewrite_keys(job: Path, side: str, values: dict[str, Any], *, style: str = "hub") -> None:
    """Rewrite a job config as deployment tools do; a template must run after either style.

    ``hub``: FLIP's job service sets each top-level key, and ``participating_clients`` /
    ``ignore_result_error`` in any workflow args that already have them.
    ``nvflare``: ``nvflare job create -f FILE k=v`` sets every key named ``k`` anywhere in the file,
    so ``"{k}"`` references in args are replaced by the value itself.
    """
    config = load_config(job, side)

    def replace_everywhere(node: Any) -> None:
        if isinstance(node, dict):
            for key in node:
                if key in values:
                    node[key] = values[key]
                else:
                    replace_everywhere(node[key])
        elif isinstance(node, list):
            for item in node:
                replace_everywhere(item)

    if style == "nvflare":
        replace_everywhere(config)
    else:
        for workflow in config.get("workflows", []):
            args = workflow.get("args", {})
            for key in ("participating_clients", "ignore_result_error"):
                if key in args and key in values:
                    args[key] = values[key]
    config.update(values)
    save_config(job, side, config)


def add_server_component(job: Path, component: dict[str, Any]) -> None:
    config = load_config(job, "server")
    config["components"].append(component)
    save_config(job, "server", config)


def set_component_args(job: Path, side: str, component_id: str, **args: Any) -> None:
    config = load_config(job, side)
    for component in config["components"]:
        if component.get("id") == component_id:
            component.setdefault("args", {}).update(args)
    save_config(job, side, config)


def set_result_filter_args(job: Path, **args: Any) -> None:
    """Change the args of the clients' train-result filter (the job's PercentilePrivacy)."""
    config = load_config(job, "client")
    for chain in config["task_result_filters"]:
        for item in chain["filters"]:
            item.setdefault("args", {}).update(args)
    save_config(job, "client", config)


def simulate(job: Path, workspace: Path, env: dict[str, str] | None = None, timeout: float = 400) -> SimulationResult:
    """Run a job in the simulator (2 clients) in a child process; fail with the log tail if it fails."""
    result = run_simulation(job, workspace, n_clients=2, threads=2, env=env, timeout=timeout)
    assert result.ok, f"simulator exited with {result.return_code} after {result.seconds:.0f} s:\n{result.log_tail()}"
    return result


def nvflare_job_create(template: str, app: Path, job: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """Run ``nvflare job create -j JOB -w job_templates/<template> -sd APP`` with an isolated HOME."""
    templates = Path(__file__).resolve().parents[2] / "job_templates"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home)}
    nvflare = Path(sys.executable).with_name("nvflare")
    command = [str(nvflare), "job", "create", "-j", str(job), "-w", str(templates / template), "-sd", str(app)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@dataclass(frozen=True)
class ZipContent:
    names: list[str]
    files: dict[str, bytes]

    def json(self, name: str) -> Any:
        return json.loads(self.files[name])


def read_zip(data: bytes | Path) -> ZipContent:
    raw = data.read_bytes() if isinstance(data, Path) else data
    import io

    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        names = sorted(archive.namelist())
        return ZipContent(names, {name: archive.read(name) for name in names})


def dev_ledger(result: SimulationResult) -> Path:
    return result.server_run_dir / "flip_dev"


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
