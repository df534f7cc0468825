"""MetricsForwarder: brings the clients' metrics to the hub, with each client's trust and round.

Two ways in, both handled:

* the FLIP helper :func:`flip_nvflare.metrics.send_metrics_value` that client code calls (a
  ``fed.flip.send_metric`` federated event);
* NVFlare's own analytics: ``AnalyticsSender``, the Client API's ``SummaryWriter`` and
  ``flare.log`` (a ``fed.analytix_log_stats`` federated event; in-process Client API jobs need
  NVFlare's ``ConvertToFedEvent`` widget on the clients, as for any NVFlare analytics receiver).
  Scalars become one metric; dicts of scalars (``add_scalars``) one metric per key, labelled
  ``tag/key``; other analytics (text, images...) are ignored.

The client is the sender NVFlare authenticated, mapped to its trust by the FlipBackend's rule.
The round is the one the client gave, else the round of the last task the server sent it.
A metric name ``LABEL@x_label`` (e.g. a SummaryWriter tag ``train_loss@epoch``) plots against
its own x-axis: the label is ``LABEL``, the x value is the one given (``x_value=``) or the
analytics step. H2 hubs get ``x_value``/``x_label``; H1 hubs plot against the round.
Non-finite values are dropped with a warning and counted in the run summary.

Observers: another server widget (the MLflow tracker) can see every metric the forwarder hands to
the hub delivery, as the hub will get it (trust, label, value, round, x-axis), by registering a
callable with :func:`add_metric_observer` for the job's session. Observers are called on NVFlare's
event thread right after the metric is queued for the hub, so they must only queue the metric
themselves and return; an observer that raises is ignored (and logged once), never the hub's loss.
Other widgets that queue metrics for the hub call :func:`queue_metric` to be seen the same way.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE, AnalyticsData, AnalyticsDataType
from nvflare.apis.dxo import from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FedEventHeader, FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.session import HubSession
from flip_nvflare.components.widget import ClientRounds, HubWidget, as_round
from flip_nvflare.constants import DEFAULT_FLIP_ID, MAX_X_LABEL, FlipEvents
from flip_nvflare.core.base import finite_float
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.executors.sanitize import sanitize_hub_text
from flip_nvflare.metrics import METRIC_LABEL, METRIC_ROUND, METRIC_VALUE, METRIC_X_LABEL, METRIC_X_VALUE

#: The federated analytics event NVFlare's AnalyticsSender / SummaryWriter produce.
FED_ANALYTICS_EVENT = f"fed.{ANALYTIC_EVENT_TYPE}"

_SCALAR_TYPES = (AnalyticsDataType.SCALAR, AnalyticsDataType.METRIC)
_DICT_TYPES = (AnalyticsDataType.SCALARS, AnalyticsDataType.METRICS)
_WARN_FIRST = 5
_WARN_EVERY = 100

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuedMetric:
    """A metric handed to the hub delivery, as metric observers see it.

    Attributes:
        client: The NVFlare client that sent it.
        trust: The client's trust name on the hub.
        label: The metric's label (sanitized, without any ``@x_label`` suffix).
        value: The value (finite).
        round: The round it belongs to.
        x_value: The x value when the metric has its own x-axis, else None.
        x_label: The x-axis label, else None.
    """

    client: str
    trust: str
    label: str
    value: float
    round: int
    x_value: float | None = None
    x_label: str | None = None


#: What :func:`add_metric_observer` takes: called with each metric queued for the hub.
MetricObserver = Callable[[QueuedMetric], None]

_observers_lock = threading.Lock()
_observers: weakref.WeakKeyDictionary[HubSession, tuple[MetricObserver, ...]] = weakref.WeakKeyDictionary()
_failed_observers: set[int] = set()


def add_metric_observer(session: HubSession, observer: MetricObserver) -> Callable[[], None]:
    """Call ``observer`` with every metric queued for the hub through ``session`` from now on.

    The observer runs on NVFlare's event thread: it must be quick (queue and return) and
    thread-safe. An exception it raises is logged (once per observer) and otherwise ignored.

    Args:
        session: The job's hub session.
        observer: The callable to add.

    Returns:
        A function that removes the observer again (calling it twice is harmless).
    """
    with _observers_lock:
        _observers[session] = (*_observers.get(session, ()), observer)

    def remove() -> None:
        with _observers_lock:
            left = tuple(o for o in _observers.get(session, ()) if o is not observer)
            if left:
                _observers[session] = left
            else:
                _observers.pop(session, None)

    return remove


def queue_metric(
    session: HubSession,
    client: str,
    label: str,
    value: float,
    round_: int,
    *,
    x_value: float | None = None,
    x_label: str | None = None,
) -> bool:
    """Queue one metric for the hub (:meth:`HubSession.send_metric`), then show it to the observers.

    Returns:
        Whether the hub delivery accepted it (False: its queue was full and it was dropped there).
    """
    queued = session.send_metric(client, label, value, round_, x_value=x_value, x_label=x_label)
    with _observers_lock:
        observers = _observers.get(session, ())
    if observers:
        metric = QueuedMetric(client, session.trust_names(client), label, value, round_, x_value, x_label)
        for observer in observers:
            try:
                observer(metric)
            except Exception as exc:  # an observer must never cost the hub a metric
                if id(observer) not in _failed_observers:
                    _failed_observers.add(id(observer))
                    logger.warning(
                        "A metric observer failed (%s); its later failures are not logged.", type(exc).__name__
                    )
    return queued


def split_x_axis(name: str) -> tuple[str, str | None]:
    """Split ``LABEL@x_label`` into ``(LABEL, x_label)``; a name without ``@`` has no x-axis."""
    label, at, x_label = name.rpartition("@")
    if not at or not label or not x_label:
        return name, None
    return label, x_label


def _received_from(data: Shareable) -> str | None:
    name = data.get_peer_prop(ReservedKey.IDENTITY_NAME, None) or data.get_header(FedEventHeader.ORIGIN, None)
    return name if isinstance(name, str) and name else None


class MetricsForwarder(HubWidget):
    """Forwards client metrics (FLIP helper and NVFlare analytics) to the hub.

    Args:
        flip_id: Id of the FlipBackend component.
        analytics_events: Federated analytics events to read (default ``["fed.analytix_log_stats"]``);
            an empty list turns NVFlare analytics off.
    """

    def __init__(self, flip_id: str = DEFAULT_FLIP_ID, analytics_events: Sequence[str] | None = None) -> None:
        super().__init__(flip_id)
        events = [FED_ANALYTICS_EVENT] if analytics_events is None else list(analytics_events)
        if not all(isinstance(e, str) and e for e in events):
            raise FlipConfigError("MetricsForwarder analytics_events must be a list of event names.")
        self._analytics_events = frozenset(events)
        self._rounds = ClientRounds()
        self._warnings = 0

    def on_event(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        """Track rounds; forward metric events."""
        if event_type == EventType.START_RUN:
            self._rounds = ClientRounds()
        elif event_type == EventType.AFTER_TASK_DATA_FILTER:
            self._rounds.task_sent(fl_ctx)
        elif event_type == AppEventType.ROUND_STARTED:
            self._rounds.round_started(fl_ctx)
        elif event_type == FlipEvents.FED_SEND_METRIC or event_type in self._analytics_events:
            data = fl_ctx.get_prop(FLContextKey.EVENT_DATA, None)
            if not isinstance(data, Shareable) or data.get_header(FedEventHeader.DIRECTION, None) != "in":
                return  # not a metric received from a client
            client = _received_from(data)
            if client is None:
                self._warn(fl_ctx, "A metric event without its sender's name was ignored.")
                return
            records = self._flip_metric(data) if event_type == FlipEvents.FED_SEND_METRIC else self._analytics(data)
            for label, value, round_, x_value in records:
                self._forward(fl_ctx, session, client, label, value, round_, x_value)

    # ------------------------------------------------------------------ decoding

    def _flip_metric(self, data: Shareable) -> Iterator[tuple[str, Any, int | None, Any]]:
        label = data.get(METRIC_LABEL)
        x_label = data.get(METRIC_X_LABEL)
        if isinstance(x_label, str) and x_label and isinstance(label, str) and "@" not in label:
            label = f"{label}@{x_label}"
        yield label, data.get(METRIC_VALUE), as_round(data.get(METRIC_ROUND)), data.get(METRIC_X_VALUE)

    def _analytics(self, data: Shareable) -> Iterator[tuple[str, Any, int | None, Any]]:
        try:
            record = AnalyticsData.from_dxo(from_shareable(data))
        except (TypeError, ValueError, KeyError):
            return
        if record is None or not isinstance(record.tag, str):
            return
        if record.data_type in _SCALAR_TYPES:
            yield record.tag, record.value, None, record.step
        elif record.data_type in _DICT_TYPES and isinstance(record.value, dict):
            base, x_label = split_x_axis(record.tag)
            for key, value in record.value.items():
                name = f"{base}/{key}" + (f"@{x_label}" if x_label else "")
                yield name, value, None, record.step

    # ------------------------------------------------------------------ forwarding

    def _forward(
        self,
        fl_ctx: FLContext,
        session: HubSession,
        client: str,
        name: Any,
        value: Any,
        round_: int | None,
        x_value: Any,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            session.journal.metric_dropped("invalid")
            self._warn(fl_ctx, f"A metric from {client} without a label was dropped.")
            return
        result = finite_float(value)
        if result is None:
            session.journal.metric_dropped("non_finite")
            count = session.journal.metrics_dropped("non_finite")
            self._warn(fl_ctx, f"Metric {name!r} from {client} is not a finite number; dropped ({count} so far).")
            return
        label, x_label = split_x_axis(sanitize_hub_text(name))
        x = finite_float(x_value) if x_label else None
        if x_label is not None and (x is None or len(x_label) > MAX_X_LABEL):
            self._warn(
                fl_ctx,
                f"Metric {name!r} from {client}: x-axis ignored (needs a finite x value and an x label of "
                f"1-{MAX_X_LABEL} characters); plotted against the round.",
            )
            x, x_label = None, None
        if round_ is None:
            round_ = self._rounds.of(client)
        queue_metric(session, client, label, result, round_, x_value=x, x_label=x_label)

    def _warn(self, fl_ctx: FLContext, message: str) -> None:
        self._warnings += 1
        if self._warnings <= _WARN_FIRST or self._warnings % _WARN_EVERY == 0:
            self.log_warning(fl_ctx, message, fire_event=False)
