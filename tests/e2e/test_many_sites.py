"""Four dev sites, a job made by ``job create --dev-data`` with no manual edit: every site trains every round.

The job is the sites benchmark's (``bench/sites_job.py``: a trivial trainer that reads the
prepared cohort and reports two metrics per round), so the run is short. ``job create`` sets
``min_clients`` and ``participating_clients`` from the four site folders, so each round waits for
and aggregates all four, and every trust's metrics reach the dev ledger.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.sites_job import TRAIN_LABELS, SitesJob, ledger_metrics, make_sites_job, missing_train_metrics
from flip_nvflare_demo.simulate import SimulationResult, run_simulation
from tests.e2e.jobtools import load_config

pytestmark = pytest.mark.e2e

SITES = 4
ROUNDS = 2


@pytest.fixture(scope="module")
def four_sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[SitesJob, SimulationResult]:
    root = tmp_path_factory.mktemp("four-sites")
    job = make_sites_job(root, SITES, rounds=ROUNDS)
    result = run_simulation(job.job_dir, root / "workspace", n_clients=SITES, threads=SITES, timeout=240)
    assert result.ok, f"simulator exited with {result.return_code}:\n{result.log_tail()}"
    return job, result


def test_job_create_took_the_sites_from_the_dev_data(four_sites: tuple[SitesJob, SimulationResult]) -> None:
    job, _ = four_sites
    server = load_config(job.job_dir, "server")
    assert server["min_clients"] == SITES and job.min_clients == SITES
    assert server["participating_clients"] == [f"site-{i}" for i in range(1, SITES + 1)]


def test_every_site_trains_every_round(four_sites: tuple[SitesJob, SimulationResult]) -> None:
    job, result = four_sites
    log = result.log_path.read_text()
    assert f"{SITES} client(s) prepared" in log and "Moving on with" not in log
    assert "min_clients is" not in log  # nothing to warn about
    for round_ in range(ROUNDS):
        assert f"aggregating {SITES} update(s) at round {round_}" in log
        for site in job.sites:
            assert f"Contribution from {site} ACCEPTED by the aggregator at round {round_}" in log


def test_every_trusts_metrics_reach_the_ledger(four_sites: tuple[SitesJob, SimulationResult]) -> None:
    job, result = four_sites
    records = ledger_metrics(result.server_run_dir)
    assert missing_train_metrics(records, job.sites, ROUNDS) == []
    train = [r for r in records if r["label"] in TRAIN_LABELS]
    assert len(train) == SITES * ROUNDS * len(TRAIN_LABELS)
    assert {r["trust"] for r in train} == {f"Trust_{i}" for i in range(1, SITES + 1)}
    # each site trained on its own prepared cohort (4 studies ready)
    assert {r["result"] for r in train if r["label"] == "cohort_rows"} == {4.0}
    statuses = (Path(result.server_run_dir) / "flip_dev" / "status.jsonl").read_text()
    assert '"RESULTS_UPLOADED"' in statuses.splitlines()[-1]
