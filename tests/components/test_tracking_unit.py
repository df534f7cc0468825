"""MlflowTracker and its writer with a fake MLflow store: queue bound, retries on a fake clock, refusals, the end.

No real time is asserted: waits go through FakeClock, and the store's calls are gated by events.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from nvflare.apis.fl_constant import FLContextKey

from flip_nvflare.components.metrics import MetricsForwarder, QueuedMetric, add_metric_observer
from flip_nvflare.components.status import StatusReporter
from flip_nvflare.components.tracking import (
    MetricPoint,
    MlflowTracker,
    MlflowWriter,
    RunEnd,
    RunStart,
    config_params,
    metric_step,
    mlflow_key,
)
from flip_nvflare.constants import FlipEvents, FlipProps
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.retry import RetryPolicy
from tests.engine import MODEL_ID, FakeEngine, fed_event_data, hub_calls, server_job
from tests.support.clock import Background, FakeClock

#: Real seconds a test waits for the writer's thread to reach a point (a guard against hanging, not a timing assert).
GUARD = 10.0


class Refused(Exception):
    """What the fake store raises for a refusal (MLflow's 4xx)."""


class FakeStore:
    """An in-memory MLflow: records every call; ``fail`` decides whether a call raises.

    ``gate``, when given, is waited for by ``log_metrics`` (``entered`` is set first), so a test can
    hold a batch in flight.
    """

    def __init__(self, fail: Any = None, gate: threading.Event | None = None) -> None:
        self.fail = fail
        self.gate = gate
        self.entered = threading.Event()
        self.calls: list[str] = []
        self.metrics: list[MetricPoint] = []
        self.metric_calls: list[list[str]] = []
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.runs: dict[str, str] = {}
        self.artifacts: list[str] = []
        self.versions: list[tuple[str, str]] = []
        self.status: str | None = None
        self._lock = threading.Lock()

    def _call(self, name: str, *args: Any) -> None:
        with self._lock:
            self.calls.append(name)
        if self.fail is not None:
            self.fail(name, args)

    def ensure_experiment(self, name: str, artifact_location: str | None) -> str:
        self._call("experiment", name)
        return "1"

    def ensure_run(self, experiment_id: str, run_name: str, token: str, tags: Mapping[str, str]) -> str:
        self._call("run", token)
        self.tags.update(tags)
        return self.runs.setdefault(token, f"run-{len(self.runs) + 1}")

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        self._call("params")
        self.params.update(params)

    def log_metrics(self, run_id: str, metrics: Sequence[MetricPoint]) -> None:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(GUARD)
        with self._lock:
            self.metric_calls.append([m.key for m in metrics])
        self._call("metrics", list(metrics))
        with self._lock:
            self.metrics.extend(metrics)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._call("tags")
        self.tags.update(tags)

    def log_artifact(self, run_id: str, path: str) -> None:
        self._call("artifact")
        self.artifacts.append(path)

    def register_model_version(self, name: str, source: str, run_id: str) -> str:
        self._call("version")
        self.versions.append((name, source))
        return "1"

    def end_run(self, run_id: str, status: str) -> None:
        self._call("end")
        self.status = status

    def is_refusal(self, exc: Exception) -> bool:
        return isinstance(exc, Refused)


def point(i: int, key: str = "loss/Trust_1") -> MetricPoint:
    return MetricPoint(key, float(i), i, 1_000 + i)


def writer_for(store: FakeStore, clock: FakeClock | None = None, **kw: Any) -> MlflowWriter:
    retry = kw.pop(
        "retry", RetryPolicy(max_attempts=None, initial_delay=1.0, max_delay=8.0, total_timeout=60.0, jitter=0)
    )
    return MlflowWriter(lambda: store, retry=retry, clock=clock, **{"max_pending": 100, "batch_size": 50, **kw})


START = RunStart(experiment="flip/m", run_name="job", token="t", tags={"flip.job_id": "job"}, params={"rounds": "2"})


def test_a_full_queue_drops_new_metrics_and_counts_them_without_blocking() -> None:
    gate = threading.Event()
    store = FakeStore(gate=gate)
    writer = writer_for(store, max_pending=5, batch_size=1)
    writer.start(START)
    assert writer.log_metric(point(0))
    assert store.entered.wait(GUARD)  # metric 0 is in flight, held by the gate
    assert all(writer.log_metric(point(i)) for i in range(1, 6))  # 5 wait: the bound
    assert not any(writer.log_metric(point(i)) for i in range(6, 9))  # 3 dropped, at once
    counts = writer.counts()
    assert (counts.queued, counts.pending, counts.dropped) == (9, 5, 3)
    gate.set()
    final = writer.close(GUARD)
    assert [p.value for p in store.metrics] == [float(i) for i in range(6)]
    assert (final.logged, final.dropped, final.not_logged, final.pending) == (6, 3, 3, 0)


def test_an_outage_is_retried_with_backoff_and_nothing_is_logged_twice() -> None:
    clock = FakeClock()
    down = {"on": True}

    def fail(name: str, args: tuple[Any, ...]) -> None:
        if name == "metrics" and down["on"]:
            raise ConnectionError("connection refused")

    store = FakeStore(fail=fail)
    writer = writer_for(store, clock)
    writer.start(START)
    for i in range(3):
        writer.log_metric(point(i))
    assert clock.wait_for_blocked(1) == [1.0]  # first retry after 1 s
    clock.advance(1.0)
    assert clock.wait_for_blocked(1) == [3.0]  # then 2 s more
    down["on"] = False
    clock.advance(2.0)
    final = Background(lambda: writer.close(30.0))
    counts = final.result()
    assert [p.value for p in store.metrics] == [0.0, 1.0, 2.0]
    assert counts.logged == 3 and counts.not_logged == 0
    assert clock.requested[:2] == [1.0, 2.0]


def test_an_outage_longer_than_the_retry_timeout_costs_the_metrics_of_that_batch_only() -> None:
    clock = FakeClock()
    down = {"on": True}

    def fail(name: str, args: tuple[Any, ...]) -> None:
        if name == "metrics" and down["on"]:
            raise ConnectionError("connection refused")

    store = FakeStore(fail=fail)
    retry = RetryPolicy(max_attempts=None, initial_delay=1.0, max_delay=4.0, total_timeout=10.0, jitter=0)
    writer = writer_for(store, clock, retry=retry)
    writer.start(START)
    for i in range(3):
        writer.log_metric(point(i))
    clock.run(lambda: writer.counts().failed == 3)  # 1 + 2 + 4 s, then the next delay would pass 10 s
    down["on"] = False
    writer.log_metric(point(3))
    counts = Background(lambda: writer.close(30.0)).result()
    assert [p.value for p in store.metrics] == [3.0]
    assert (counts.logged, counts.failed, counts.not_logged) == (1, 3, 3)


def test_a_refused_batch_is_not_retried_and_only_the_refused_value_is_lost() -> None:
    def fail(name: str, args: tuple[Any, ...]) -> None:
        if name == "metrics" and any(p.key == "bad" for p in args[0]):
            raise Refused()

    store = FakeStore(fail=fail)
    writer = writer_for(store)
    writer.start(START)
    gate_points = [point(0), MetricPoint("bad", 1.0, 0, 1), point(2)]
    for p in gate_points:
        writer.log_metric(p)
    counts = writer.close(GUARD)
    assert [p.value for p in store.metrics] == [0.0, 2.0]
    assert (counts.logged, counts.rejected) == (2, 1)
    assert sum("bad" in keys for keys in store.metric_calls) == 2  # in its batch, then alone: never retried


def test_what_is_still_queued_at_the_deadline_is_counted_undelivered() -> None:
    clock = FakeClock()
    gate = threading.Event()
    store = FakeStore(gate=gate)
    writer = writer_for(store, clock, batch_size=1)
    writer.start(START)
    for i in range(4):
        writer.log_metric(point(i))
    assert store.entered.wait(GUARD)
    closing = Background(lambda: writer.close(5.0))
    clock.wait_for_blocked(1)
    clock.advance(5.0)
    counts = closing.result()
    gate.set()
    assert (counts.undelivered, counts.logged, counts.pending) == (4, 0, 0)


def test_no_run_means_every_metric_is_counted_failed() -> None:
    def fail(name: str, args: tuple[Any, ...]) -> None:
        if name == "run":
            raise Refused()

    store = FakeStore(fail=fail)
    writer = writer_for(store)
    writer.start(START)
    writer.log_metric(point(0))
    writer.end(RunEnd(tags={}, status="FINISHED"))
    counts = writer.close(GUARD)
    assert (counts.failed, counts.logged) == (1, 0) and writer.run_id is None and store.status is None


# ---------------------------------------------------------------------- the widget


def send(engine: FakeEngine, site: str, label: str, value: float, round_: int, **extra: Any) -> None:
    data = fed_event_data(site, label=label, value=value, round=round_, **extra)
    engine.fire(FlipEvents.FED_SEND_METRIC, **{FLContextKey.EVENT_DATA: data})


def test_without_a_tracking_uri_the_tracker_is_inert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    stores: list[str] = []
    tracker = MlflowTracker(store_factory=lambda uri: stores.append(uri) or FakeStore())  # type: ignore[func-returns-value]
    engine, hub = server_job(tmp_path, MetricsForwarder(), tracker)
    engine.start_run()
    send(engine, "site-1", "loss", 1.0, 0)
    assert tracker.session is not None
    summary = tracker.session.summary()["tracking"]
    engine.end_run()
    assert tracker.writer is None and stores == []
    assert summary == {"backend": "mlflow", "enabled": False, "reason": summary["reason"]}
    assert "MLFLOW_TRACKING_URI" in summary["reason"]
    assert len(hub_calls(hub, "metric")) == 1


def test_the_uri_comes_from_the_environment_and_metrics_params_tags_reach_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:pw@mlflow.example:5000")
    store = FakeStore()
    uris: list[str] = []

    def factory(uri: str) -> FakeStore:
        uris.append(uri)
        return store

    tracker = MlflowTracker(store_factory=factory)
    engine, hub = server_job(tmp_path, StatusReporter(), MetricsForwarder(), tracker)
    engine.start_run()
    send(engine, "site-1", "loss", 1.0, 0)
    send(engine, "site-2", "acc", 0.5, 3, x_value=30, x_label="step")
    engine.fire(FlipEvents.RESULTS_UPLOADED, **{FlipProps.RESULTS_LOCATION: "s3://b/m/1.zip"})
    engine.end_run()

    assert uris == ["http://user:pw@mlflow.example:5000"]
    assert [(p.key, p.value, p.step) for p in store.metrics] == [("loss/Trust_1", 1.0, 0), ("acc/Trust_2", 0.5, 30)]
    assert store.tags["flip.final_status"] == "RESULTS_UPLOADED" and store.status == "FINISHED"
    assert store.versions == [(f"flip-{MODEL_ID}", "s3://b/m/1.zip")]
    assert len(hub_calls(hub, "metric")) == 2


def test_a_tracker_listed_before_the_other_widgets_finishes_once_the_hub_session_closes(tmp_path: Path) -> None:
    store = FakeStore()
    tracker = MlflowTracker(tracking_uri="http://mlflow", store_factory=lambda uri: store)
    engine, _hub = server_job(tmp_path, tracker, StatusReporter(), MetricsForwarder())
    engine.start_run()
    send(engine, "site-1", "loss", 1.0, 0)
    engine.end_run()
    finisher = tracker.finisher
    assert finisher is not None
    finisher.join(GUARD)
    assert not finisher.is_alive()
    assert store.status == "FINISHED" and [p.value for p in store.metrics] == [1.0]
    assert tracker.session is not None and tracker.session.summary()["tracking"]["provisional"] is False


def test_an_observer_that_raises_costs_the_hub_nothing(tmp_path: Path) -> None:
    forwarder = MetricsForwarder()
    engine, hub = server_job(tmp_path, forwarder)
    engine.start_run()
    assert forwarder.session is not None
    seen: list[QueuedMetric] = []

    def broken(metric: QueuedMetric) -> None:
        seen.append(metric)
        raise RuntimeError("observer bug")

    remove = add_metric_observer(forwarder.session, broken)
    send(engine, "site-1", "loss", 1.0, 2)
    remove()
    send(engine, "site-1", "loss", 2.0, 3)
    engine.end_run()
    assert [(m.trust, m.label, m.value, m.round) for m in seen] == [("Trust_1", "loss", 1.0, 2)]
    assert len(hub_calls(hub, "metric")) == 2


def test_params_never_carry_secrets_queries_paths_or_structures() -> None:
    config = {
        "global_rounds": 3,
        "learning_rate": 0.1,
        "flip_mode": "dev",
        "participating_clients": ["site-1", "site-2"],
        "use_dp": True,
        "missing": None,
        "INTERNAL_SERVICE_KEY": "x",
        "hub_token": "x",
        "query": "SELECT 1",
        "description": "SELECT name FROM patients",
        "dev_dataframe": "cohort.csv",
        "output": "/tmp/out",
        "link": "https://example.org",
        "sites": ["site-1", "/data/site-2"],
        "server": {"a": 1},
        "components": [],
        "bad key!": 1,
    }
    assert config_params(config) == {
        "global_rounds": "3",
        "learning_rate": "0.1",
        "flip_mode": "dev",
        "participating_clients": '["site-1", "site-2"]',
        "use_dp": "true",
        "missing": "null",
    }


@pytest.mark.parametrize(
    ("label", "trust", "key"),
    [
        ("val_loss", "Trust_1", "val_loss/Trust_1"),
        ("scores/dice", "Trust_2", "scores/dice/Trust_2"),
        ("dice (mean)", "Trust_1", "dice _mean_/Trust_1"),
        ("../x//y", "Trust_1", "__/x/y/Trust_1"),
        ("a:b", "T", "a_b/T"),
    ],
)
def test_metric_keys_are_valid_for_mlflow(label: str, trust: str, key: str) -> None:
    assert mlflow_key(label, trust) == key


def test_the_step_is_the_round_or_a_whole_x_value() -> None:
    assert metric_step(QueuedMetric("c", "T", "l", 1.0, 4)) == 4
    assert metric_step(QueuedMetric("c", "T", "l", 1.0, 4, x_value=120.0, x_label="step")) == 120
    assert metric_step(QueuedMetric("c", "T", "l", 1.0, 4, x_value=1.5, x_label="epoch")) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tracking_uri": ""}, "tracking_uri must be a non-empty string"),
        ({"experiment_prefix": "/"}, "experiment_prefix must be a non-empty string"),
        ({"max_pending": 0}, "max_pending must be a positive number"),
        ({"log_results": "false"}, "log_results must be true or false"),
        ({"registered_model_name": ""}, "registered_model_name must be a non-empty string"),
    ],
)
def test_bad_arguments_fail_when_the_job_is_built(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(FlipConfigError, match=message):
        MlflowTracker(**kwargs)
