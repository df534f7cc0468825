"""flip_fed_opt end to end: the server optimizer really trains (dev), and prod mode on an H2 hub."""

from __future__ import annotations

from pathlib import Path

import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.constants import JobType
from flip_nvflare.jobs.create import JobRequest, create_job
from flip_nvflare_demo.data import DemoData
from flip_nvflare_demo.report import KEY_METRIC, LEARNED, from_dev_ledger
from tests.e2e.conftest import DevRun, ProdRun, prod_run
from tests.e2e.jobtools import add_server_component, copy_app, dev_ledger, jsonl, load_config, simulate

pytestmark = pytest.mark.e2e

ROUNDS = 3


@pytest.fixture(scope="module")
def fed_opt_dev(tmp_path_factory: pytest.TempPathFactory, demo_data: DemoData) -> tuple[DevRun, Path]:
    root = tmp_path_factory.mktemp("fed-opt-dev")
    app = copy_app(root / "app", parts=("job_probe.py",), GLOBAL_ROUNDS=ROUNDS)
    job = create_job(JobRequest(JobType.FED_OPT, app, root / "job", dev_data=demo_data.root))
    probe = root / "probe.jsonl"
    add_server_component(job, {"id": "probe", "path": "job_probe.JobProbe", "args": {"path": str(probe)}})
    return DevRun(job, simulate(job, root / "workspace")), probe


@pytest.fixture(scope="module")
def fed_opt_prod(tmp_path_factory: pytest.TempPathFactory, emulator: EmulatorHandle) -> ProdRun:
    return prod_run(emulator, tmp_path_factory.mktemp("fed-opt-prod"), JobType.FED_OPT, style="nvflare", hub_api="h2")


def test_the_server_optimizer_changes_the_global_model_every_round(fed_opt_dev: tuple[DevRun, Path]) -> None:
    run, probe = fed_opt_dev
    models = [r for r in jsonl(probe) if r["kind"] == "global_model"]
    assert [m["round"] for m in models] == [-1, *range(ROUNDS)]
    digests = [m["sha256"] for m in models]
    assert len(set(digests)) == len(digests), "the global model did not change in some round"
    assert "FedOpt (torch.optim.SGD, cpu) server model update round 2" in run.result.log_path.read_text()


def test_fed_opt_learns(fed_opt_dev: tuple[DevRun, Path]) -> None:
    run, _ = fed_opt_dev
    record = from_dev_ledger(dev_ledger(run.result), load_config(run.job, "server")["model_id"])
    assert [s.status for s in record.statuses][-1] == "RESULTS_UPLOADED"
    assert record.sites() == ["site-1", "site-2"]
    by_round = record.key_metric_by_round()
    assert by_round[ROUNDS - 1] >= LEARNED and by_round[ROUNDS - 1] > by_round[0], by_round
    finals = [models["SRV_FL_global_model.pt"][KEY_METRIC] for models in record.cross_site.values()]
    assert min(finals) >= LEARNED, record.cross_site


def test_prod_run_on_an_h2_hub(fed_opt_prod: ProdRun) -> None:
    records = fed_opt_prod.records
    assert records.status_names() == ["INITIATED", "PREPARED", "RUNNING", "RESULTS_UPLOADED"]
    assert {m.fl_client_name for m in records.metrics} == {"site-1", "site-2"}
    assert {m.global_round for m in records.metrics} == {0, 1}
    events = [(log.event_type, log.global_round) for log in records.logs if log.event_type]
    assert ("ROUND_STARTED", 1) in events and ("ROUND_AGGREGATED", 2) in events
    assert {"FL_global_model.pt", "best_FL_global_model.pt", "cross_val_results.json"} <= set(
        fed_opt_prod.results_zip.names
    )


def test_nvflare_style_rewrite_replaced_every_reference(fed_opt_prod: ProdRun) -> None:
    server = load_config(fed_opt_prod.job, "server")
    sag = next(w for w in server["workflows"] if w["id"] == "scatter_and_gather")
    assert sag["args"]["min_clients"] == 2 and sag["args"]["ignore_result_error"] is False
    flip = next(c for c in server["components"] if c["id"] == "flip")
    assert flip["args"]["model_id"] == fed_opt_prod.model.model_id
