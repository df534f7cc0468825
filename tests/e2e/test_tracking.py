"""A simulator run (dev mode, 2 sites, 1 round) with MlflowTracker and a real MLflow tracking server.

The tracking URI reaches the server as ``MLFLOW_TRACKING_URI``, as on a FLIP server. The MLflow
server is started together with the simulator (the tracker retries until it answers), then the run
is read back with MlflowClient and compared with what the hub (the dev ledger) received.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient

from tests.components.simjobs import FlipSide, RunResult, WidgetJob, zip_json
from tests.support.mlflow_server import MlflowServer

pytestmark = pytest.mark.e2e

TRACKER = "flip_nvflare.components.tracking.MlflowTracker"


@dataclass
class TrackedJob(WidgetJob):
    """The widget test job with MlflowTracker listed last (after the ResultsUploader)."""

    def _server_config(self) -> dict[str, Any]:
        config = super()._server_config()
        config["components"].append({"id": "mlflow_tracker", "path": TRACKER, "args": {"flip_id": "flip"}})
        config["learning_rate"] = 0.01  # a param
        config["api_key"] = "not-for-mlflow"  # never a param
        return config


@dataclass
class TrackedRun:
    result: RunResult
    side: FlipSide
    model_id: str
    client: MlflowClient


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackedRun]:
    root = tmp_path_factory.mktemp("tracked-run")
    side = FlipSide("flip", "dev", {"dev_output_dir": str(root / "dev_output")})
    model_id = str(uuid.uuid4())
    job = TrackedJob(root=root / "job-root", model_id=model_id, sides=[side], rounds=1)
    server = MlflowServer(root / "mlflow")
    try:
        server.start()  # not waited for: the simulator starts at once and the tracker retries
        result = job.run(env={"MLFLOW_TRACKING_URI": server.url}, timeout=120)
        server.wait_ready()
        yield TrackedRun(result, side, model_id, MlflowClient(tracking_uri=server.url))
    finally:
        server.stop()


def test_the_run_completes(tracked: TrackedRun) -> None:
    assert tracked.result.return_code == 0, tracked.result.server_log()[-3000:]


def test_every_hub_metric_is_in_mlflow_once_in_order_with_its_step(tracked: TrackedRun) -> None:
    hub = tracked.result.dev_ledger(tracked.side, "metrics.jsonl")
    assert hub, "the hub got no metric"
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in hub:
        x = record.get("x_value")
        step = int(x) if record.get("x_label") and x is not None and float(x).is_integer() else record["global_round"]
        key = f"{record['label']}/{record['trust']}"
        expected.setdefault(key, []).append((step, float(record["result"])))
    run = the_run(tracked)
    assert set(run.data.metrics) == set(expected)
    for key, points in expected.items():
        history = sorted(tracked.client.get_metric_history(run.info.run_id, key), key=lambda m: (m.timestamp, m.step))
        assert [(m.step, m.value) for m in history] == points, key


def test_the_run_has_params_tags_status_and_the_results_zip(tracked: TrackedRun) -> None:
    run = the_run(tracked)
    assert run.data.params["learning_rate"] == "0.01" and run.data.params["global_rounds"] == "1"
    assert "api_key" not in run.data.params
    tags = run.data.tags
    assert tags["flip.final_status"] == "RESULTS_UPLOADED" and tags["flip.model_id"] == tracked.model_id
    assert tags["flip.tracking.metrics_not_logged"] == "0"
    assert run.info.status == "FINISHED"
    zips = tracked.result.dev_zips(tracked.side)
    assert len(zips) == 1
    assert [a.path for a in tracked.client.list_artifacts(run.info.run_id, "results")] == [f"results/{zips[0].name}"]
    section = zip_json(zips[0], "run_summary.json")["tracking"]
    # written into the zip before the MLflow run is finished (and here maybe before MLflow answered)
    assert section["enabled"] is True and section["provisional"] is True
    assert section["run_id"] in (None, run.info.run_id) and section["experiment"] == f"flip/{tracked.model_id}"
    assert section["metrics"]["queued"] == section["metrics"]["logged"] + section["metrics"]["pending"]
    assert "FLIP MLflow tracking for model" in tracked.result.server_log() + tracked.result.simulator_output()


def the_run(tracked: TrackedRun) -> Any:
    experiment = tracked.client.get_experiment_by_name(f"flip/{tracked.model_id}")
    assert experiment is not None
    runs = tracked.client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]
