"""A Client API job exported from a flip-nvflare recipe, run on a real NVFlare POC deployment in prod mode.

The demo's Client API recipe (``flip_nvflare_demo/app_client_api/job.py``) is built in prod mode
for a model registered on the emulator, with the script in an external process, exported with
``recipe.export(dir)`` and submitted through the admin API to the session's POC deployment (server
and 2 clients as separate processes). The sites run the flip-nvflare they have installed: the job
carries no copy of it, and the external script is started with the site's ``python3``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flip_emulator.handle import EmulatorHandle, RegisteredModel
from flip_emulator.store import ModelRecords
from tests.e2e.conftest import TRUSTS
from tests.e2e.jobtools import PROD_QUERY, demo_client_api_job
from tests.e2e.poc import PocDeployment

pytestmark = [pytest.mark.e2e, pytest.mark.poc]

EXECUTION_MODE = "external_process"


@dataclass
class PocClientApiRun:
    """The exported job, the deployment's final job meta, and what the hub and S3 got."""

    model: RegisteredModel
    job: Path
    meta: dict[str, Any]
    records: ModelRecords
    keys: list[str]
    logs: str


def _log_tails(poc: PocDeployment, job_id: str, lines: int = 40) -> str:
    """The end of each participant's log of the job (for failure messages)."""
    parts = []
    for name in ("server", "site-1", "site-2"):
        log = poc.site_dir(name) / job_id / "log.txt"
        if log.is_file():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log}\n" + "\n".join(tail))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def poc_client_api(
    tmp_path_factory: pytest.TempPathFactory, poc: PocDeployment, emulator: EmulatorHandle
) -> PocClientApiRun:
    root = tmp_path_factory.mktemp("poc-client-api")
    model = emulator.register_model(trusts=TRUSTS)
    recipe = demo_client_api_job().build(
        2,
        2,
        EXECUTION_MODE,
        flip_mode="prod",
        model_id=model.model_id,
        project_id=model.encrypted_project_id,
        query=PROD_QUERY,
    )
    recipe.export(root / "export")
    job = root / "export" / recipe.job.name
    meta = poc.run_job(job)
    return PocClientApiRun(
        model=model,
        job=job,
        meta=meta,
        records=emulator.records(model.model_id),
        keys=emulator.results(model.model_id),
        logs=_log_tails(poc, meta["job_id"]),
    )


def test_the_exported_job_finishes_on_the_deployment(poc_client_api: PocClientApiRun) -> None:
    run = poc_client_api
    assert run.meta["status"] == "FINISHED:COMPLETED", f"{run.meta}\n{run.logs}"


def test_the_hub_gets_results_uploaded_and_metrics_from_both_trusts(poc_client_api: PocClientApiRun) -> None:
    run = poc_client_api
    assert run.records.status_names()[-1] == "RESULTS_UPLOADED", f"{run.records.status_names()}\n{run.logs}"
    assert {m.trust for m in run.records.metrics} == set(TRUSTS), run.logs


def test_the_results_are_in_s3_for_the_model(poc_client_api: PocClientApiRun) -> None:
    run = poc_client_api
    assert run.keys, f"no results object in S3 for {run.model.model_id}\n{run.logs}"
    assert all(k.startswith(f"{run.model.model_id}/") and k.endswith(".zip") for k in run.keys), run.keys


def test_the_exported_job_carries_no_copy_of_flip_nvflare(poc_client_api: PocClientApiRun) -> None:
    job = poc_client_api.job
    assert (job / "meta.json").is_file()
    assert not list(job.glob("*/custom/flip_nvflare")), "the exported job has a copy of flip_nvflare"
    assert not list(job.rglob("flip_nvflare/__init__.py")), "the exported job has a copy of flip_nvflare"
