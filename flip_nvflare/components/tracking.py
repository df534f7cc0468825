"""MlflowTracker: a copy of every metric the server queues for the hub, in MLflow (optional).

With a tracking URI (the ``tracking_uri`` arg, else ``MLFLOW_TRACKING_URI`` in the FL server's
environment) the tracker keeps one MLflow run per job in the experiment ``flip/<model_id>``:

* every metric the MetricsForwarder queues for the hub (it registers as a metric observer, see
  :func:`flip_nvflare.components.metrics.add_metric_observer`), as ``<LABEL>/<trust>`` at step =
  the round, or the x value when the metric has its own x-axis and that value is a whole number;
* the job's non-secret top-level config (``config_fed_server.json``) as params: scalars and lists
  of scalars only, never a key whose name suggests a secret, a query or a location
  (key, token, password, query, sql, path, dir, file, url, bucket...), nor a value that looks like
  a path, a URL or SQL;
* tags: model id, job id, flip mode, hub generation, flip-nvflare and NVFlare versions, and at the
  end the final status and the outcome;
* at the end the results zip as an artifact (``results/``) when it is a local file (dev mode), or,
  when it was uploaded to S3 (prod), a version of the registered model ``flip-<model_id>`` whose
  source is the ``s3://`` object.

MLflow never holds up the hub: the observer only appends to the tracker's own bounded queue
(``max_pending`` metrics; beyond that new ones are dropped and counted) and one background thread
talks to MLflow, retrying each call with backoff (:class:`~flip_nvflare.retry.RetryPolicy`) for up
to ``retry_timeout`` seconds, so an MLflow outage shorter than that costs nothing. What still did
not reach MLflow is counted by reason (``dropped``: queue full; ``failed``: retries ran out, or no
run could be made; ``rejected``: MLflow refused it; ``undelivered``: still queued at the deadline)
in the run summary's ``tracking`` section and in the server's log line ``FLIP MLflow tracking for
model ... at the end of the run``. No key, patient value or exception text goes to MLflow, and the
log names exceptions by type only.

The run is finished after the hub delivery has drained: list the tracker after the other FLIP
widgets (the last component). Listed earlier, it finishes the MLflow run in the background once the
hub session has closed, which a server process that exits at once may cut short.

The ``mlflow`` package (extra ``mlflow``) is imported only by the background thread. Without a
tracking URI, or without ``mlflow``, the tracker is inert (the run summary says why).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext

from flip_nvflare.args import json_bool, positive_number
from flip_nvflare.components.delivery import Clock, SystemClock
from flip_nvflare.components.metrics import QueuedMetric, add_metric_observer
from flip_nvflare.components.session import HubSession, RunOutcome
from flip_nvflare.components.widget import HubWidget, run_outcome
from flip_nvflare.constants import DEFAULT_FLIP_ID, FlipEvents, FlipProps, ModelStatus
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.retry import RetryPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Environment variable of the tracking URI (MLflow's own).
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
#: Name of the run summary section.
SUMMARY_SECTION = "tracking"
#: MLflow's limits: metrics and params/tags per log_batch call, key and param value lengths.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
#: Seconds a tracker listed before other FLIP widgets waits for the hub session to close.
SESSION_CLOSE_WAIT = 180.0
#: Top-level config keys whose names suggest a secret, a query or a location: never params.
_SECRET_NAME = re.compile(
    r"key|secret|token|passw|credential|auth|cookie|query|sql|path|dir|folder|file|url|uri|endpoint|bucket"
    r"|host|dataframe|image|cohort|project",
    re.IGNORECASE,
)
_SQL_VALUE = re.compile(r"\b(select|insert|update|delete|drop|create|alter)\b.*\b(from|into|table|set)\b", re.I | re.S)
_MAX_PARAM_STRING = 500
#: NVFlare's own structures in a config: never params.
_STRUCTURE_KEYS = frozenset({"components", "workflows", "executors", "task_data_filters", "task_result_filters"})
_KEY_CHARS = re.compile(r"[^\w\-. /]")
#: Tag names the tracker writes.
TAG_MODEL_ID = "flip.model_id"
TAG_JOB_ID = "flip.job_id"
TAG_MODE = "flip.mode"
TAG_HUB_API = "flip.hub_api"
TAG_RUN_TOKEN = "flip.run_token"
TAG_FINAL_STATUS = "flip.final_status"
TAG_OUTCOME = "flip.outcome"
TAG_RESULTS = "flip.results"
TAG_NOT_LOGGED = "flip.tracking.metrics_not_logged"
TAG_FLIP_NVFLARE_VERSION = "flip_nvflare.version"
TAG_NVFLARE_VERSION = "nvflare.version"
#: The MLflow run status of each final status (a run without one: by its outcome).
_RUN_STATUS = {
    ModelStatus.RESULTS_UPLOADED: "FINISHED",
    ModelStatus.RESULTS_UPLOAD_FAILED: "FAILED",
    ModelStatus.ERROR: "FAILED",
    ModelStatus.STOPPED: "KILLED",
}
_OUTCOME_STATUS = {RunOutcome.COMPLETED: "FINISHED", RunOutcome.ABORTED: "KILLED", RunOutcome.FAILED: "FAILED"}
_WARN_FIRST = 5
_WARN_EVERY = 1000


# ---------------------------------------------------------------------- what goes to MLflow


@dataclass(frozen=True)
class MetricPoint:
    """One metric value as MLflow stores it.

    Attributes:
        key: The metric key (``<LABEL>/<trust>``, made valid for MLflow).
        value: The value.
        step: The step (round, or whole-number x value).
        timestamp_ms: When the server queued it (milliseconds since the epoch; strictly
            increasing per key, so a retried batch never records a value twice).
    """

    key: str
    value: float
    step: int
    timestamp_ms: int


@dataclass(frozen=True)
class RunStart:
    """How to find or make the job's MLflow run.

    Attributes:
        experiment: Experiment name (``flip/<model_id>``).
        run_name: The run's name (the job id).
        token: A token unique to this run, kept as a tag, so a retried creation finds its run.
        tags: Tags set when the run is made.
        params: Params logged when the run is made.
        artifact_location: Artifact location of the experiment if the tracker creates it.
    """

    experiment: str
    run_name: str
    token: str
    tags: Mapping[str, str]
    params: Mapping[str, str]
    artifact_location: str | None = None


@dataclass(frozen=True)
class RunEnd:
    """How to finish the run.

    Attributes:
        tags: Tags to set (final status, outcome...).
        status: MLflow run status: ``FINISHED``, ``FAILED`` or ``KILLED``.
        results_file: A local results zip to log as an artifact.
        results_s3: An ``s3://`` results zip to register as a model version.
        model_name: The registered model's name.
    """

    tags: Mapping[str, str]
    status: str
    results_file: str | None = None
    results_s3: str | None = None
    model_name: str = ""


class TrackingStore(Protocol):
    """The MLflow operations the tracker makes; each must be safe to repeat after a failure."""

    def ensure_experiment(self, name: str, artifact_location: str | None) -> str:
        """Return the id of the experiment ``name``, creating it if needed."""
        ...

    def ensure_run(self, experiment_id: str, run_name: str, token: str, tags: Mapping[str, str]) -> str:
        """Return the id of the run tagged with ``token``, creating it (with ``tags``) if needed."""
        ...

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Log params (the same values again are accepted)."""
        ...

    def log_metrics(self, run_id: str, metrics: Sequence[MetricPoint]) -> None:
        """Log metric values (at most MAX_METRICS_PER_BATCH)."""
        ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags."""
        ...

    def log_artifact(self, run_id: str, path: str) -> None:
        """Upload a local file as an artifact of the run."""
        ...

    def register_model_version(self, name: str, source: str, run_id: str) -> str:
        """Make (once) a version of the registered model ``name`` pointing at ``source``; return it."""
        ...

    def end_run(self, run_id: str, status: str) -> None:
        """Mark the run as ended with ``status``."""
        ...

    def is_refusal(self, exc: Exception) -> bool:
        """Whether ``exc`` is a final refusal (retrying cannot help) rather than a transient failure."""
        ...


class MlflowStore:
    """:class:`TrackingStore` over ``mlflow``'s ``MlflowClient`` (imported here, lazily).

    Args:
        tracking_uri: The tracking URI (also used as the registry URI).
    """

    def __init__(self, tracking_uri: str) -> None:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self._metric, self._param, self._tag = Metric, Param, RunTag
        self._exception = MlflowException

    def ensure_experiment(self, name: str, artifact_location: str | None) -> str:
        """Return the id of the experiment ``name``, creating it if needed."""
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self._client.create_experiment(name, artifact_location=artifact_location))
        except self._exception as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = self._client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def ensure_run(self, experiment_id: str, run_name: str, token: str, tags: Mapping[str, str]) -> str:
        """Return the id of the run tagged with ``token``, creating it (with ``tags``) if needed."""
        found = self._client.search_runs([experiment_id], filter_string=f"tags.`{TAG_RUN_TOKEN}` = '{token}'")
        if found:
            return str(found[0].info.run_id)
        run = self._client.create_run(experiment_id, tags={**tags, TAG_RUN_TOKEN: token}, run_name=run_name)
        return str(run.info.run_id)

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        """Log params in batches of MLflow's size."""
        items = [self._param(k, v) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, metrics: Sequence[MetricPoint]) -> None:
        """Log metric values in one batch."""
        self._client.log_batch(run_id, metrics=[self._metric(m.key, m.value, m.timestamp_ms, m.step) for m in metrics])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags in batches of MLflow's size."""
        items = [self._tag(k, v) for k, v in tags.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._client.log_batch(run_id, tags=items[start : start + MAX_PARAMS_PER_BATCH])

    def log_artifact(self, run_id: str, path: str) -> None:
        """Upload ``path`` under the run's ``results/`` artifacts."""
        self._client.log_artifact(run_id, path, artifact_path="results")

    def register_model_version(self, name: str, source: str, run_id: str) -> str:
        """Make (once per run and source) a version of ``name`` pointing at ``source``."""
        try:
            self._client.create_registered_model(name, description="FLIP model trained with NVFlare")
        except self._exception as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        for version in self._client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
            if version.source == source:
                return str(version.version)
        created = self._client.create_model_version(name, source, run_id=run_id, tags={TAG_RESULTS: "s3"})
        return str(created.version)

    def end_run(self, run_id: str, status: str) -> None:
        """Mark the run as ended with ``status``."""
        self._client.set_terminated(run_id, status)

    def is_refusal(self, exc: Exception) -> bool:
        """An MLflow answer in the 4xx range (but 429) is final; anything else may pass."""
        if isinstance(exc, self._exception):
            code = int(exc.get_http_status_code())
            return 400 <= code < 500 and code != 429
        return False


# ---------------------------------------------------------------------- the background writer


class _Result(Enum):
    OK = "ok"
    FAILED = "failed"
    REFUSED = "refused"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class TrackingCounts:
    """What happened to the metrics handed to the tracker.

    Attributes:
        queued: Metrics handed to the tracker.
        logged: Metrics MLflow has.
        dropped: Dropped because the tracker's queue was full (or it was closed).
        failed: Given up after retries, or no MLflow run could be made for them.
        rejected: Refused by MLflow.
        undelivered: Still waiting (or in flight) when the end-of-run deadline passed.
        pending: Waiting now.
    """

    queued: int = 0
    logged: int = 0
    dropped: int = 0
    failed: int = 0
    rejected: int = 0
    undelivered: int = 0
    pending: int = 0

    @property
    def not_logged(self) -> int:
        """Metrics that did not reach MLflow (and will not)."""
        return self.dropped + self.failed + self.rejected + self.undelivered

    def as_dict(self) -> dict[str, int]:
        """The counts as JSON-able data."""
        return {
            "queued": self.queued,
            "logged": self.logged,
            "dropped": self.dropped,
            "failed": self.failed,
            "rejected": self.rejected,
            "undelivered": self.undelivered,
            "pending": self.pending,
        }


class MlflowWriter:
    """The tracker's bounded queue and the one thread that writes it to MLflow, in order.

    The caller queues the run's start, metrics and end; :meth:`log_metric` only appends to the queue
    (a full queue drops the new metric and counts it). The thread makes each MLflow call with
    retries (``retry``: backoff with jitter, bounded in time); a refusal is not retried. Metrics are
    sent in batches of up to ``batch_size``.

    Args:
        store_factory: Makes the :class:`TrackingStore`; called on the thread (it imports MLflow).
        max_pending: Metrics allowed to wait in the queue.
        batch_size: Metrics per MLflow call (at most MAX_METRICS_PER_BATCH).
        retry: How each MLflow call is retried.
        clock: Where time is read and waited for (the real clock if None).
        rng: Random numbers for the jitter (``random.random`` if None).
        name: A short name for the thread.
    """

    def __init__(
        self,
        store_factory: Callable[[], TrackingStore],
        *,
        max_pending: int,
        batch_size: int,
        retry: RetryPolicy,
        clock: Clock | None = None,
        rng: Callable[[], float] | None = None,
        name: str = "",
    ) -> None:
        self._store_factory = store_factory
        self._max_pending = max_pending
        self._batch_size = max(1, min(batch_size, MAX_METRICS_PER_BATCH))
        self._retry = retry
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.random
        self._cond = threading.Condition()
        self._items: deque[MetricPoint | RunStart | RunEnd] = deque()
        self._pending = 0
        self._in_flight = 0
        self._counts = {"queued": 0, "logged": 0, "dropped": 0, "failed": 0, "rejected": 0, "undelivered": 0}
        self._closing = False
        self._abandon = threading.Event()
        self._done = threading.Event()
        self._store: TrackingStore | None = None
        self._run_id: str | None = None
        self._outage = False
        self._drop_warnings = 0
        self.end_report: dict[str, str] = {}
        self._thread = threading.Thread(target=self._work, name=f"flip-mlflow-{name}", daemon=True)
        self._thread.start()

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id, once made."""
        with self._cond:
            return self._run_id

    def counts(self) -> TrackingCounts:
        """The counts so far."""
        with self._cond:
            return TrackingCounts(**self._counts, pending=self._pending)

    def start(self, start: RunStart) -> None:
        """Queue the making of the run (queue it first)."""
        self._put(start)

    def end(self, end: RunEnd) -> None:
        """Queue the end of the run (after every metric)."""
        self._put(end)

    def _put(self, item: RunStart | RunEnd) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def log_metric(self, point: MetricPoint) -> bool:
        """Queue one metric value; never blocks.

        Returns:
            Whether it was queued (False: the queue was full, or closed, and it was dropped).
        """
        with self._cond:
            self._counts["queued"] += 1
            if self._closing or self._pending >= self._max_pending:
                self._counts["dropped"] += 1
                self._drop_warnings += 1
                warn = self._drop_warnings <= _WARN_FIRST or self._drop_warnings % _WARN_EVERY == 0
                dropped = self._counts["dropped"]
            else:
                self._items.append(point)
                self._pending += 1
                self._cond.notify_all()
                return True
        if warn:
            logger.warning(
                "FLIP MLflow tracking: queue full (%d metrics); %d metric(s) dropped.", self._max_pending, dropped
            )
        return False

    def close(self, timeout: float) -> TrackingCounts:
        """Let the thread write what is queued within ``timeout`` seconds, then stop it.

        Returns:
            The final counts; what was still queued or in flight is counted as undelivered.
        """
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if not self._clock.wait(self._done, max(0.0, timeout)):
            self._abandon.set()
            with self._cond:
                self._counts["undelivered"] += self._pending + self._in_flight
                self._pending = self._in_flight = 0
                self._items.clear()
                self._cond.notify_all()
        return self.counts()

    @property
    def closed(self) -> bool:
        """Whether the thread has stopped (or was abandoned)."""
        return self._done.is_set() or self._abandon.is_set()

    # ------------------------------------------------------------------ the thread

    def _work(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._items and not self._closing:
                        self._cond.wait()
                    if not self._items or self._abandon.is_set():
                        return
                    item = self._items.popleft()
                    batch: list[MetricPoint] = []
                    if isinstance(item, MetricPoint):
                        batch.append(item)
                        while self._items and len(batch) < self._batch_size and isinstance(self._items[0], MetricPoint):
                            batch.append(self._items.popleft())  # type: ignore[arg-type]
                        self._pending -= len(batch)
                        self._in_flight = len(batch)
                if batch:
                    self._write_metrics(batch)
                elif isinstance(item, RunStart):
                    self._start_run(item)
                elif isinstance(item, RunEnd):
                    self._end_run(item)
        except Exception as exc:  # never expected: count what is left, and stop
            logger.error("FLIP MLflow tracking stopped: %s.", type(exc).__name__)
            with self._cond:
                self._counts["failed"] += self._pending + self._in_flight
                self._pending = self._in_flight = 0
                self._items.clear()
        finally:
            self._done.set()

    def _count(self, result: _Result, n: int) -> None:
        key = {
            _Result.OK: "logged",
            _Result.FAILED: "failed",
            _Result.REFUSED: "rejected",
            _Result.ABANDONED: "undelivered",
        }[result]
        with self._cond:
            if self._in_flight:  # close() may already have counted them as undelivered
                self._counts[key] += n
                self._in_flight = 0

    def _write_metrics(self, batch: list[MetricPoint]) -> None:
        run_id = self._run_id
        if run_id is None or self._store is None:
            self._count(_Result.FAILED, len(batch))
            return
        store = self._store
        result, _ = self._call("log metrics", lambda: store.log_metrics(run_id, batch))
        if result is not _Result.REFUSED or len(batch) == 1:
            self._count(result, len(batch))
            return
        # one bad value should not cost the batch: try each alone
        counts = {r: 0 for r in _Result}
        for point in batch:
            one, _ = self._call("log metric", lambda p=point: store.log_metrics(run_id, [p]))  # type: ignore[misc]
            counts[one] += 1
        with self._cond:
            if self._in_flight:
                self._counts["logged"] += counts[_Result.OK]
                self._counts["failed"] += counts[_Result.FAILED]
                self._counts["rejected"] += counts[_Result.REFUSED]
                self._counts["undelivered"] += counts[_Result.ABANDONED]
                self._in_flight = 0

    def _start_run(self, start: RunStart) -> None:
        if self._store is None:
            try:
                self._store = self._store_factory()
            except Exception as exc:
                logger.error(
                    "FLIP MLflow tracking is off: the MLflow client could not be made (%s).", type(exc).__name__
                )
                return
        store = self._store
        result, experiment_id = self._call(
            "find or create the experiment", lambda: store.ensure_experiment(start.experiment, start.artifact_location)
        )
        run_id: str | None = None
        if result is _Result.OK and experiment_id is not None:
            result, run_id = self._call(
                "find or create the run",
                lambda: store.ensure_run(experiment_id, start.run_name, start.token, start.tags),
            )
        if result is not _Result.OK or run_id is None:
            logger.error(
                "FLIP MLflow tracking: no MLflow run could be made (%s); metrics are counted, not logged.", result.value
            )
            return
        with self._cond:
            self._run_id = run_id
        if start.params:
            self._call("log params", lambda: store.log_params(run_id, start.params))
        logger.info("FLIP MLflow tracking: run %s in experiment %r.", run_id, start.experiment)

    def _end_run(self, end: RunEnd) -> None:
        run_id, store = self._run_id, self._store
        if run_id is None or store is None:
            self.end_report = {"run": "none"}
            return
        report: dict[str, str] = {}
        counts = self.counts()
        tags = {**end.tags, TAG_NOT_LOGGED: str(counts.not_logged + counts.pending)}
        report["tags"] = self._call("set the final tags", lambda: store.set_tags(run_id, tags))[0].value
        if end.results_file:
            path = end.results_file
            result, _ = self._call("log the results zip", lambda: store.log_artifact(run_id, path))
            report["results"] = "artifact" if result is _Result.OK else result.value
        elif end.results_s3:
            source = end.results_s3
            result, version = self._call(
                "register the results as a model version",
                lambda: store.register_model_version(end.model_name, source, run_id),
            )
            report["results"] = f"model version {end.model_name} {version}" if result is _Result.OK else result.value
        report["ended"] = self._call("end the run", lambda: store.end_run(run_id, end.status))[0].value
        self.end_report = report

    def _call(self, what: str, call: Callable[[], T]) -> tuple[_Result, T | None]:
        """Make one MLflow call with retries; never raises."""
        started = self._clock.monotonic()
        attempts = 0
        while True:
            if self._abandon.is_set():
                return _Result.ABANDONED, None
            try:
                value = call()
            except Exception as exc:
                attempts += 1
                store = self._store
                if store is not None and store.is_refusal(exc):
                    logger.warning("FLIP MLflow tracking: MLflow refused to %s (%s).", what, type(exc).__name__)
                    return _Result.REFUSED, None
                delay = self._retry.delay(attempts, self._rng)
                elapsed = self._clock.monotonic() - started
                timeout = self._retry.total_timeout
                if not self._retry.allows(attempts) or (timeout is not None and elapsed + delay > timeout):
                    logger.error(
                        "FLIP MLflow tracking: gave up trying to %s after %d attempt(s) (%s).",
                        what,
                        attempts,
                        type(exc).__name__,
                    )
                    return _Result.FAILED, None
                if not self._outage:
                    self._outage = True
                    logger.warning(
                        "FLIP MLflow tracking: could not %s (%s); retrying with backoff.", what, type(exc).__name__
                    )
                if self._clock.wait(self._abandon, delay):
                    return _Result.ABANDONED, None
                continue
            if self._outage:
                self._outage = False
                logger.info("FLIP MLflow tracking: MLflow answers again.")
            return _Result.OK, value


# ---------------------------------------------------------------------- helpers


def mlflow_key(label: str, trust: str) -> str:
    """The MLflow metric key ``<label>/<trust>``, with characters MLflow refuses replaced by ``_``."""
    parts = []
    for part in f"{label}/{trust}".split("/"):
        part = _KEY_CHARS.sub("_", part).strip()
        if part in ("", "."):
            continue
        parts.append("__" if part == ".." else part)
    key = "/".join(parts) or "metric"
    return key[:MAX_KEY_LENGTH].rstrip("/")


def metric_step(metric: QueuedMetric) -> int:
    """The MLflow step: the x value when the metric has an x-axis and it is a whole number, else the round."""
    x = metric.x_value
    if metric.x_label is not None and x is not None and float(x).is_integer() and abs(x) < 2**62:
        return int(x)
    return metric.round


def _safe_string(value: str) -> bool:
    return not (
        len(value) > _MAX_PARAM_STRING
        or "/" in value
        or "\\" in value
        or value.startswith("~")
        or "://" in value
        or _SQL_VALUE.search(value)
    )


def _param_value(value: Any) -> str | None:
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return value if _safe_string(value) else None
    if isinstance(value, list) and all(v is None or isinstance(v, (bool, int, float, str)) for v in value):
        if any(isinstance(v, str) and not _safe_string(v) for v in value):
            return None
        text = json.dumps(value)
        return text if len(text) <= MAX_PARAM_VALUE_LENGTH else None
    return None  # dicts, components, workflows...


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The params of a job's top-level config: scalars and lists of scalars that cannot be secrets.

    Keys whose names suggest a secret, a query or a location are left out, and so are values that
    look like a path, a URL or SQL, long strings, and structures (components, workflows...).
    """
    params: dict[str, str] = {}
    for key, value in config.items():
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or key in _STRUCTURE_KEYS:
            continue
        if _SECRET_NAME.search(key):
            continue
        if _KEY_CHARS.search(key):
            continue
        text = _param_value(value)
        if text is not None:
            params[key] = text
    return params


def read_server_config(fl_ctx: FLContext) -> dict[str, Any]:
    """The job's ``config_fed_server.json`` on this server, or an empty dict if it cannot be read."""
    try:
        workspace = fl_ctx.get_engine().get_workspace()
        path = Path(workspace.get_app_config_dir(fl_ctx.get_job_id())) / "config_fed_server.json"
        data = json.loads(path.read_text(encoding="utf-8"))
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def final_status(session: HubSession) -> ModelStatus | None:
    """The last final status the run reported to the hub, if any."""
    for entry in reversed(session.journal.summary()["statuses"]):
        try:
            status = ModelStatus(entry["status"])
        except ValueError:
            continue
        if status.is_final:
            return status
    return None


def _redacted(uri: str) -> str:
    """``uri`` without any user or password part, for the log."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


# ---------------------------------------------------------------------- the widget


class MlflowTracker(HubWidget):
    """Copies the run's hub metrics to MLflow, with params, tags and the results (see the module).

    Args:
        flip_id: Id of the FlipBackend component.
        tracking_uri: MLflow tracking URI (else ``MLFLOW_TRACKING_URI``; with neither the tracker is
            inert). May hold credentials: it is never logged with them nor written anywhere.
        experiment_prefix: Experiments are named ``<prefix>/<model_id>``.
        artifact_location: Artifact location given to an experiment the tracker creates (else the
            tracking server's default).
        registered_model_name: Registered model of S3 results (default ``flip-<model_id>``).
        log_results: Log the results zip (artifact or model version) at the end.
        max_pending: Metrics allowed to wait for MLflow; beyond that new ones are dropped and counted.
        batch_size: Metrics per MLflow call.
        retry_timeout: Seconds each MLflow call is retried (with backoff) before it is given up.
        retry_max_delay: Longest wait between two attempts (the first is 0.5 s, doubling up to this).
        http_timeout: Seconds per MLflow HTTP request, set for MLflow's client
            (``MLFLOW_HTTP_REQUEST_TIMEOUT``) unless the environment sets it; MLflow's own HTTP
            retries are turned off (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``) unless the environment
            sets them, so that only this tracker retries; MLflow's printing of run URLs to stdout is
            turned off (``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``) unless the environment sets it.
        drain_timeout: Seconds allowed at the end of the run to write what is queued.
        store_factory: Tests: makes the store for a tracking URI (default :class:`MlflowStore`).
        clock: Tests: the writer's clock.
    """

    def __init__(
        self,
        flip_id: str = DEFAULT_FLIP_ID,
        tracking_uri: str | None = None,
        experiment_prefix: str = "flip",
        artifact_location: str | None = None,
        registered_model_name: str | None = None,
        log_results: bool = True,
        max_pending: int = 20_000,
        batch_size: int = 500,
        retry_timeout: float = 120.0,
        retry_max_delay: float = 10.0,
        http_timeout: float = 10.0,
        drain_timeout: float = 30.0,
        store_factory: Callable[[str], TrackingStore] | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(flip_id)
        name = type(self).__name__
        for arg, value in (("tracking_uri", tracking_uri), ("artifact_location", artifact_location)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise FlipConfigError(f"{name} {arg} must be a non-empty string (or left out).")
        if registered_model_name is not None and (
            not isinstance(registered_model_name, str) or not registered_model_name.strip()
        ):
            raise FlipConfigError(f"{name} registered_model_name must be a non-empty string (or left out).")
        if not isinstance(experiment_prefix, str) or not experiment_prefix.strip("/ "):
            raise FlipConfigError(f"{name} experiment_prefix must be a non-empty string, e.g. 'flip'.")
        self._tracking_uri = tracking_uri.strip() if tracking_uri else None
        self._prefix = experiment_prefix.strip("/ ")
        self._artifact_location = artifact_location
        self._model_name = registered_model_name
        self._log_results = json_bool(name, "log_results", log_results)
        self._max_pending = int(positive_number(name, "max_pending", max_pending))
        self._batch_size = int(positive_number(name, "batch_size", batch_size))
        self._retry_timeout = positive_number(name, "retry_timeout", retry_timeout)
        self._retry_max_delay = max(0.5, positive_number(name, "retry_max_delay", retry_max_delay))
        self._http_timeout = positive_number(name, "http_timeout", http_timeout)
        self._drain_timeout = positive_number(name, "drain_timeout", drain_timeout)
        self._store_factory = store_factory or MlflowStore
        self._clock = clock
        self._lock = threading.Lock()
        self._writer: MlflowWriter | None = None
        self._remove_observer: Callable[[], None] | None = None
        self._inert_reason: str | None = None
        self._experiment = ""
        self._results_location: str | None = None
        self._outcome: RunOutcome | None = None
        self._last_ts: dict[str, int] = {}
        self._final: TrackingCounts | None = None
        self._finisher: threading.Thread | None = None

    @property
    def writer(self) -> MlflowWriter | None:
        """The run's writer, while tracking is on."""
        return self._writer

    @property
    def finisher(self) -> threading.Thread | None:
        """The thread finishing the MLflow run in the background, if the session was still open at END_RUN."""
        return self._finisher

    def retry_policy(self) -> RetryPolicy:
        """Each MLflow call: retried after 0.5 s doubling to ``retry_max_delay`` (jitter), for ``retry_timeout`` s."""
        return RetryPolicy(
            max_attempts=None,
            initial_delay=0.5,
            max_delay=self._retry_max_delay,
            total_timeout=self._retry_timeout,
            jitter=0.5,
        )

    # ------------------------------------------------------------------ events

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """As every hub widget; after END_RUN (its hold on the session let go) finish the MLflow run."""
        super().handle_event(event_type, fl_ctx)
        if event_type == EventType.END_RUN:
            try:
                self._after_end_run(fl_ctx)
            except Exception as exc:  # tracking must never break the run's end
                self.log_warning(fl_ctx, f"{self.name} could not finish the MLflow run ({type(exc).__name__}).", False)

    def on_event(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        """Start tracking at START_RUN, note the results, stop observing at END_RUN."""
        if event_type == EventType.START_RUN:
            self._start(fl_ctx, session)
        elif event_type == FlipEvents.RESULTS_UPLOADED:
            if fl_ctx.get_prop(FlipProps.RESULTS_FLIP_ID, None) in (None, self.flip_id):
                location = fl_ctx.get_prop(FlipProps.RESULTS_LOCATION, None)
                with self._lock:
                    self._results_location = location if isinstance(location, str) and location else None
        elif event_type == EventType.END_RUN:
            self._outcome = run_outcome(fl_ctx, session)

    def _start(self, fl_ctx: FLContext, session: HubSession) -> None:
        with self._lock:
            self._writer = None
            self._final = None
            self._finisher = None
            self._results_location = None
            self._outcome = None
            self._last_ts = {}
            self._experiment = f"{self._prefix}/{session.model_id}"
        try:
            session.add_summary_section(SUMMARY_SECTION, self._summary)
        except FlipConfigError:
            self.log_warning(fl_ctx, f"{self.name}: the run summary already has a tracking section.", False)
        uri = self._tracking_uri or os.environ.get(TRACKING_URI_ENV, "").strip()
        if not uri:
            self._inert_reason = f"no tracking_uri in the job config and no {TRACKING_URI_ENV} on the server"
            self.log_info(fl_ctx, f"MLflow tracking is off: {self._inert_reason}.")
            return
        if self._store_factory is MlflowStore and importlib.util.find_spec("mlflow") is None:
            self._inert_reason = "the mlflow package is not installed (pip install 'flip-nvflare[mlflow]')"
            self.log_warning(fl_ctx, f"MLflow tracking is off: {self._inert_reason}.", fire_event=False)
            return
        self._inert_reason = None
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", f"{self._http_timeout:g}")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # the URL may hold credentials
        factory = self._store_factory
        writer = MlflowWriter(
            lambda: factory(uri),
            max_pending=self._max_pending,
            batch_size=self._batch_size,
            retry=self.retry_policy(),
            clock=self._clock,
            name=session.model_id[:8],
        )
        job_id = str(fl_ctx.get_job_id())
        tags = {
            TAG_MODEL_ID: session.model_id,
            TAG_JOB_ID: job_id,
            TAG_MODE: session.flip_mode,
            TAG_HUB_API: session.hub_api.value if session.hub_api else "dev",
            TAG_FLIP_NVFLARE_VERSION: _version("flip-nvflare"),
            TAG_NVFLARE_VERSION: _version("nvflare"),
        }
        writer.start(
            RunStart(
                experiment=self._experiment,
                run_name=job_id,
                token=uuid.uuid4().hex,
                tags=tags,
                params=config_params(read_server_config(fl_ctx)),
                artifact_location=self._artifact_location,
            )
        )
        with self._lock:
            self._writer = writer
        self._remove_observer = add_metric_observer(session, self._observe)
        self.log_info(fl_ctx, f"MLflow tracking to {_redacted(uri)}, experiment {self._experiment!r}.")

    def _observe(self, metric: QueuedMetric) -> None:
        """Metric observer: queue the metric for MLflow (on NVFlare's event thread; never blocks)."""
        writer = self._writer
        if writer is None:
            return
        key = mlflow_key(metric.label, metric.trust)
        with self._lock:
            now = int(time.time() * 1000)
            stamp = max(now, self._last_ts.get(key, -1) + 1)
            self._last_ts[key] = stamp
        writer.log_metric(MetricPoint(key, float(metric.value), metric_step(metric), stamp))

    # ------------------------------------------------------------------ the end

    def _after_end_run(self, fl_ctx: FLContext) -> None:
        if self._remove_observer is not None:
            self._remove_observer()
            self._remove_observer = None
        writer, session = self._writer, self.session
        if writer is None or session is None:
            return
        if session.closed:  # the hub is drained: finish here, within drain_timeout
            self._finish(session, writer)
            return
        self.log_info(
            fl_ctx,
            "MLflow tracking: other FLIP widgets still hold the hub session; the MLflow run is finished in the "
            "background once the hub delivery is done (list MlflowTracker last to finish it here).",
        )
        self._finisher = threading.Thread(
            target=self._finish_when_closed, args=(session, writer), name="flip-mlflow-finish", daemon=False
        )
        self._finisher.start()

    def _finish_when_closed(self, session: HubSession, writer: MlflowWriter) -> None:
        clock = self._clock or SystemClock()
        deadline = clock.monotonic() + SESSION_CLOSE_WAIT
        never = threading.Event()
        while not session.closed and clock.monotonic() < deadline:
            clock.wait(never, 0.1)
        try:
            self._finish(session, writer)
        except Exception as exc:  # a background thread: log and end
            logger.warning("FLIP MLflow tracking could not finish the run (%s).", type(exc).__name__)

    def _finish(self, session: HubSession, writer: MlflowWriter) -> None:
        status = final_status(session)
        outcome = self._outcome or RunOutcome.COMPLETED
        tags = {TAG_OUTCOME: outcome.value}
        if status is not None:
            tags[TAG_FINAL_STATUS] = status.value
        with self._lock:
            location = self._results_location
        results_file = results_s3 = None
        if self._log_results and location:
            if location.startswith("s3://"):
                results_s3 = location
                tags[TAG_RESULTS] = "s3"
            elif Path(location).is_file():
                results_file = location
                tags[TAG_RESULTS] = "artifact"
        tags.setdefault(TAG_RESULTS, "none")
        writer.end(
            RunEnd(
                tags=tags,
                status=_RUN_STATUS.get(status, _OUTCOME_STATUS[outcome]) if status else _OUTCOME_STATUS[outcome],
                results_file=results_file,
                results_s3=results_s3,
                model_name=self._model_name or f"flip-{session.model_id}",
            )
        )
        counts = writer.close(self._drain_timeout)
        with self._lock:
            self._final = counts
        line = (
            f"{counts.logged} of {counts.queued} metric(s) logged; not logged: {counts.dropped} dropped (queue "
            f"full), {counts.failed} failed, {counts.rejected} rejected, {counts.undelivered} undelivered; "
            f"run {writer.run_id or 'not made'} in experiment {self._experiment!r}; "
            + ", ".join(f"{k}: {v}" for k, v in sorted(writer.end_report.items()))
        )
        level = logging.ERROR if counts.not_logged or writer.run_id is None else logging.INFO
        logger.log(level, "FLIP MLflow tracking for model %s at the end of the run: %s.", session.model_id, line)

    def _summary(self) -> dict[str, Any]:
        """The run summary's ``tracking`` section (counts and names only)."""
        writer = self._writer
        if writer is None:
            return {"backend": "mlflow", "enabled": False, "reason": self._inert_reason or "not started"}
        with self._lock:
            final = self._final
        counts = final or writer.counts()
        section: dict[str, Any] = {
            "backend": "mlflow",
            "enabled": True,
            "experiment": self._experiment,
            "run_id": writer.run_id,
            "metrics": counts.as_dict(),
            "not_logged": counts.not_logged,
            "provisional": final is None,
        }
        if final is None:
            section["note"] = (
                "written before the MLflow run was finished; the final figures are in the FL server's log "
                "line 'FLIP MLflow tracking for model ... at the end of the run'"
            )
        return section
