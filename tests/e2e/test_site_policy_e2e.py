"""A site policy rendered into each site's ``local/privacy.json`` filters train results on a real
deployment even when the job's own privacy filter is off (asserted on what the server received).

The simulator never applies client-side site filters (see docs/site_policy.md), so this runs on
the POC deployment.
"""

from __future__ import annotations

import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.constants import JobType
from flip_nvflare.jobs.create import JobRequest, create_job
from tests.e2e.conftest import SITE_POLICY_GAMMA, SITE_POLICY_PERCENTILE, deploy_values
from tests.e2e.jobtools import add_server_component, copy_app, jsonl, load_config, rewrite_keys, set_result_filter_args
from tests.e2e.poc import PocDeployment

pytestmark = [pytest.mark.e2e, pytest.mark.poc]


@pytest.fixture(scope="module")
def received(tmp_path_factory: pytest.TempPathFactory, poc: PocDeployment, emulator: EmulatorHandle) -> list[dict]:
    root = tmp_path_factory.mktemp("site-policy")
    model = emulator.register_model(trusts=("Trust_1", "Trust_2"))
    app = copy_app(root / "app", parts=("job_probe.py",), GLOBAL_ROUNDS=1)
    job = create_job(JobRequest(JobType.STANDARD, app, root / "job_filter_off"))
    set_result_filter_args(job, off=True)
    probe = root / "probe.jsonl"
    add_server_component(job, {"id": "probe", "path": "job_probe.JobProbe", "args": {"path": str(probe)}})
    server, client = deploy_values(model, rounds=1)
    rewrite_keys(job, "server", server)
    rewrite_keys(job, "client", client)
    filters = load_config(job, "client")["task_result_filters"]
    assert filters[0]["filters"][0]["args"]["off"] is True
    meta = poc.run_job(job)
    assert meta["status"] == "FINISHED:COMPLETED", meta
    return [r for r in jsonl(probe) if r["kind"] == "train_result"]


def test_every_train_result_was_filtered_by_the_site(received: list[dict]) -> None:
    assert sorted(r["client"] for r in received) == ["site-1", "site-2"]
    for result in received:
        assert result["data_kind"] == "WEIGHT_DIFF"
        # PercentilePrivacy clips the per-step update to gamma (the job's own filter, had it been
        # on, would allow ten times more): the shared change is at most gamma * steps.
        assert result["n_steps"] > 0
        assert result["max_abs"] <= SITE_POLICY_GAMMA * result["n_steps"] * (1 + 1e-6), result
        # Changes below the policy's percentile of absolute changes were withheld (zeroed).
        assert result["zero_fraction"] >= SITE_POLICY_PERCENTILE / 100 - 0.05, result
