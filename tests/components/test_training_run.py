"""A good training run (InitTraining, ScatterAndGather, CrossSiteModelEval) with every server widget,
reported to a dev ledger and to the emulated H2 hub (with S3) in the same simulator run."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from flip_nvflare.components.provenance import verify_results_zip
from tests.components.simjobs import (
    DualRun,
    PlanContext,
    PlannedRun,
    RunPool,
    download_results,
    dual_run,
    metric_key,
    plan_dual_run,
    planned_run,
    zip_json,
    zip_names,
)

pytestmark = pytest.mark.e2e


@planned_run("training", seconds=20)
def plan(ctx: PlanContext) -> PlannedRun:
    return plan_dual_run(ctx, "training-run", rounds=2)


@pytest.fixture(scope="module")
def run(widget_runs: RunPool) -> DualRun:
    return dual_run(widget_runs, "training")


def test_the_run_completes(run: DualRun) -> None:
    assert run.result.return_code == 0, run.result.server_log()[-3000:]


def test_status_sequence_on_the_hub_and_in_the_dev_ledger(run: DualRun) -> None:
    hub = run.hub.records(run.model_id)
    assert hub.status_names() == ["INITIATED", "PREPARED", "RUNNING", "RESULTS_UPLOADED"]
    assert all(s.applied for s in hub.statuses)
    dev = [r["status"] for r in run.result.dev_ledger(run.dev, "status.jsonl")]
    assert dev == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]


def test_every_metric_a_client_sent_arrives_once_with_its_trust_and_round(run: DualRun) -> None:
    sent = run.result.client_metrics()
    # both ways in: the FLIP helper (with and without an x-axis) and NVFlare's AnalyticsSender
    assert {"train_loss", "LOSS_FUNCTION", "val_score", "accuracy", "scores/dice", "scores/iou"} <= {
        m["label"] for m in sent
    }
    assert {m["site"] for m in sent} == {"site-1", "site-2"} and {m["round"] for m in sent} == {0, 1}
    expected = Counter(metric_key(m) for m in sent)

    hub_metrics = run.hub.records(run.model_id).metrics
    received = Counter(metric_key(m.__dict__, "fl_client_name") for m in hub_metrics)
    assert received == expected
    assert all(m.trust == f"Trust_{str(m.fl_client_name)[-1]}" for m in hub_metrics)

    dev_metrics = run.result.dev_ledger(run.dev, "metrics.jsonl")
    assert Counter(metric_key(m, "fl_client_name") for m in dev_metrics) == expected
    assert all(m["trust"] == f"Trust_{m['fl_client_name'][-1]}" for m in dev_metrics)


def test_progress_events_reach_the_h2_hub_in_round_order(run: DualRun) -> None:
    events = [log for log in run.hub.records(run.model_id).logs if log.event_type]
    assert all(log.log is None for log in run.hub.records(run.model_id).logs)  # no client failure
    for round_number in (1, 2):
        this_round = [e for e in events if e.global_round == round_number]
        kinds = [e.event_type for e in this_round]
        assert kinds == ["ROUND_STARTED", "CLIENT_RESULT_RECEIVED", "CLIENT_RESULT_RECEIVED", "ROUND_AGGREGATED"]
        assert this_round[0].details == {"total_rounds": 2} and this_round[0].fl_client_name is None
        assert {e.fl_client_name for e in this_round[1:3]} == {"site-1", "site-2"}
        assert all(e.details == {"size_bytes": 9 * 4} for e in this_round[1:3])  # the 3x3 float32 update
        assert this_round[3].details == {"returned": 2, "expected": 2}
    rounds = [e.global_round or 0 for e in events]
    assert rounds == sorted(rounds)


def _check_results_zip(path: Path, hub_api: str | None) -> None:
    assert zip_names(path) == {"server.npy", "cross_val_results.json", "run_summary.json", "provenance.json"}
    checked = verify_results_zip(path)  # every member's SHA-256 as provenance.json records it
    assert checked.ok and sorted(checked.verified) == ["cross_val_results.json", "run_summary.json", "server.npy"]
    provenance = checked.provenance or {}
    assert (provenance["job_type"], provenance["rounds_completed"]) == ("standard", 2)
    assert provenance["trusts"] == ["Trust_1", "Trust_2"] and provenance["app_code"]["files"] >= 3
    cross_site = zip_json(path, "cross_val_results.json")
    assert set(cross_site) == {"site-1", "site-2"}
    assert all(set(models) == {"SRV_server"} and "accuracy" in models["SRV_server"] for models in cross_site.values())
    summary = zip_json(path, "run_summary.json")
    assert summary["outcome"] == "completed" and summary["hub_api"] == hub_api
    assert summary["rounds_aggregated"] == 2 and summary["client_errors"] == {}
    assert summary["metrics"]["dropped"] == {}  # the NaN each site sent was dropped at the site (flip_nvflare.metrics)
    assert summary["metrics"]["forwarded"] == sum(sum(c.values()) for c in summary["metrics"]["by_client"].values())
    assert summary["trusts"] == {"site-1": "Trust_1", "site-2": "Trust_2"}
    assert [s["status"] for s in summary["statuses"]] == ["INITIATED", "PREPARED", "TRAINING_STARTED"]
    import io
    import zipfile

    with zipfile.ZipFile(path) as zf:
        model = np.load(io.BytesIO(zf.read("server.npy")))
    initial = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    np.testing.assert_allclose(model, initial + 2.0)  # two rounds of +1 on each client, averaged


def test_results_zip_in_s3_under_the_model_key_with_model_and_cross_site_results(run: DualRun) -> None:
    keys = run.hub.results(run.model_id)
    assert len(keys) == 1
    assert re.fullmatch(rf"{run.model_id}/\d{{8}}_\d{{6}}\.zip", keys[0]), keys
    path = download_results(run.hub.env(), keys[0], run.root / "downloaded" / "results.zip")
    _check_results_zip(path, "h2")


def test_dev_mode_writes_the_same_results_zip_locally(run: DualRun) -> None:
    zips = run.result.dev_zips(run.dev)
    assert len(zips) == 1 and zips[0].parent.name == run.model_id
    _check_results_zip(zips[0], None)


def test_job_folders_are_removed_after_the_upload(run: DualRun) -> None:
    run_dir = run.result.job.server_run_dir
    assert not run.result.results_folder(run.dev).exists()
    assert not run.result.results_folder(run.prod).exists()
    assert not (run_dir / "cross_site_val").exists()
    assert not (run_dir / "models" / "server.npy").exists()
    assert (run_dir / "app_server").is_dir()  # only what was uploaded goes
