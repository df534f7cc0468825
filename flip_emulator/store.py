"""The emulator's SQLite database: the model registry and a record of everything the services received.

One file (``<data_dir>/emulator.sqlite``) holds, for both services:

- ``models`` and ``model_trusts``: the registry (which trusts are linked to which model);
- ``statuses``, ``metrics``, ``logs``: every hub message accepted, in arrival order (``seq``);
- ``cohort_queries``, ``downloads``, ``uploads``: every trust call past the key check, with its
  outcome (cohort SQL is stored only as its SHA-256 and length, never as text);
- ``requests``: every request to a service route, with status, injected fault and timestamps.

Timestamps are ``time.time()`` seconds. The database is in WAL mode, so ``flip-nvflare emulate
--show`` can read it while the emulator runs.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    model_id TEXT PRIMARY KEY, project_id TEXT, status TEXT NOT NULL, registered_at REAL NOT NULL,
    registered_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS model_trusts (
    model_id TEXT NOT NULL, trust TEXT NOT NULL, PRIMARY KEY (model_id, trust));
CREATE TABLE IF NOT EXISTS statuses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, model_id TEXT NOT NULL, status TEXT NOT NULL,
    applied INTEGER NOT NULL, hub_api TEXT NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, model_id TEXT NOT NULL, trust TEXT, fl_client_name TEXT,
    global_round INTEGER NOT NULL, label TEXT NOT NULL, result REAL NOT NULL, x_value REAL, x_label TEXT,
    hub_api TEXT NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, model_id TEXT NOT NULL, trust TEXT, fl_client_name TEXT,
    log TEXT, success INTEGER NOT NULL, event_type TEXT, global_round INTEGER, details TEXT,
    hub_api TEXT NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cohort_queries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, project_id TEXT, query_sha256 TEXT NOT NULL,
    query_chars INTEGER NOT NULL, status_code INTEGER NOT NULL, rows INTEGER, received_at REAL NOT NULL,
    ended_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS downloads (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, net_id TEXT NOT NULL, accession_id TEXT NOT NULL,
    resource_type TEXT NOT NULL, assessor_type TEXT NOT NULL, status_code INTEGER NOT NULL,
    cached INTEGER NOT NULL, path TEXT, received_at REAL NOT NULL, started_at REAL NOT NULL,
    ended_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, net_id TEXT NOT NULL, accession_id TEXT NOT NULL,
    scan_id TEXT NOT NULL, resource_id TEXT NOT NULL, files TEXT NOT NULL, exist_ok INTEGER NOT NULL,
    status_code INTEGER NOT NULL, received_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, service TEXT NOT NULL, route TEXT NOT NULL,
    method TEXT NOT NULL, path TEXT NOT NULL, status_code INTEGER NOT NULL, fault TEXT,
    started_at REAL NOT NULL, ended_at REAL NOT NULL, key_headers TEXT NOT NULL DEFAULT '');
"""

_RECORD_TABLES = ("statuses", "metrics", "logs", "cohort_queries", "downloads", "uploads", "requests")


@dataclass(frozen=True)
class StatusRecord:
    """A status the hub received (``applied`` is false when the H2 STOPPED rule ignored it)."""

    seq: int
    model_id: str
    status: str
    applied: bool
    hub_api: str
    received_at: float


@dataclass(frozen=True)
class MetricRecord:
    """A metric the hub accepted. ``trust`` is the hub trust it was filed under."""

    seq: int
    model_id: str
    trust: str | None
    fl_client_name: str | None
    global_round: int
    label: str
    result: float
    x_value: float | None
    x_label: str | None
    hub_api: str
    received_at: float


@dataclass(frozen=True)
class LogRecord:
    """A log line or (H2) typed progress event the hub accepted."""

    seq: int
    model_id: str
    trust: str | None
    fl_client_name: str | None
    log: str | None
    success: bool
    event_type: str | None
    global_round: int | None
    details: dict[str, Any] | None
    hub_api: str
    received_at: float


@dataclass(frozen=True)
class CohortRecord:
    """A cohort request (the SQL is kept only as its SHA-256 and length)."""

    seq: int
    project_id: str | None
    query_sha256: str
    query_chars: int
    status_code: int
    rows: int | None
    received_at: float
    ended_at: float


@dataclass(frozen=True)
class DownloadRecord:
    """An image download: ``started_at`` is when it got its turn, ``ended_at`` when it finished."""

    seq: int
    net_id: str
    accession_id: str
    resource_type: str
    assessor_type: str
    status_code: int
    cached: bool
    path: str | None
    received_at: float
    started_at: float
    ended_at: float


@dataclass(frozen=True)
class UploadRecord:
    """An image upload request and its outcome."""

    seq: int
    net_id: str
    accession_id: str
    scan_id: str
    resource_id: str
    files: list[str]
    exist_ok: bool
    status_code: int
    received_at: float


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request to a service route (admin and health routes are not recorded)."""

    seq: int
    service: str
    route: str
    method: str
    path: str
    status_code: int
    fault: str | None
    started_at: float
    ended_at: float
    #: Names (never values) of the key headers the request carried, comma-separated and sorted.
    key_headers: str = ""


@dataclass(frozen=True)
class DuplicateRecord:
    """Repeats of one hub write, recognised by its ``Idempotency-Key`` (bodies are never kept).

    Attributes:
        route: ``hub.status``, ``hub.metrics`` or ``hub.logs``.
        key: The ``Idempotency-Key`` value.
        count: Requests with this key after the first one (route and model alike): each got the
            first answer again, or 422 if it was not the same request.
        conflicts: How many of them were a different request (another status, another body),
            answered 422.
    """

    route: str
    key: str
    count: int
    conflicts: int = 0


@dataclass(frozen=True)
class ModelInfo:
    """A registered model."""

    model_id: str
    project_id: str | None
    status: str
    trusts: list[str]
    registered_by: str
    registered_at: float


@dataclass(frozen=True)
class ModelRecords:
    """What the hub received for one model.

    Attributes:
        model: The registry entry (``None`` if the model is unknown).
        statuses: Statuses in arrival order (ignored ones included, with ``applied=False``).
        metrics: Metrics in arrival order.
        logs: Logs and typed events in arrival order.
        duplicates: Hub writes repeated with an ``Idempotency-Key`` already seen for the route and
            model, in the order of their first repeat (none were recorded again). Known to the running
            emulator only (its admin routes and handle), not to ``--show``.
    """

    model_id: str
    model: ModelInfo | None
    statuses: list[StatusRecord] = field(default_factory=list)
    metrics: list[MetricRecord] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    duplicates: list[DuplicateRecord] = field(default_factory=list)

    def status_names(self, *, applied_only: bool = False) -> list[str]:
        """The status names received, in order."""
        return [s.status for s in self.statuses if s.applied or not applied_only]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRecords:
        """Rebuild from :meth:`to_json` output."""
        model = data.get("model")
        return cls(
            model_id=data["model_id"],
            model=ModelInfo(**model) if model else None,
            statuses=[StatusRecord(**s) for s in data.get("statuses", [])],
            metrics=[MetricRecord(**m) for m in data.get("metrics", [])],
            logs=[LogRecord(**lg) for lg in data.get("logs", [])],
            duplicates=[DuplicateRecord(**d) for d in data.get("duplicates", [])],
        )


class RecordStore:
    """Thread-safe access to the emulator database.

    Args:
        path: The SQLite file (created with its folder if missing).
        read_only: Open for reading only (for ``--show``).
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(requests)")}
            if "key_headers" not in columns:  # a record database from an earlier version
                self._conn.execute("ALTER TABLE requests ADD COLUMN key_headers TEXT NOT NULL DEFAULT ''")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    def _insert(self, table: str, values: dict[str, Any]) -> int:
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._lock:
            cursor = self._conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(values.values()))
            return int(cursor.lastrowid or 0)

    def _select(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, tuple(params)))

    # ------------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table."""
        rows = self._select("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the ``meta`` table."""
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ registry

    def register_model(
        self, model_id: str, trusts: Iterable[str], *, project_id: str | None, registered_by: str
    ) -> ModelInfo:
        """Add a model (or add trusts and set the project of a known one)."""
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO models (model_id, project_id, status, registered_at, registered_by) "
                    "VALUES (?, ?, 'PENDING', ?, ?) ON CONFLICT(model_id) DO UPDATE SET "
                    "project_id = COALESCE(excluded.project_id, models.project_id)",
                    (model_id, project_id, now, registered_by),
                )
                self._conn.executemany(
                    "INSERT OR IGNORE INTO model_trusts (model_id, trust) VALUES (?, ?)",
                    [(model_id, t) for t in trusts],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        info = self.model(model_id)
        assert info is not None
        return info

    def model(self, model_id: str) -> ModelInfo | None:
        """The registry entry of ``model_id``, or ``None``."""
        rows = self._select("SELECT * FROM models WHERE model_id = ?", (model_id,))
        if not rows:
            return None
        row = rows[0]
        trusts = [
            r["trust"]
            for r in self._select("SELECT trust FROM model_trusts WHERE model_id = ? ORDER BY trust", (model_id,))
        ]
        return ModelInfo(
            model_id=row["model_id"],
            project_id=row["project_id"],
            status=row["status"],
            trusts=trusts,
            registered_by=row["registered_by"],
            registered_at=row["registered_at"],
        )

    def models(self) -> list[ModelInfo]:
        """Every registered model, oldest first."""
        ids = [r["model_id"] for r in self._select("SELECT model_id FROM models ORDER BY registered_at, model_id")]
        return [m for m in (self.model(i) for i in ids) if m is not None]

    # ------------------------------------------------------------------ hub records

    def record_status(self, model_id: str, status: str, *, applied: bool, hub_api: str) -> StatusRecord:
        """Record a status received; if ``applied``, it becomes the model's current status."""
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                seq = self._insert(
                    "statuses",
                    {
                        "model_id": model_id,
                        "status": status,
                        "applied": int(applied),
                        "hub_api": hub_api,
                        "received_at": now,
                    },
                )
                if applied:
                    self._conn.execute("UPDATE models SET status = ? WHERE model_id = ?", (status, model_id))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return StatusRecord(seq, model_id, status, applied, hub_api, now)

    def record_metric(
        self,
        model_id: str,
        *,
        trust: str | None,
        fl_client_name: str | None,
        global_round: int,
        label: str,
        result: float,
        x_value: float | None,
        x_label: str | None,
        hub_api: str,
    ) -> int:
        """Record a metric the hub accepted; return its sequence number."""
        return self._insert(
            "metrics",
            {
                "model_id": model_id,
                "trust": trust,
                "fl_client_name": fl_client_name,
                "global_round": global_round,
                "label": label,
                "result": result,
                "x_value": x_value,
                "x_label": x_label,
                "hub_api": hub_api,
                "received_at": time.time(),
            },
        )

    def record_log(
        self,
        model_id: str,
        *,
        trust: str | None,
        fl_client_name: str | None,
        log: str | None,
        success: bool,
        event_type: str | None,
        global_round: int | None,
        details: dict[str, Any] | None,
        hub_api: str,
    ) -> int:
        """Record a log line or typed event the hub accepted; return its sequence number."""
        return self._insert(
            "logs",
            {
                "model_id": model_id,
                "trust": trust,
                "fl_client_name": fl_client_name,
                "log": log,
                "success": int(success),
                "event_type": event_type,
                "global_round": global_round,
                "details": json.dumps(details) if details is not None else None,
                "hub_api": hub_api,
                "received_at": time.time(),
            },
        )

    def records(self, model_id: str) -> ModelRecords:
        """Everything the hub received for ``model_id``, in arrival order."""
        statuses = [
            StatusRecord(r["seq"], r["model_id"], r["status"], bool(r["applied"]), r["hub_api"], r["received_at"])
            for r in self._select("SELECT * FROM statuses WHERE model_id = ? ORDER BY seq", (model_id,))
        ]
        metrics = [
            MetricRecord(**{k: r[k] for k in r.keys()})
            for r in self._select("SELECT * FROM metrics WHERE model_id = ? ORDER BY seq", (model_id,))
        ]
        logs = [
            LogRecord(
                seq=r["seq"],
                model_id=r["model_id"],
                trust=r["trust"],
                fl_client_name=r["fl_client_name"],
                log=r["log"],
                success=bool(r["success"]),
                event_type=r["event_type"],
                global_round=r["global_round"],
                details=json.loads(r["details"]) if r["details"] is not None else None,
                hub_api=r["hub_api"],
                received_at=r["received_at"],
            )
            for r in self._select("SELECT * FROM logs WHERE model_id = ? ORDER BY seq", (model_id,))
        ]
        return ModelRecords(model_id, self.model(model_id), statuses, metrics, logs)

    # ------------------------------------------------------------------ trust records

    def record_cohort(
        self,
        *,
        project_id: str | None,
        query_sha256: str,
        query_chars: int,
        status_code: int,
        rows: int | None,
        received_at: float,
    ) -> int:
        """Record a cohort request and its outcome."""
        return self._insert(
            "cohort_queries",
            {
                "project_id": project_id,
                "query_sha256": query_sha256,
                "query_chars": query_chars,
                "status_code": status_code,
                "rows": rows,
                "received_at": received_at,
                "ended_at": time.time(),
            },
        )

    def record_download(
        self,
        *,
        net_id: str,
        accession_id: str,
        resource_type: str,
        assessor_type: str,
        status_code: int,
        cached: bool,
        path: str | None,
        received_at: float,
        started_at: float,
    ) -> int:
        """Record an image download and its outcome (ended now)."""
        return self._insert(
            "downloads",
            {
                "net_id": net_id,
                "accession_id": accession_id,
                "resource_type": resource_type,
                "assessor_type": assessor_type,
                "status_code": status_code,
                "cached": int(cached),
                "path": path,
                "received_at": received_at,
                "started_at": started_at,
                "ended_at": time.time(),
            },
        )

    def record_upload(
        self,
        *,
        net_id: str,
        accession_id: str,
        scan_id: str,
        resource_id: str,
        files: list[str],
        exist_ok: bool,
        status_code: int,
        received_at: float,
    ) -> int:
        """Record an upload request and its outcome."""
        return self._insert(
            "uploads",
            {
                "net_id": net_id,
                "accession_id": accession_id,
                "scan_id": scan_id,
                "resource_id": resource_id,
                "files": json.dumps(files),
                "exist_ok": int(exist_ok),
                "status_code": status_code,
                "received_at": received_at,
            },
        )

    def record_request(
        self,
        *,
        service: str,
        route: str,
        method: str,
        path: str,
        status_code: int,
        fault: str | None,
        started_at: float,
        key_headers: str = "",
    ) -> int:
        """Record one HTTP request to a service route."""
        return self._insert(
            "requests",
            {
                "service": service,
                "route": route,
                "method": method,
                "path": path,
                "status_code": status_code,
                "fault": fault,
                "started_at": started_at,
                "ended_at": time.time(),
                "key_headers": key_headers,
            },
        )

    def cohort_queries(self) -> list[CohortRecord]:
        """Every cohort request, in arrival order."""
        return [CohortRecord(**dict(r)) for r in self._select("SELECT * FROM cohort_queries ORDER BY seq")]

    def downloads(self) -> list[DownloadRecord]:
        """Every download, in the order they finished."""
        return [
            DownloadRecord(**{**dict(r), "cached": bool(r["cached"])})
            for r in self._select("SELECT * FROM downloads ORDER BY seq")
        ]

    def uploads(self) -> list[UploadRecord]:
        """Every upload request, in arrival order."""
        return [
            UploadRecord(**{**dict(r), "files": json.loads(r["files"]), "exist_ok": bool(r["exist_ok"])})
            for r in self._select("SELECT * FROM uploads ORDER BY seq")
        ]

    def requests(self, service: str | None = None) -> list[RequestRecord]:
        """Every recorded request (of one service if given), in the order they finished."""
        if service is None:
            rows = self._select("SELECT * FROM requests ORDER BY seq")
        else:
            rows = self._select("SELECT * FROM requests WHERE service = ? ORDER BY seq", (service,))
        return [RequestRecord(**dict(r)) for r in rows]

    def reset(self, *, models: bool = True) -> None:
        """Delete every record (and, if ``models``, the registry)."""
        tables = list(_RECORD_TABLES) + (["model_trusts", "models"] if models else [])
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for table in tables:
                    self._conn.execute(f"DELETE FROM {table}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
