"""Runs that do not complete: aborted (a FedAvg run), and ended by a client failure (ScatterAndGather).

Each reports to a dev ledger and to the emulated H2 hub in the same simulator run.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from tests.components.simjobs import (
    DualRun,
    FlipSide,
    PlanContext,
    PlannedRun,
    RunPool,
    dual_run,
    metric_key,
    plan_dual_run,
    planned_run,
)

pytestmark = pytest.mark.e2e

FAILURE_LINE = "ValueError: training loss diverged at epoch 1"


@planned_run("aborted", seconds=23)
def plan_aborted(ctx: PlanContext) -> PlannedRun:
    extras = [{"id": "abort_at", "path": "flip_widgets_app.AbortAt", "args": {"round": 1}}]
    return plan_dual_run(
        ctx, "aborted-run", rounds=2, server_extras=extras, trainer_args={"epoch_sleep": 0.5}, controller="fedavg"
    )


@planned_run("failed", seconds=20)
def plan_failed(ctx: PlanContext) -> PlannedRun:
    return plan_dual_run(ctx, "failed-run", rounds=2, trainer_args={"fail_round": 1, "fail_site": "site-2"})


@pytest.fixture(scope="module")
def aborted(widget_runs: RunPool) -> DualRun:
    return dual_run(widget_runs, "aborted")


@pytest.fixture(scope="module")
def failed(widget_runs: RunPool) -> DualRun:
    return dual_run(widget_runs, "failed")


def _summary(run: DualRun, side: FlipSide) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((run.result.results_folder(side) / "run_summary.json").read_text())
    return summary


# ---------------------------------------------------------------------- aborted


def test_aborted_run_ends_with_stopped(aborted: DualRun) -> None:
    assert aborted.hub.records(aborted.model_id).status_names() == ["INITIATED", "PREPARED", "RUNNING", "STOPPED"]
    dev = [r["status"] for r in aborted.result.dev_ledger(aborted.dev, "status.jsonl")]
    assert dev == ["INITIATED", "PREPARED", "TRAINING_STARTED", "STOPPED"]


def test_aborted_run_uploads_nothing_and_keeps_its_results(aborted: DualRun) -> None:
    assert aborted.hub.records(aborted.model_id).model is not None
    assert aborted.hub.results(aborted.model_id) == []
    assert aborted.result.dev_zips(aborted.dev) == []
    for side in (aborted.dev, aborted.prod):
        folder = aborted.result.results_folder(side)
        assert (folder / "server.npy").is_file()
        summary = _summary(aborted, side)
        assert summary["outcome"] == "aborted" and summary["failure"] is None
    assert (aborted.result.job.server_run_dir / "models" / "server.npy").is_file()
    assert "its results are not uploaded; they are kept in" in aborted.result.server_log()


def test_metrics_reach_the_hub_once_and_nothing_received_is_left_behind(aborted: DualRun) -> None:
    # NVFlare stops firing incoming federated events once a run is aborted, so metrics a client sends
    # after the abort may never reach the server; everything the server did receive must arrive once.
    sent = Counter(metric_key(m) for m in aborted.result.client_metrics())
    received = Counter(metric_key(m.__dict__, "fl_client_name") for m in aborted.hub.records(aborted.model_id).metrics)
    assert max(received.values()) == 1 and set(received) <= set(sent)
    assert {key for key in sent if key[2] == 0} <= set(received)  # round 0 ended before the abort
    delivery = _summary(aborted, aborted.prod)["hub_delivery"]
    assert delivery["undelivered"] == {} and delivery["rejected"] == {} and delivery["dropped"] == {}
    assert " NOT delivered" not in aborted.result.server_log()


def test_round_progress_of_fedavg_reaches_the_hub(aborted: DualRun) -> None:
    events = [log for log in aborted.hub.records(aborted.model_id).logs if log.event_type]
    first = [(e.event_type, e.fl_client_name) for e in events if e.global_round == 1]
    assert first[0] == ("ROUND_STARTED", None) and first[-1] == ("ROUND_AGGREGATED", None)
    assert sorted(first[1:3]) == [("CLIENT_RESULT_RECEIVED", "site-1"), ("CLIENT_RESULT_RECEIVED", "site-2")]
    aggregated = next(e for e in events if e.event_type == "ROUND_AGGREGATED")
    assert aggregated.details == {"returned": 2, "expected": 2}
    assert ("ROUND_STARTED", None) in [(e.event_type, e.fl_client_name) for e in events if e.global_round == 2]


# ---------------------------------------------------------------------- a client's trainer raises


def test_client_failure_ends_the_run_with_error(failed: DualRun) -> None:
    assert failed.result.return_code != 0  # the simulator reports the fatal error
    assert failed.hub.records(failed.model_id).status_names() == ["INITIATED", "PREPARED", "RUNNING", "ERROR"]
    dev = [r["status"] for r in failed.result.dev_ledger(failed.dev, "status.jsonl")]
    assert dev == ["INITIATED", "PREPARED", "TRAINING_STARTED", "ERROR"]


def test_client_exception_text_reaches_the_hub_logs_for_its_trust(failed: DualRun) -> None:
    logs = [log for log in failed.hub.records(failed.model_id).logs if log.log is not None]
    assert len(logs) == 1
    (log,) = logs
    assert log.fl_client_name == "site-2" and log.trust == "Trust_2" and log.success is False
    assert log.log is not None and log.log.startswith("Task 'train' (round 1) failed with EXECUTION_EXCEPTION.\n")
    assert FAILURE_LINE in log.log and "Traceback" in log.log
    assert str(failed.result.job.root) not in log.log  # the client runner sanitized the paths

    dev_logs = [r for r in failed.result.dev_ledger(failed.dev, "logs.jsonl") if r.get("log")]
    assert [(r["fl_client_name"], r["trust"]) for r in dev_logs] == [("site-2", "Trust_2")]
    assert dev_logs[0]["log"] == log.log


def test_failed_run_keeps_its_results_and_records_the_client_error(failed: DualRun) -> None:
    assert failed.hub.results(failed.model_id) == []
    summary = _summary(failed, failed.prod)
    assert summary["outcome"] == "failed" and "site-2" in summary["failure"]
    assert [(e["task"], e["round"], e["return_code"]) for e in summary["client_errors"]["site-2"]] == [
        ("train", 1, "EXECUTION_EXCEPTION")
    ]
    assert list(summary["client_errors"]) == ["site-2"]
