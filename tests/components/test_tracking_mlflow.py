"""MlflowTracker against a real MLflow tracking server (SQLite store, served artifacts), read back with MlflowClient.

One server for the module; the outage test stops it and starts it again on the same port and store.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient
from nvflare.apis.fl_constant import FLContextKey

from flip_nvflare.components.metrics import MetricsForwarder
from flip_nvflare.components.status import StatusReporter
from flip_nvflare.components.tracking import MlflowTracker
from flip_nvflare.constants import FlipEvents, FlipProps
from tests.components.fakes import RecordingHub
from tests.engine import MODEL_ID, FakeEngine, fed_event_data, hub_calls, server_job
from tests.support.mlflow_server import MlflowServer

SECRET = "s3cr3t-service-key"
SERVER_CONFIG: dict[str, Any] = {
    "format_version": 2,
    "model_id": MODEL_ID,
    "global_rounds": 2,
    "min_clients": 2,
    "participating_clients": ["site-1", "site-2"],
    "flip_mode": "dev",
    "learning_rate": 0.01,
    "ignore_result_error": False,
    # never params: secrets, SQL, data paths, structures
    "api_key": SECRET,
    "query": "SELECT accession_id FROM omop.cohort WHERE age > 40",
    "cohort_note": "SELECT * FROM patients",
    "dev_images_dir": "/data/images",
    "notes": "/mnt/trust/patients.csv",
    "server": {"task_request_interval": 0.5},
    "components": [],
}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


def write_server_config(engine: FakeEngine) -> None:
    config_dir = Path(engine.workspace.get_app_config_dir(engine.job_id))
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config_fed_server.json").write_text(json.dumps(SERVER_CONFIG))


def send(engine: FakeEngine, site: str, label: str, value: float, round_: int, **extra: Any) -> None:
    data = fed_event_data(site, label=label, value=value, round=round_, **extra)
    engine.fire(FlipEvents.FED_SEND_METRIC, **{FLContextKey.EVENT_DATA: data})


def the_run(client: MlflowClient, prefix: str) -> Any:
    experiment = client.get_experiment_by_name(f"{prefix}/{MODEL_ID}")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))
    return [(m.step, m.value) for m in points]


def finished(tracker: MlflowTracker) -> dict[str, Any]:
    assert tracker.session is not None
    section: dict[str, Any] = tracker.session.summary()["tracking"]
    return section


def test_a_run_reaches_mlflow_with_its_metrics_params_tags_and_results_zip(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    tracker = MlflowTracker(tracking_uri=mlflow_server.url, experiment_prefix="flip-run")
    engine, hub = server_job(tmp_path, StatusReporter(), MetricsForwarder(), tracker)
    write_server_config(engine)
    engine.start_run()
    sent = []
    for round_ in range(3):
        for site in ("site-1", "site-2"):
            value = round_ + int(site[-1]) / 10
            send(engine, site, "val_loss", value, round_)
            sent.append((site, round_, value))
    for epoch in range(4):  # an x-axis: the step is the x value
        send(engine, "site-1", "train_loss", 1.0 / (epoch + 1), 0, x_value=epoch * 10, x_label="epoch")
    send(engine, "site-2", "dice (mean)", 0.5, 1)  # characters MLflow refuses in keys
    results = tmp_path / "results.zip"
    with zipfile.ZipFile(results, "w") as zf:
        zf.writestr("run_summary.json", "{}")
    engine.fire(
        FlipEvents.RESULTS_UPLOADED, **{FlipProps.RESULTS_LOCATION: str(results), FlipProps.RESULTS_FLIP_ID: "flip"}
    )
    engine.end_run()

    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = the_run(client, "flip-run")
    run_id = run.info.run_id
    for trust, site in (("Trust_1", "site-1"), ("Trust_2", "site-2")):
        expected = [(r, v) for s, r, v in sent if s == site]
        assert history(client, run_id, f"val_loss/{trust}") == expected
    assert history(client, run_id, "train_loss/Trust_1") == [(e * 10, 1.0 / (e + 1)) for e in range(4)]
    assert history(client, run_id, "dice _mean_/Trust_2") == [(1, 0.5)]
    assert set(run.data.metrics) == {
        "val_loss/Trust_1",
        "val_loss/Trust_2",
        "train_loss/Trust_1",
        "dice _mean_/Trust_2",
    }

    params = run.data.params
    assert params == {
        "format_version": "2",
        "model_id": MODEL_ID,
        "global_rounds": "2",
        "min_clients": "2",
        "participating_clients": '["site-1", "site-2"]',
        "flip_mode": "dev",
        "learning_rate": "0.01",
        "ignore_result_error": "false",
    }
    tags = run.data.tags
    assert tags["flip.final_status"] == "RESULTS_UPLOADED" and tags["flip.outcome"] == "completed"
    assert tags["flip.model_id"] == MODEL_ID and tags["flip.job_id"] == engine.job_id
    assert tags["flip_nvflare.version"] and tags["nvflare.version"] and tags["flip.results"] == "artifact"
    assert tags["flip.tracking.metrics_not_logged"] == "0"
    everything = json.dumps({"params": params, "tags": tags})
    assert SECRET not in everything and "SELECT" not in everything and "/data" not in everything
    assert run.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(run_id, "results")]
    assert artifacts == ["results/results.zip"]

    section = finished(tracker)
    assert section["metrics"]["queued"] == section["metrics"]["logged"] == 11
    assert section["not_logged"] == 0 and section["provisional"] is False and section["run_id"] == run_id
    assert len(hub_calls(hub, "metric")) == 11  # the hub got every metric too


def test_results_uploaded_to_s3_become_a_registered_model_version(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    tracker = MlflowTracker(tracking_uri=mlflow_server.url, experiment_prefix="flip-s3")
    engine, _hub = server_job(tmp_path, StatusReporter(), MetricsForwarder(), tracker)
    engine.start_run()
    send(engine, "site-1", "val_loss", 0.5, 0)
    source = f"s3://results-bucket/flip/{MODEL_ID}/20261205_090000.zip"
    engine.fire(FlipEvents.RESULTS_UPLOADED, **{FlipProps.RESULTS_LOCATION: source, FlipProps.RESULTS_FLIP_ID: "flip"})
    engine.end_run()

    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    run = the_run(client, "flip-s3")
    versions = client.search_model_versions(f"name = 'flip-{MODEL_ID}'")
    assert [(v.source, v.run_id) for v in versions] == [(source, run.info.run_id)]
    assert run.data.tags["flip.results"] == "s3"
    assert client.list_artifacts(run.info.run_id) == []


def test_mlflow_down_for_part_of_the_run_costs_the_hub_nothing_and_mlflow_gets_it_after_retries(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """Definition: an outage shorter than retry_timeout is retried through; nothing is lost anywhere."""
    hub = RecordingHub()
    tracker = MlflowTracker(
        tracking_uri=mlflow_server.url, experiment_prefix="flip-outage", drain_timeout=60, retry_max_delay=1.0
    )
    engine, _ = server_job(tmp_path, StatusReporter(), MetricsForwarder(), tracker, hub=hub)
    engine.start_run()
    for round_ in range(3):
        send(engine, "site-1", "val_loss", float(round_), round_)
    writer = tracker.writer
    assert writer is not None
    wait_for(lambda: writer.counts().logged == 3, "the first metrics in MLflow")

    mlflow_server.stop()
    for round_ in range(3, 8):  # sent while MLflow is down
        send(engine, "site-1", "val_loss", float(round_), round_)
    # the hub gets them while MLflow is still down
    wait_for(lambda: len(hub_calls(hub, "metric")) == 8, "the hub to get every metric")
    assert not mlflow_server.healthy() and writer.counts().logged == 3
    mlflow_server.start().wait_ready()
    engine.end_run()

    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = the_run(client, "flip-outage")
    assert history(client, run.info.run_id, "val_loss/Trust_1") == [(r, float(r)) for r in range(8)]
    section = finished(tracker)
    assert section["metrics"]["logged"] == 8 and section["not_logged"] == 0
    assert run.info.status == "FINISHED"


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited in vain for {what}")
        time.sleep(0.05)
