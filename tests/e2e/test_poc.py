"""flip_standard in prod mode on a real multi-process NVFlare deployment (POC) against the emulator.

The proof that the package works outside the simulator: the server and both clients are separate
processes talking over loopback, the job is submitted through the admin API, and what the hub and
S3 received has the same shape as the simulator run's (test_standard's ``standard_prod``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.constants import JobType
from flip_nvflare.jobs.create import JobRequest, create_job
from tests.e2e.conftest import ProdRun, deploy_values
from tests.e2e.jobtools import copy_app, rewrite_keys
from tests.e2e.poc import PocDeployment

pytestmark = [pytest.mark.e2e, pytest.mark.poc]


@pytest.fixture(scope="module")
def poc_run(tmp_path_factory: pytest.TempPathFactory, poc: PocDeployment, emulator: EmulatorHandle) -> dict:
    root = tmp_path_factory.mktemp("poc-standard")
    model = emulator.register_model(trusts=("Trust_1", "Trust_2"))
    app = copy_app(root / "app", GLOBAL_ROUNDS=2)
    job = create_job(JobRequest(JobType.STANDARD, app, root / "flip_standard_prod"))
    server, client = deploy_values(model, rounds=2)
    rewrite_keys(job, "server", server)
    rewrite_keys(job, "client", client)
    meta = poc.run_job(job)
    return {
        "meta": meta,
        "model": model,
        "records": emulator.records(model.model_id),
        "keys": emulator.results(model.model_id),
    }


def _shape(records) -> tuple[list[str], set[tuple[str | None, int, str]]]:
    return records.status_names(), {(m.trust, m.global_round, m.label) for m in records.metrics}


def test_job_finishes_on_the_deployment(poc_run: dict) -> None:
    assert poc_run["meta"]["status"] == "FINISHED:COMPLETED", poc_run["meta"]


def test_hub_record_matches_the_simulator_run(poc_run: dict, standard_prod: ProdRun) -> None:
    assert _shape(poc_run["records"]) == _shape(standard_prod.records)
    assert poc_run["records"].status_names()[-1] == "RESULTS_UPLOADED"


def test_results_zip_in_s3_matches_the_simulator_run(
    poc_run: dict, standard_prod: ProdRun, emulator: EmulatorHandle
) -> None:
    (key,) = poc_run["keys"]
    assert key.startswith(f"{poc_run['model'].model_id}/") and key.endswith(".zip")
    from flip_nvflare_demo.report import read_s3_object
    from tests.e2e.jobtools import read_zip

    bucket = str(emulator.bucket).removeprefix("s3://").split("/", 1)[0]
    content = read_zip(read_s3_object(emulator.env(), bucket, key))
    assert content.names == standard_prod.results_zip.names


def test_client_processes_never_held_the_hub_key(poc: PocDeployment, emulator: EmulatorHandle) -> None:
    for site in ("site-1", "site-2"):
        checked = 0
        for path in Path("/proc").glob("[0-9]*"):
            try:
                cmdline = (path / "cmdline").read_bytes()
                if f"uid={site}".encode() not in cmdline:
                    continue
                environ = (path / "environ").read_bytes()
            except OSError:
                continue
            assert emulator.hub_key.encode() not in environ, f"a {site} process has the hub key"
            assert b"TRUST_INTERNAL_SERVICE_KEY" in environ
            checked += 1
        assert checked >= 1, f"no running {site} process found"
