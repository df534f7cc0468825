"""An evaluation job (InitEvaluation + NVFlare's GlobalModelEval) whose clients run a stock NVFlare
Client API script: statuses, SummaryWriter metrics and the evaluation results, dev and H2 hub."""

from __future__ import annotations

import re
from collections import Counter

import pytest

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


@planned_run("evaluation", seconds=25)
def plan(ctx: PlanContext) -> PlannedRun:
    return plan_dual_run(ctx, "evaluation-run", evaluation=True, client_api_eval=True)


@pytest.fixture(scope="module")
def run(widget_runs: RunPool) -> DualRun:
    return dual_run(widget_runs, "evaluation")


def test_evaluation_job_reports_the_lifecycle(run: DualRun) -> None:
    assert run.result.return_code == 0, run.result.server_log()[-3000:]
    assert run.hub.records(run.model_id).status_names() == ["INITIATED", "PREPARED", "RUNNING", "RESULTS_UPLOADED"]
    dev = [r["status"] for r in run.result.dev_ledger(run.dev, "status.jsonl")]
    assert dev == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]


def test_summary_writer_metrics_of_a_stock_script_reach_the_hub(run: DualRun) -> None:
    # what eval_script.py logs with NVFlare's SummaryWriter (the evaluated model is all 5.0)
    expected = Counter(
        metric_key({"site": site, "label": label, "round": 0, "value": value, "x_value": x, "x_label": x_label})
        for site in ("site-1", "site-2")
        for label, value, x, x_label in [
            *[("eval_loss", 1.0 / (b + 1), b, "batch") for b in range(3)],
            ("accuracy", 0.5, None, None),
        ]
    )
    hub_metrics = run.hub.records(run.model_id).metrics
    assert Counter(metric_key(m.__dict__, "fl_client_name") for m in hub_metrics) == expected
    assert {m.trust for m in hub_metrics} == {"Trust_1", "Trust_2"}
    dev_metrics = run.result.dev_ledger(run.dev, "metrics.jsonl")
    assert Counter(metric_key(m, "fl_client_name") for m in dev_metrics) == expected


def test_no_round_events_for_a_job_without_rounds(run: DualRun) -> None:
    assert run.hub.records(run.model_id).logs == []


def test_evaluation_results_are_uploaded(run: DualRun) -> None:
    (key,) = run.hub.results(run.model_id)
    assert re.fullmatch(rf"{run.model_id}/\d{{8}}_\d{{6}}\.zip", key)
    path = download_results(run.hub.env(), key, run.root / "downloaded.zip")
    for zip_path in (path, *run.result.dev_zips(run.dev)):
        assert zip_names(zip_path) == {"evaluation_results.json", "run_summary.json", "provenance.json"}
        assert zip_json(zip_path, "evaluation_results.json") == {
            "site-1": {"SRV_server": {"accuracy": 0.5}},
            "site-2": {"SRV_server": {"accuracy": 0.5}},
        }
        summary = zip_json(zip_path, "run_summary.json")
        assert summary["outcome"] == "completed" and summary["rounds_aggregated"] == 0
    assert "the results hold no model" in run.result.server_log()
