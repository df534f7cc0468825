"""``flip-nvflare demo`` (``make demo``) end to end: flip_standard in dev mode on the demo's per-site data.

The demo's job is built by ``flip-nvflare job create``; test_nvflare_job_create shows it is the job
``nvflare job create -w job_templates/flip_standard -sd <demo app>`` makes, so this run is also
the proof that that job runs in the simulator.
"""

from __future__ import annotations

import pytest

from flip_nvflare_demo.cli import DEMO_MODEL_ID
from flip_nvflare_demo.report import KEY_METRIC, LEARNED, from_dev_ledger
from tests.e2e.conftest import DemoRun
from tests.e2e.jobtools import load_config, read_zip

pytestmark = pytest.mark.e2e

LIFECYCLE = ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]
MODELS = {"SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"}


def test_demo_succeeds_and_prints_the_report(demo_run: DemoRun) -> None:
    assert demo_run.exit_code == 0, demo_run.output
    for heading in (
        "Status timeline (as the hub received it)",
        "Metrics per site and round",
        "Cross-site validation",
        "Results zip: ",
        "Final status: RESULTS_UPLOADED",
    ):
        assert heading in demo_run.output
    assert "rose above chance" in demo_run.output
    assert "hub status: RESULTS_UPLOADED" in demo_run.output  # live progress while it ran


def test_lifecycle_and_rising_accuracy_at_each_site(demo_run: DemoRun) -> None:
    record = from_dev_ledger(demo_run.server_run_dir / "flip_dev", DEMO_MODEL_ID)
    assert [s.status for s in record.statuses] == LIFECYCLE
    assert record.sites() == ["site-1", "site-2"]
    for site in record.sites():
        for label in (KEY_METRIC, "train_loss", "local_val_accuracy"):
            assert sorted(record.series(label, site)) == [0, 1, 2], (site, label)
        accuracy = record.series(KEY_METRIC, site)
        assert accuracy[2] >= LEARNED, (site, accuracy)
    by_round = record.key_metric_by_round()
    assert by_round[2] > by_round[0], by_round


def test_results_hold_final_and_best_model_and_cross_site_table(demo_run: DemoRun) -> None:
    zips = sorted((demo_run.server_run_dir / "flip_dev" / "results" / DEMO_MODEL_ID).glob("*.zip"))
    assert len(zips) == 1 and str(zips[0]) in demo_run.output
    content = read_zip(zips[0])
    assert {"FL_global_model.pt", "best_FL_global_model.pt", "cross_val_results.json", "run_summary.json"} <= set(
        content.names
    )
    table = content.json("cross_val_results.json")
    assert sorted(table) == ["site-1", "site-2"]
    for site, models in table.items():
        assert set(models) == MODELS, site
        assert models["SRV_FL_global_model.pt"][KEY_METRIC] >= LEARNED
    # IntimeModelSelector kept the best model (an earlier round's) beside the final one.
    assert "new best validation metric" in (demo_run.workdir / "workspace.log").read_text()
    assert content.files["best_FL_global_model.pt"] != content.files["FL_global_model.pt"]


def test_each_site_read_its_own_data(demo_run: DemoRun) -> None:
    client = load_config(demo_run.job, "client")
    flip = next(c for c in client["components"] if c["id"] == "flip")
    assert flip["args"]["dev_dataframe"] == f"{demo_run.workdir / 'data'}/{{SITE_NAME}}/cohort.csv"
    # The same initial model scores differently on the two sites' validation splits: they hold different data.
    record = from_dev_ledger(demo_run.server_run_dir / "flip_dev", DEMO_MODEL_ID)
    assert record.series(KEY_METRIC, "site-1")[0] != record.series(KEY_METRIC, "site-2")[0]


def test_demo_ends_with_a_metrics_png_and_a_results_zip_that_verifies(demo_run: DemoRun) -> None:
    from flip_nvflare.components.provenance import verify_results_zip

    png = demo_run.workdir / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"Metrics plot: {png}" in demo_run.output and (demo_run.workdir / "report.txt").is_file()
    (zip_path,) = sorted((demo_run.server_run_dir / "flip_dev" / "results" / DEMO_MODEL_ID).glob("*.zip"))
    checked = verify_results_zip(zip_path, app_dir=demo_run.job / "app")  # the app code that ran is the job's
    assert checked.ok, checked
    provenance = checked.provenance or {}
    assert (provenance["job_type"], provenance["rounds_completed"], provenance["trusts"]) == (
        "standard",
        3,
        ["Trust_1", "Trust_2"],
    )
    (chain,) = provenance["privacy"]["client_filters"]["task_result_filters"]
    assert chain["filters"][0]["path"] == "flip_nvflare.filters.PercentilePrivacy"
