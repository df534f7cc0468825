"""A trust's site fails mid-run on a real POC deployment: the run ends by itself and the hub learns the truth.

One POC deployment (the session's ``poc`` fixture: server with FLIP's JobWatcher in its
``local/resources.json`` and a 30 s client heartbeat timeout; 2 sites), flip_standard in prod mode
against the emulator, four scenarios in turn:

* a server app that cannot be built: ERROR at the hub, from the JobWatcher;
* site-2's job process killed (an out-of-memory kill): ERROR, and a log entry naming Trust_2;
* every process of site-2 killed, the startup kit restarting its client (policy ``end``): ERROR
  and a log entry naming Trust_2, after ``dead_client_grace_period``;
* site-2 gone for good (policy ``continue``, ``min_clients`` 1): the run completes with site-1,
  RESULTS_UPLOADED, Trust_2 in the run summary's ``sites_lost`` and in the hub's logs.

Each wait is bounded by the job's own bounds plus a margin; the bounds are short in these jobs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from flip_emulator.handle import EmulatorHandle, RegisteredModel
from flip_emulator.store import ModelRecords
from flip_nvflare.constants import JobType
from flip_nvflare.jobs.create import JobRequest, create_job
from tests.e2e.conftest import POC_HEART_BEAT_TIMEOUT, TRUSTS, deploy_values
from tests.e2e.jobtools import add_server_component, copy_app, read_zip, rewrite_keys
from tests.e2e.poc import PocDeployment

pytestmark = [pytest.mark.e2e, pytest.mark.poc]

#: The job's bounds (seconds): how long a lost site stays on NVFlare's watch list, and how long a task
#: waiting only on lost sites runs before it ends.
GRACE = 10
LEAD = 5
#: Margin for process start-up and the hub calls on a busy 2-core machine.
MARGIN = 45


def _job(root: Path, model: RegisteredModel, *, rounds: int, min_clients: int, policy: str) -> Path:
    app = copy_app(root / "app", GLOBAL_ROUNDS=rounds)
    job = create_job(JobRequest(JobType.STANDARD, app, root / "job", min_clients=min_clients))
    server, client = deploy_values(model, rounds=rounds)
    server.update(
        min_clients=min_clients,
        on_site_lost=policy,
        dead_client_grace_period=GRACE,
        dead_client_check_lead_time=LEAD,
    )
    rewrite_keys(job, "server", server)
    rewrite_keys(job, "client", client)
    return job


def _submit(poc: PocDeployment, job: Path) -> str:
    session = poc.session()
    try:
        job_id: str = session.submit_job(str(job))
        return job_id
    finally:
        session.close()


def _wait_job(poc: PocDeployment, job_id: str, timeout: float) -> tuple[str, float]:
    """Wait for the job to end; return NVFlare's final status and when it was seen."""
    session = poc.session()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = str(session.get_job_meta(job_id).get("status", ""))
            if status.startswith("FINISHED"):
                return status, time.monotonic()
            time.sleep(1.0)
        session.abort_job(job_id)  # never leave it running for the next scenario
        raise AssertionError(f"job {job_id} did not end within {timeout:.0f} s (last status {status})")
    finally:
        session.close()


def _wait_records(emulator: EmulatorHandle, model_id: str, ready: Any, timeout: float) -> ModelRecords:
    deadline = time.monotonic() + timeout
    while True:
        records = emulator.records(model_id)
        if ready(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _first_round_done(records: ModelRecords) -> bool:
    return any(m.label == "train_loss" for m in records.metrics)


def _final(records: ModelRecords) -> bool:
    return bool(records.status_names()) and records.status_names()[-1] in ("ERROR", "RESULTS_UPLOADED")


def _trust_logs(records: ModelRecords, trust: str) -> list[str]:
    return [r.log or "" for r in records.logs if r.trust == trust]


def _wait_registered(poc: PocDeployment, names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if names <= set(poc.client_names()):
            return
        time.sleep(2.0)
    raise AssertionError(f"{sorted(names)} not registered again within {timeout:.0f} s")


def _run_and_fail(
    poc: PocDeployment,
    emulator: EmulatorHandle,
    root: Path,
    *,
    policy: str,
    min_clients: int,
    rounds: int,
    fail: Any,
    bound: float,
) -> dict[str, Any]:
    model = emulator.register_model(trusts=TRUSTS)
    job = _job(root, model, rounds=rounds, min_clients=min_clients, policy=policy)
    job_id = _submit(poc, job)
    records = _wait_records(emulator, model.model_id, _first_round_done, 240)
    assert _first_round_done(records), "the run never reached its first metrics"
    killed = fail()
    assert killed, "no process of site-2 found to kill"
    failed_at = time.monotonic()
    status, ended_at = _wait_job(poc, job_id, bound + MARGIN)
    records = _wait_records(emulator, model.model_id, _final, 30)
    return {
        "model": model,
        "status": status,
        "seconds": ended_at - failed_at,
        "records": records,
        "keys": emulator.results(model.model_id),
    }


@pytest.fixture(scope="module")
def build_failure(tmp_path_factory: pytest.TempPathFactory, poc: PocDeployment, emulator: EmulatorHandle) -> dict:
    model = emulator.register_model(trusts=TRUSTS)
    job = _job(tmp_path_factory.mktemp("poc-build-failure"), model, rounds=2, min_clients=2, policy="end")
    add_server_component(job, {"id": "missing", "path": "flip_no_such_module.Component", "args": {}})
    started = time.monotonic()
    status, ended_at = _wait_job(poc, _submit(poc, job), 60)
    records = _wait_records(emulator, model.model_id, _final, 30)
    return {"status": status, "seconds": ended_at - started, "records": records}


@pytest.fixture(scope="module")
def job_process_killed(
    tmp_path_factory: pytest.TempPathFactory, poc: PocDeployment, emulator: EmulatorHandle, build_failure: dict
) -> dict:
    return _run_and_fail(
        poc,
        emulator,
        tmp_path_factory.mktemp("poc-job-killed"),
        policy="end",
        min_clients=2,
        rounds=8,
        fail=lambda: poc.kill_job_processes("site-2"),
        bound=10,
    )


@pytest.fixture(scope="module")
def job_process_killed_run_continues(
    tmp_path_factory: pytest.TempPathFactory, poc: PocDeployment, emulator: EmulatorHandle, job_process_killed: dict
) -> dict:
    _wait_registered(poc, {"site-1", "site-2"}, 60)
    return _run_and_fail(
        poc,
        emulator,
        tmp_path_factory.mktemp("poc-job-killed-continue"),
        policy="continue",
        min_clients=1,
        rounds=4,
        fail=lambda: poc.kill_job_processes("site-2"),
        bound=10 + GRACE + LEAD,  # the site's report, the dead-client grace period, then the task's lead time
    )


@pytest.fixture(scope="module")
def site_restarted(
    tmp_path_factory: pytest.TempPathFactory,
    poc: PocDeployment,
    emulator: EmulatorHandle,
    job_process_killed_run_continues: dict,
) -> dict:
    _wait_registered(poc, {"site-1", "site-2"}, 60)
    run = _run_and_fail(
        poc,
        emulator,
        tmp_path_factory.mktemp("poc-site-restarted"),
        policy="end",
        min_clients=2,
        rounds=8,
        fail=lambda: poc.kill_site("site-2"),
        bound=15 + GRACE,  # the kit's restart loop (5 s) and the client's start-up, then the grace period
    )
    _wait_registered(poc, {"site-1", "site-2"}, 60)
    return run


@pytest.fixture(scope="module")
def site_gone(
    tmp_path_factory: pytest.TempPathFactory, poc: PocDeployment, emulator: EmulatorHandle, site_restarted: dict
) -> dict:
    _wait_registered(poc, {"site-1", "site-2"}, 60)
    try:
        return _run_and_fail(
            poc,
            emulator,
            tmp_path_factory.mktemp("poc-site-gone"),
            policy="continue",
            min_clients=1,
            rounds=3,
            fail=lambda: poc.kill_site("site-2", for_good=True),
            bound=POC_HEART_BEAT_TIMEOUT + 5 + GRACE + LEAD,
        )
    finally:
        poc.start_site("site-2")  # the deployment is shared with the other POC tests
        _wait_registered(poc, {"site-1", "site-2"}, 90)


def test_server_app_that_cannot_be_built_ends_with_error_at_the_hub(build_failure: dict) -> None:
    assert build_failure["status"] == "FINISHED:EXECUTION_EXCEPTION"
    records = build_failure["records"]
    assert records.status_names() == ["ERROR"]
    # the reason reaches every trust of the run (H1 files log entries under a trust), with no path
    texts = {trust: _trust_logs(records, trust) for trust in TRUSTS}
    assert all(len(found) == 1 and "could not go on at the FL server" in found[0] for found in texts.values()), texts
    assert all("/" not in found[0] for found in texts.values())


def test_killed_job_process_ends_the_run_with_error_naming_the_trust(job_process_killed: dict) -> None:
    run = job_process_killed
    assert run["status"] == "FINISHED:EXECUTION_EXCEPTION"
    assert run["seconds"] < 10 + MARGIN
    statuses = run["records"].status_names()
    assert statuses[-1] == "ERROR" and "STOPPED" not in statuses, statuses
    (text,) = [t for t in _trust_logs(run["records"], "Trust_2") if "ended unexpectedly" in t]
    assert "site-2" in text and "/" not in text  # names only: no paths
    assert not run["keys"], "a failed run is not uploaded"


def test_killed_job_process_with_policy_continue_loses_the_site_and_the_run_goes_on(
    job_process_killed_run_continues: dict, emulator: EmulatorHandle
) -> None:
    run = job_process_killed_run_continues
    assert run["status"] == "FINISHED:COMPLETED", run["status"]
    assert run["seconds"] < 10 + GRACE + LEAD + MARGIN
    statuses = run["records"].status_names()
    assert statuses[-1] == "RESULTS_UPLOADED" and "STOPPED" not in statuses and "ERROR" not in statuses, statuses
    texts = [t for t in _trust_logs(run["records"], "Trust_2") if "left the run" in t]
    assert texts and "continues" in texts[0] and "/" not in texts[0]
    from flip_nvflare_demo.report import read_s3_object

    (key,) = run["keys"]
    bucket = str(emulator.bucket).removeprefix("s3://").split("/", 1)[0]
    summary = read_zip(read_s3_object(emulator.env(), bucket, key)).json("run_summary.json")
    (lost,) = summary["sites_lost"]
    assert lost["client"] == "site-2" and lost["trust"] == "Trust_2"


def test_restarted_site_ends_the_run_by_policy_with_error_naming_the_trust(site_restarted: dict) -> None:
    run = site_restarted
    assert run["status"].startswith("FINISHED:"), run["status"]
    assert run["seconds"] < 15 + GRACE + MARGIN
    statuses = run["records"].status_names()
    assert statuses[-1] == "ERROR" and "STOPPED" not in statuses, statuses
    texts = [t for t in _trust_logs(run["records"], "Trust_2") if "left the run" in t]
    assert texts and "on_site_lost: end" in texts[0]


def test_site_gone_for_good_run_continues_and_records_the_lost_trust(site_gone: dict, emulator: EmulatorHandle) -> None:
    run = site_gone
    assert run["status"] == "FINISHED:COMPLETED", run["status"]
    assert run["seconds"] < POC_HEART_BEAT_TIMEOUT + 5 + GRACE + LEAD + MARGIN
    statuses = run["records"].status_names()
    assert statuses[-1] == "RESULTS_UPLOADED" and "STOPPED" not in statuses, statuses
    texts = [t for t in _trust_logs(run["records"], "Trust_2") if "left the run" in t]
    assert texts and "continues" in texts[0]
    from flip_nvflare_demo.report import read_s3_object

    (key,) = run["keys"]
    bucket = str(emulator.bucket).removeprefix("s3://").split("/", 1)[0]
    summary = read_zip(read_s3_object(emulator.env(), bucket, key)).json("run_summary.json")
    (lost,) = summary["sites_lost"]
    assert lost["client"] == "site-2" and lost["trust"] == "Trust_2" and lost["at"]
    assert summary["outcome"] == "completed"
