"""The hub goes down in the middle of a run (an H1 hub for 30 s, an H2 hub for 20 s), and the S3
upload fails: every metric and status still reaches the hub exactly once, statuses in order and
every metric series (a site's values of one label) in the order it was sent; the results stay on
the server."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

import pytest

from flip_emulator.handle import EmulatorHandle, start_emulator
from tests.components.simjobs import (
    FlipSide,
    PlanContext,
    PlannedRun,
    RunPool,
    RunResult,
    WidgetJob,
    metric_key,
    planned_run,
)

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 30.0


@dataclass
class OutageRun:
    result: RunResult
    hub: EmulatorHandle
    model_id: str
    side: FlipSide


@planned_run("outage", seconds=65)
def plan(ctx: PlanContext) -> PlannedRun:
    hub = ctx.keep(start_emulator(ctx.tmp("outage-emulator"), hub_api="h1"))
    root = ctx.tmp("outage-run")
    model = hub.register_model(trusts=("Trust_1", "Trust_2"))
    side = FlipSide("flip", "prod")
    outage = {
        "id": "hub_outage",
        "path": "flip_widgets_app.HubOutage",
        "args": {"admin_url": hub.trust_url, "round": 1, "seconds": OUTAGE_SECONDS, "mode": "refuse"},
    }
    job = WidgetJob(
        root=root,
        model_id=model.model_id,
        sides=[side],
        rounds=7,
        trainer_args={"epochs": 2, "epoch_sleep": 2.5},
        server_extras=[outage],
    )
    env = hub.env(UPLOADED_FEDERATED_DATA_BUCKET="s3://no-such-results-bucket")
    return PlannedRun(job, dict(env), {"hub": hub, "model_id": model.model_id, "side": side})


@planned_run("outage_h2", seconds=55)
def plan_h2(ctx: PlanContext) -> PlannedRun:
    hub = ctx.keep(start_emulator(ctx.tmp("outage-h2-emulator"), hub_api="h2"))
    model = hub.register_model(trusts=("Trust_1", "Trust_2"))
    side = FlipSide("flip", "prod")
    outage = {
        "id": "hub_outage",
        "path": "flip_widgets_app.HubOutage",
        "args": {"admin_url": hub.trust_url, "round": 1, "seconds": 20.0, "mode": "refuse"},
    }
    job = WidgetJob(
        root=ctx.tmp("outage-h2-run"),
        model_id=model.model_id,
        sides=[side],
        rounds=6,
        trainer_args={"epochs": 2, "epoch_sleep": 2.0},
        server_extras=[outage],
    )
    return PlannedRun(job, dict(hub.env()), {"hub": hub, "model_id": model.model_id, "side": side})


@pytest.fixture(scope="module")
def run(widget_runs: RunPool) -> OutageRun:
    planned, result = widget_runs.result("outage")
    return OutageRun(result=result, **planned.data)


@pytest.fixture(scope="module")
def run_h2(widget_runs: RunPool) -> OutageRun:
    planned, result = widget_runs.result("outage_h2")
    return OutageRun(result=result, **planned.data)


def _series_as_sent(run: OutageRun) -> dict[tuple[str, str], list[tuple[int, float]]]:
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for m in run.result.client_metrics():  # each site's ledger, in the order the site sent
        series.setdefault((m["site"], m["label"]), []).append((m["round"], round(float(m["value"]), 9)))
    return series


def _series_as_received(run: OutageRun) -> dict[tuple[str, str], list[tuple[int, float]]]:
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for m in sorted(run.hub.records(run.model_id).metrics, key=lambda m: m.seq):  # in the order the hub got them
        site = m.fl_client_name or str(m.trust).replace("Trust_", "site-")
        series.setdefault((site, m.label), []).append((m.global_round, round(m.result, 9)))
    return series


@pytest.mark.parametrize("which", ["run", "run_h2"])
def test_every_series_arrives_in_the_order_it_was_sent_exactly_once(which: str, request: pytest.FixtureRequest) -> None:
    outage_run: OutageRun = request.getfixturevalue(which)
    assert outage_run.result.return_code == 0, outage_run.result.server_log()[-3000:]
    sent = _series_as_sent(outage_run)
    assert len(sent) >= 4 and all(len(values) >= 5 for values in sent.values())
    assert _series_as_received(outage_run) == sent
    assert outage_run.hub.duplicates(outage_run.model_id) == []  # and no retry was recorded twice
    times = sorted(m.received_at for m in outage_run.hub.records(outage_run.model_id).metrics)
    assert max(b - a for a, b in itertools.pairwise(times)) >= 15  # the outage really held metrics back


def test_the_hub_was_down_in_the_middle_of_the_run(run: OutageRun) -> None:
    assert run.result.return_code == 0, run.result.server_log()[-3000:]
    records = run.hub.records(run.model_id)
    times = sorted([s.received_at for s in records.statuses] + [m.received_at for m in records.metrics])
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) >= OUTAGE_SECONDS - 5
    sent_rounds = {m["round"] for m in run.result.client_metrics()}
    assert {1, 2, 3, 4, 5} <= sent_rounds  # clients kept training (and sending) while the hub was down


def test_every_status_arrives_in_order_h1_names(run: OutageRun) -> None:
    # the upload failed: on an H1 hub the upload-failure status is ERROR
    assert run.hub.records(run.model_id).status_names() == ["INITIATED", "PREPARED", "TRAINING_STARTED", "ERROR"]


def test_every_metric_arrives_exactly_once(run: OutageRun) -> None:
    sent = Counter(metric_key(m) for m in run.result.client_metrics())
    metrics = run.hub.records(run.model_id).metrics
    assert {m.trust for m in metrics} == {"Trust_1", "Trust_2"}  # H1 knows trusts only
    as_sites = [{**m.__dict__, "site": str(m.trust).replace("Trust_", "site-"), "x_value": None} for m in metrics]
    # H1 plots against the round: no x-axis is sent
    expected = Counter((*key[:4], None, None) for key in sent)
    assert Counter(metric_key(m) for m in as_sites) == expected
    assert run.hub.records(run.model_id).logs == []  # H1 has no typed progress events
    assert " NOT delivered" not in run.result.server_log()


def test_failed_upload_keeps_every_file_and_says_where(run: OutageRun) -> None:
    assert run.hub.results(run.model_id) == []
    folder = run.result.results_folder(run.side)
    assert {p.name for p in folder.iterdir()} == {
        "server.npy",
        "cross_val_results.json",
        "run_summary.json",
        "provenance.json",
    }
    run_dir = run.result.job.server_run_dir
    assert (run_dir / "models" / "server.npy").is_file() and (run_dir / "cross_site_val").is_dir()
    log = run.result.server_log()
    assert "Uploading the results failed" in log and str(folder) in log
