"""The simulator runner: exit codes, the log outside the workspace, and stopping every process on timeout."""

import os
from pathlib import Path

import pytest

from flip_nvflare_demo.simulate import run_simulation

pytestmark = pytest.mark.e2e


def test_a_bad_job_fails_with_its_log_kept(tmp_path: Path) -> None:
    result = run_simulation(tmp_path / "no_such_job", tmp_path / "workspace", timeout=120)
    assert result.return_code != 0 and not result.ok
    assert result.log_path == tmp_path / "workspace.log"
    assert result.log_tail()


def test_timeout_stops_the_simulator_and_its_clients(tmp_path: Path) -> None:
    from flip_nvflare.constants import JobType
    from flip_nvflare.jobs.create import JobRequest, create_job
    from flip_nvflare_demo.cli import app_dir

    job = create_job(JobRequest(JobType.STANDARD, app_dir(), tmp_path / "job"))  # no data: it would fail later
    groups: list[int] = []

    def remember_group() -> None:
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if str(job) in (entry / "cmdline").read_text(errors="replace"):
                    groups.append(os.getpgid(int(entry.name)))
            except (OSError, ValueError):
                continue

    result = run_simulation(job, tmp_path / "workspace", timeout=3, on_poll=remember_group, poll_interval=0.5)
    assert result.return_code == -1
    assert groups, "the simulator process was never seen"
    assert not [pid for pid, state in _members(set(groups)) if state != "Z"], "a simulator process survived"


def _members(groups: set[int]) -> list[tuple[int, str]]:
    """(pid, state) of every process in ``groups`` (killed ones may linger as zombies until reaped)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups:
            found.append((int(entry.name), fields[0]))
    return found


def test_the_client_api_demo_job_is_its_recipe_exported(tmp_path: Path) -> None:
    import json

    from flip_nvflare.constants import FlipMode
    from flip_nvflare_demo.cli import DEMO_MODEL_ID, prepare_run

    job, workspace = prepare_run(tmp_path, FlipMode.DEV, sites=2, style="client_api")
    assert job.name == "flip_fedavg" and not workspace.exists()
    meta = json.loads((job / "meta.json").read_text())
    assert meta["custom_props"]["model_id"] == DEMO_MODEL_ID and meta["min_clients"] == 2
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    assert client["flip_mode"] == "dev"
    flip = next(c for c in client["components"] if c["id"] == "flip")
    assert flip["args"]["dev_dataframe"].endswith("/{SITE_NAME}/cohort.csv")
    assert sorted(p.name for p in (job / "app" / "custom").iterdir()) == [
        "config.json",
        "data_utils.py",
        "models.py",
        "trainer.py",
    ]
