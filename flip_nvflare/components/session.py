"""The hub side of one FLIP job on the server: backend, delivery, run journal and trust names.

A :class:`HubSession` is built by the job's FlipBackend component the first time a hub widget asks
for it (see :func:`flip_nvflare.backend.get_hub_session`). Every widget that uses it
holds a reference from START_RUN to END_RUN; when the last one lets go, queued hub calls are
drained within the deadline, whatever is left is logged, and the backend is closed. This makes the
end of a run independent of the order of the components in the job config. If the process exits
before that (a run that dies before END_RUN), an exit hook drains what is queued, briefly.

Nothing here imports NVFlare.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from flip_nvflare.components.delivery import Clock, DeliveryReport, HubCall, HubDelivery, summarise
from flip_nvflare.constants import HubApi, ModelStatus, default_trust_name
from flip_nvflare.core.base import FLIPBase
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.retry import RetryPolicy

logger = logging.getLogger(__name__)

_MAX_REASON_CHARS = 500
#: Deadline of the delivery when the process exits without ending the run.
_EXIT_DRAIN_SECONDS = 10.0
#: Keys of the run summary that sections added by widgets may not take.
_CORE_SUMMARY_KEYS = frozenset(
    {"model_id", "flip_mode", "hub_api", "trusts", "hub_delivery", "started_at", "failure", "statuses", "metrics"}
    | {"client_errors", "clients", "sites_lost", "job_id", "outcome", "finished_at", "rounds_aggregated", "files"}
    | {"gathered_from"}
)


class TrustNames:
    """Maps NVFlare client names to the hub's trust names.

    The rule: an explicit mapping first; else ``site-N`` -> ``Trust_N``; names that already look
    like ``Trust_N`` (and any other name) are used unchanged.

    Args:
        explicit: ``{client_name: trust_name}`` overrides.
    """

    def __init__(self, explicit: Mapping[str, str] | None = None) -> None:
        explicit = dict(explicit or {})
        for client, trust in explicit.items():
            if not isinstance(client, str) or not isinstance(trust, str) or not client or not trust:
                raise FlipConfigError(
                    "trust_names must map client names to trust names, both non-empty strings, "
                    'e.g. {"site-1": "Trust_1"}.'
                )
        self._explicit = explicit

    def __call__(self, client_name: str) -> str:
        """The trust name of ``client_name``."""
        if client_name in self._explicit:
            return self._explicit[client_name]
        return default_trust_name(client_name)

    def as_dict(self, client_names: list[str]) -> dict[str, str]:
        """The mapping of the given clients (for the run summary)."""
        return {name: self(name) for name in sorted(set(client_names))}


class RunOutcome(str, Enum):
    """How a run ended, as far as the hub is concerned."""

    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RunJournal:
    """What the FLIP widgets saw during the run; becomes the run summary uploaded with the results.

    Every method is thread-safe and cheap (called on NVFlare's event threads). Nothing recorded
    here is patient data: client names, labels, counts, return codes and NVFlare's own reasons.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_at = _now()
        self._statuses: list[dict[str, str]] = []
        self._failure: str | None = None
        self._metrics_forwarded: Counter[tuple[str, str]] = Counter()
        self._metrics_dropped: Counter[str] = Counter()
        self._client_errors: dict[str, list[dict[str, Any]]] = {}
        self._clients: set[str] = set()
        self._sites_lost: list[dict[str, Any]] = []

    def site_lost(self, client_name: str, trust_name: str, what: str) -> bool:
        """Record that a client's site left the run (its job died or it disconnected); once per client.

        Returns:
            Whether this was the first report of that client.
        """
        with self._lock:
            if any(entry["client"] == client_name for entry in self._sites_lost):
                return False
            self._clients.add(client_name)
            self._sites_lost.append({"client": client_name, "trust": trust_name, "what": what, "at": _now()})
            return True

    @property
    def sites_lost(self) -> list[dict[str, Any]]:
        """The sites that left the run, in order (client, trust, what happened, when)."""
        with self._lock:
            return [dict(entry) for entry in self._sites_lost]

    def status_reported(self, status: ModelStatus) -> None:
        """Record a status handed to the delivery."""
        with self._lock:
            self._statuses.append({"status": status.value, "at": _now()})

    def mark_failed(self, reason: str) -> None:
        """Record that the run failed (the first reason is kept)."""
        with self._lock:
            if self._failure is None:
                self._failure = str(reason)[:_MAX_REASON_CHARS] or "failed"

    @property
    def failure(self) -> str | None:
        """Why the run failed, if it did."""
        with self._lock:
            return self._failure

    def client_seen(self, client_name: str) -> None:
        """Record a client taking part."""
        with self._lock:
            self._clients.add(client_name)

    def metric_forwarded(self, client_name: str, label: str) -> None:
        """Count a metric handed to the delivery."""
        with self._lock:
            self._clients.add(client_name)
            self._metrics_forwarded[(client_name, label)] += 1

    def metric_dropped(self, reason: str) -> None:
        """Count a metric not sent (``non_finite``, ``invalid``...)."""
        with self._lock:
            self._metrics_dropped[reason] += 1

    def metrics_dropped(self, reason: str) -> int:
        """How many metrics were dropped for ``reason``."""
        with self._lock:
            return self._metrics_dropped[reason]

    def client_error(self, client_name: str, task_name: str, round_: int | None, return_code: str) -> None:
        """Record a failed task result of a client."""
        with self._lock:
            self._clients.add(client_name)
            self._client_errors.setdefault(client_name, []).append(
                {"task": task_name, "round": round_, "return_code": return_code, "at": _now()}
            )

    def summary(self) -> dict[str, Any]:
        """The journal as JSON-able data."""
        with self._lock:
            by_client: dict[str, dict[str, int]] = {}
            for (client, label), count in sorted(self._metrics_forwarded.items()):
                by_client.setdefault(client, {})[label] = count
            return {
                "started_at": self.started_at,
                "failure": self._failure,
                "statuses": list(self._statuses),
                "metrics": {
                    "forwarded": sum(self._metrics_forwarded.values()),
                    "dropped": dict(self._metrics_dropped),
                    "by_client": by_client,
                },
                "client_errors": {c: list(e) for c, e in sorted(self._client_errors.items())},
                "clients": sorted(self._clients),
                "sites_lost": [dict(entry) for entry in self._sites_lost],
            }


@dataclass(frozen=True)
class SessionSettings:
    """How a HubSession delivers.

    Attributes:
        concurrency: Unordered hub calls in flight at once.
        max_pending: Metrics and progress events allowed to wait in the queue.
        drain_timeout: Seconds allowed at the end of the run to deliver what is queued.
    """

    concurrency: int = 8
    max_pending: int = 50_000
    drain_timeout: float = 60.0


class HubSession:
    """Everything a hub widget needs for one job: backend, delivery, journal, model id, trust names.

    Args:
        backend: The job's FLIP backend.
        model_id: The model's id on the hub (a UUID, already checked).
        trust_names: The client-to-trust mapping.
        hub_api: The hub generation, or None for the dev backend (which records everything).
        settings: Delivery settings.
        flip_mode: ``"dev"`` or ``"prod"``, for the run summary.
        clock: The delivery's clock (retry delays, drain deadline); the real clock if None.
    """

    def __init__(
        self,
        backend: FLIPBase,
        *,
        model_id: str,
        trust_names: TrustNames,
        hub_api: HubApi | None,
        settings: SessionSettings,
        flip_mode: str,
        clock: Clock | None = None,
    ) -> None:
        self.backend = backend
        self.model_id = model_id
        self.trust_names = trust_names
        self.hub_api = hub_api
        self.flip_mode = flip_mode
        self.journal = RunJournal()
        self.delivery = HubDelivery(
            backend.with_retry(RetryPolicy.single()),  # the delivery alone retries hub calls
            concurrency=settings.concurrency,
            max_pending=settings.max_pending,
            name=model_id[:8],
            clock=clock,
        )
        self._drain_timeout = settings.drain_timeout
        self._lock = threading.Lock()
        self._holders: set[str] = set()
        self._closed = False
        atexit.register(self._close_at_exit)
        self._final_report: DeliveryReport | None = None
        self._outcome: RunOutcome | None = None
        self._sections: dict[str, Callable[[], Any]] = {}
        self.results_upload_expected = False

    def add_summary_section(self, name: str, provider: Callable[[], Any]) -> None:
        """Add a section to the run summary, computed by ``provider`` each time the summary is made.

        Widgets other than the core ones (privacy ledger, tracking) report through this. The
        provider must return JSON-able data holding no patient values, keys or exception text.

        Raises:
            FlipConfigError: ``name`` is a key the summary already has or another widget added.
        """
        with self._lock:
            if name in self._sections or name in _CORE_SUMMARY_KEYS:
                raise FlipConfigError(f"the run summary already has a section named {name!r}")
            self._sections[name] = provider

    # ------------------------------------------------------------------ lifetime

    @property
    def outcome(self) -> RunOutcome | None:
        """How the run ended, once settled (at ABOUT_TO_END_RUN)."""
        with self._lock:
            return self._outcome

    def settle_outcome(self, outcome: RunOutcome) -> RunOutcome:
        """Fix how the run ended (the first call wins) and return it."""
        with self._lock:
            if self._outcome is None:
                self._outcome = outcome
            return self._outcome

    def hold(self, holder: str) -> None:
        """Register ``holder`` (a component name) as using the session until it calls :meth:`release`."""
        with self._lock:
            if not self._closed:
                self._holders.add(holder)

    def release(self, holder: str) -> DeliveryReport | None:
        """Let go of the session; the last holder drains the delivery (blocking) and closes the backend.

        Returns:
            The final delivery report if this call closed the session, else None.
        """
        with self._lock:
            self._holders.discard(holder)
            if self._holders or self._closed:
                return None
            self._closed = True
        return self._close(self._drain_timeout)

    def _close_at_exit(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        logger.warning("FLIP: the process is exiting before the run ended; delivering what is queued for the hub.")
        self._close(min(self._drain_timeout, _EXIT_DRAIN_SECONDS))

    def _close(self, timeout: float) -> DeliveryReport:
        atexit.unregister(self._close_at_exit)
        pending = self.delivery.pending
        if pending:
            logger.info("FLIP: delivering %d queued hub call(s) before the run ends (up to %.0f s).", pending, timeout)
        report = self.delivery.close(timeout)
        self._final_report = report
        line = summarise(report)
        if report.undelivered.total() or report.rejected.total() or report.dropped.total():
            logger.error("FLIP hub delivery for model %s at the end of the run: %s.", self.model_id, line)
        else:
            logger.info("FLIP hub delivery for model %s at the end of the run: %s.", self.model_id, line)
        try:
            self.backend.close()
        except Exception:  # closing must never fail the run's end
            logger.warning("Closing the FLIP backend failed.", exc_info=True)
        return report

    @property
    def closed(self) -> bool:
        """Whether the session has been drained and closed."""
        with self._lock:
            return self._closed

    # ------------------------------------------------------------------ hub calls

    def report_status(self, status: ModelStatus) -> None:
        """Queue a status update (ordered, never dropped)."""
        model_id = self.model_id
        self.journal.status_reported(status)
        self.delivery.submit(
            HubCall(
                kind="status",
                send=lambda backend: backend.update_status(model_id, status),
                what=f"status {status.value}",
                ordered=True,
            )
        )

    def send_metric(
        self,
        client_name: str,
        label: str,
        value: float,
        round_: int,
        *,
        x_value: float | None = None,
        x_label: str | None = None,
    ) -> bool:
        """Queue one metric of one client (droppable when the queue is full).

        Metrics go out concurrently, except that the values of one series (a trust and a label)
        are delivered one at a time in the order they were queued.
        """
        model_id = self.model_id
        trust = self.trust_names(client_name)
        self.journal.metric_forwarded(client_name, label)
        return self.delivery.submit(
            HubCall(
                kind="metric",
                send=lambda backend: backend.send_metrics(
                    client_name,
                    model_id,
                    label,
                    value,
                    round_,
                    x_value=x_value,
                    x_label=x_label,
                    trust_name=trust,
                ),
                what=f"metric {label!r} of {client_name} (round {round_})",
                droppable=True,
                series=f"{trust}/{label}",
            )
        )

    def send_client_log(self, client_name: str, text: str) -> None:
        """Queue a client's (sanitized) exception text for the hub's logs (never dropped)."""
        model_id = self.model_id
        trust = self.trust_names(client_name)
        self.delivery.submit(
            HubCall(
                kind="log",
                send=lambda backend: backend.send_handled_exception(text, client_name, model_id, trust_name=trust),
                what=f"exception log of {client_name}",
            )
        )

    def send_progress(
        self, event_type: str, global_round: int | None, details: Mapping[str, Any], client_name: str | None = None
    ) -> None:
        """Queue a typed progress event (ordered, droppable when the queue is full)."""
        model_id = self.model_id
        details = dict(details)
        send_progress_event = self.backend.send_progress_event
        self.delivery.submit(
            HubCall(
                kind="progress",
                send=lambda backend: send_progress_event(model_id, event_type, global_round, details, client_name),
                what=f"progress {event_type} (round {global_round})",
                ordered=True,
                droppable=True,
            )
        )

    # ------------------------------------------------------------------ summary

    def summary(self) -> dict[str, Any]:
        """The run summary: journal, delivery counts, trust names."""
        journal = self.journal.summary()
        final = self._final_report
        report = final or self.delivery.report()
        delivery: dict[str, Any] = {**report.as_dict(), "pending": self.delivery.pending}
        if final is None:
            # The summary goes into the results zip, which is made before the run's last hub calls
            # (the final status among them) are delivered: these figures are not the last word.
            delivery["provisional"] = True
            delivery["note"] = (
                "written before the final delivery to the hub; the final figures, with anything not "
                "delivered listed by kind and series, are in the FL server's log at the end of the run"
            )
            delivery["pending_by_series"] = dict(self.delivery.pending_by_name())
        else:
            delivery["provisional"] = False
        with self._lock:
            sections = dict(self._sections)
        return {
            "model_id": self.model_id,
            "flip_mode": self.flip_mode,
            "hub_api": self.hub_api.value if self.hub_api else None,
            **journal,
            "trusts": self.trust_names.as_dict(journal["clients"]),
            "hub_delivery": delivery,
            **{name: provider() for name, provider in sections.items()},
        }
