"""Shared runs of the end-to-end tests (each run is shared by several assertions to keep the suite fast)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flip_emulator.handle import EmulatorHandle, RegisteredModel, start_emulator
from flip_emulator.store import ModelRecords
from flip_nvflare.constants import JobType
from flip_nvflare.jobs.create import JobRequest, create_job
from flip_nvflare_demo.data import DemoData, generate_demo_data
from flip_nvflare_demo.simulate import SimulationResult
from tests.e2e.jobtools import PROD_QUERY, ZipContent, copy_app, read_zip, rewrite_keys, simulate
from tests.e2e.poc import PocDeployment

TRUSTS = ("Trust_1", "Trust_2")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return generate_demo_data(tmp_path_factory.mktemp("demo-data"))


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorHandle]:
    with start_emulator(tmp_path_factory.mktemp("e2e-emulator"), s3=True) as handle:
        yield handle


@dataclass
class ProdRun:
    """A prod-mode run against the emulator, and what the hub and S3 got from it."""

    model: RegisteredModel
    job: Path
    result: SimulationResult
    records: ModelRecords
    keys: list[str]
    results_zip: ZipContent
    hub_api: str


def deploy_values(model: RegisteredModel, rounds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The top-level keys a FLIP deployment writes (server, client)."""
    server = {
        "model_id": model.model_id,
        "global_rounds": rounds,
        "min_clients": 2,
        "participating_clients": ["site-1", "site-2"],
        "ignore_result_error": False,
        "flip_mode": "prod",
    }
    client = {"project_id": model.encrypted_project_id, "query": PROD_QUERY, "flip_mode": "prod"}
    return server, client


def prod_run(
    emulator: EmulatorHandle,
    root: Path,
    job_type: JobType,
    *,
    style: str,
    hub_api: str = "h1",
    rounds: int = 2,
    checkpoints: Path | None = None,
    job: Path | None = None,
) -> ProdRun:
    """Build a job in dev mode, rewrite it as a deployment would (prod, registered model), run it."""
    emulator.set_hub_api(hub_api)
    try:
        model = emulator.register_model(trusts=TRUSTS)
        if job is None:
            app = copy_app(root / "app", GLOBAL_ROUNDS=rounds)
            job = create_job(JobRequest(job_type, app, root / "job", checkpoints_dir=checkpoints))
        server, client = deploy_values(model, rounds)
        rewrite_keys(job, "server", server, style=style)
        rewrite_keys(job, "client", client, style=style)
        result = simulate(job, root / "workspace", env=emulator.env())
        records = emulator.records(model.model_id)
        keys = emulator.results(model.model_id)
        assert keys, f"no results zip in S3 for {model.model_id}"
        from flip_nvflare_demo.report import read_s3_object

        bucket = str(emulator.bucket).removeprefix("s3://").split("/", 1)[0]
        content = read_zip(read_s3_object(emulator.env(), bucket, sorted(keys)[-1]))
    finally:
        emulator.set_hub_api("h1")
    return ProdRun(model, job, result, records, keys, content, hub_api)


@pytest.fixture(scope="session")
def standard_prod(tmp_path_factory: pytest.TempPathFactory, emulator: EmulatorHandle) -> ProdRun:
    """flip_standard in prod mode against the emulator (shared by the template and POC tests)."""
    return prod_run(emulator, tmp_path_factory.mktemp("standard-prod"), JobType.STANDARD, style="hub")


@dataclass
class DevRun:
    job: Path
    result: SimulationResult


@dataclass
class DemoRun:
    """``flip-nvflare demo`` (dev mode): its exit code, what it printed, and its working folder."""

    exit_code: int
    output: str
    workdir: Path

    @property
    def server_run_dir(self) -> Path:
        return self.workdir / "workspace" / "server" / "simulate_job"

    @property
    def job(self) -> Path:
        return self.workdir / "job"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The demo, as ``make demo`` runs it (flip_standard in dev mode, per-site data, 3 rounds)."""
    import contextlib
    import io

    from flip_nvflare_demo.cli import main

    workdir = tmp_path_factory.mktemp("demo")
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = main(["--workdir", str(workdir)])
    return DemoRun(code, output.getvalue(), workdir)


#: The trusts' site policy for the POC: stricter than the job templates' own filter.
SITE_POLICY = """\
version: 1
minimum:
  percentile_privacy:
    percentile: 10
    gamma: 0.01
default_scope: standard
scopes:
  standard:
    percentile_privacy:
      percentile: 50
      gamma: 0.001
"""
SITE_POLICY_GAMMA = 0.001
SITE_POLICY_PERCENTILE = 50


#: The POC server's client heartbeat timeout (NVFlare's default is 600 s): a site silent this long is gone.
POC_HEART_BEAT_TIMEOUT = 30.0


@pytest.fixture(scope="session")
def poc(tmp_path_factory: pytest.TempPathFactory, emulator: EmulatorHandle) -> Iterator[PocDeployment]:
    """A POC deployment (server + 2 clients as separate processes) whose sites have a rendered site policy."""
    from flip_nvflare.filters.site_policy import render_site_policy

    root = tmp_path_factory.mktemp("poc")
    deployment = PocDeployment(root, emulator.env())
    try:
        deployment.prepare()
        deployment.install_job_watcher(heart_beat_timeout=POC_HEART_BEAT_TIMEOUT)
        policy = root / "site_policy.yaml"
        policy.write_text(SITE_POLICY)
        for site in ("site-1", "site-2"):
            render_site_policy(policy, deployment.site_dir(site))
        deployment.start()
        yield deployment
    finally:
        deployment.stop()
    assert not deployment.alive_groups(), "POC processes were left running"
