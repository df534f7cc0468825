"""Client-side metric reporting: ``send_metrics_value`` fires a federated event to the server.

The server's MetricsForwarder receives it, maps the client to its trust, and delivers it to the
hub. Client code never calls the hub itself. This module imports NVFlare only when called.

Before a metric leaves, the site's metric policy decides (:class:`~flip_nvflare.filters.metric_policy.MetricPolicy`,
read from the site's ``local/flip_metric_policy.json``, never from the job): a label the site does
not allow, a label with a control character, or a non-finite value is dropped at the site and
counted (in the site's log, and as a label-and-count report to the server for the run summary);
values are rounded when the policy says so.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from flip_nvflare.constants import MAX_X_LABEL, FlipEvents
from flip_nvflare.errors import FlipArgumentTypeError, FlipInvalidArgument

if TYPE_CHECKING:
    from nvflare.apis.fl_context import FLContext

logger = logging.getLogger(__name__)
_LOG_FIRST = 5
_LOG_EVERY = 100

#: Keys of the metric event's payload (a Shareable).
METRIC_LABEL = "label"
METRIC_VALUE = "value"
METRIC_ROUND = "round"
METRIC_X_VALUE = "x_value"
METRIC_X_LABEL = "x_label"
METRIC_CLIENT = "client_name"


def current_round(fl_ctx: FLContext) -> int | None:
    """The global round the client is working on, if NVFlare put it in the context."""
    from nvflare.app_common.app_constant import AppConstants

    value: Any = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise FlipArgumentTypeError(
            f"send_metrics_value: {name} must be a number, got {type(value).__name__}."
        ) from None


def send_metrics_value(
    label: str,
    value: float,
    fl_ctx: FLContext,
    round: int | None = None,
    *,
    x_value: float | None = None,
    x_label: str | None = None,
    flip: object = None,
) -> None:
    """Send one metric value from client code towards the hub.

    Args:
        label: The metric's name, e.g. ``"LOSS_FUNCTION"``; ``"LABEL@x_label"`` names an x-axis.
        value: The value (a number, numpy scalar or one-element tensor). NaN and infinities never
            leave the site: they are dropped and counted, as are labels the site's metric policy
            does not allow.
        fl_ctx: The FLContext of the task being executed.
        round: The global round (>= 0); defaults to the round of the task the client is running.
        x_value: Optional x coordinate for a curve of your own (H2 hubs), e.g. the epoch.
        x_label: Optional x-axis name, 1-64 characters (H2 hubs), e.g. ``"epoch"``.
        flip: Accepted for FLIP apps that pass their backend (``flip=self.flip``); not used, as
            metrics always travel through the server, which holds the hub settings.

    Raises:
        FlipInvalidArgument: An argument is malformed (the message says which); a ValueError.
        FlipArgumentTypeError: ``value`` or ``x_value`` is not a number; a TypeError.
    """
    from nvflare.apis.fl_constant import EventScope, FLContextKey
    from nvflare.apis.shareable import Shareable

    if not isinstance(label, str) or not label.strip():
        raise FlipInvalidArgument("send_metrics_value: label must be a non-empty string, e.g. 'LOSS_FUNCTION'.")
    number = _as_float("value", value)
    if round is not None and (isinstance(round, bool) or not isinstance(round, int) or round < 0):
        raise FlipInvalidArgument(f"send_metrics_value: round must be an integer >= 0 or None, got {round!r}.")
    x_number = None if x_value is None else _as_float("x_value", x_value)
    if x_number is not None and not math.isfinite(x_number):
        raise FlipInvalidArgument(f"send_metrics_value: x_value must be a finite number, got {x_value!r}.")
    if x_label is not None and (not isinstance(x_label, str) or not 1 <= len(x_label) <= MAX_X_LABEL):
        raise FlipInvalidArgument("send_metrics_value: x_label must be a string of 1 to 64 characters, e.g. 'epoch'.")
    engine = fl_ctx.get_engine()
    if engine is None:
        raise FlipInvalidArgument("send_metrics_value: fl_ctx has no engine; pass the FLContext of the running task.")
    admitted = admit_metric(label, number, fl_ctx)
    if admitted is None:
        return
    payload = Shareable()
    payload[METRIC_LABEL] = label
    payload[METRIC_VALUE] = admitted
    payload[METRIC_ROUND] = round if round is not None else current_round(fl_ctx)
    payload[METRIC_X_VALUE] = x_number
    payload[METRIC_X_LABEL] = x_label
    payload[METRIC_CLIENT] = fl_ctx.get_identity_name()
    # A context of its own, so the caller's event properties are left as they were.
    with engine.new_context() as event_ctx:
        event_ctx.set_prop(FLContextKey.EVENT_DATA, payload, private=True, sticky=False)
        event_ctx.set_prop(FLContextKey.EVENT_SCOPE, value=EventScope.FEDERATION, private=True, sticky=False)
        engine.fire_event(FlipEvents.FED_SEND_METRIC, event_ctx)


def admit_metric(label: object, value: object, fl_ctx: FLContext) -> float | None:
    """The site's metric policy on one metric: the value that may leave, or None (dropped, counted, reported).

    Every way a client's metric leaves the site calls this first: :func:`send_metrics_value`, and
    NVFlare's analytics (``SummaryWriter``, ``flare.log``) before their event is sent. A drop is
    logged at the site (the label, escaped, and the count; never the value) and reported to the
    server as the label and its counts, for the run summary.

    Args:
        label: The metric's label as the client code gave it.
        value: Its value.
        fl_ctx: The FLContext of the running task (the site is found from its engine's workspace).

    Returns:
        The value to send (rounded if the policy says so), or None if it must not leave.
    """
    from flip_nvflare.filters.metric_policy import INVALID_LABEL, MetricPolicy, valid_label

    policy = MetricPolicy.for_site(fl_ctx)
    admitted = policy.admit(label, value)
    if admitted is not None:
        return admitted
    shown = label if isinstance(label, str) and valid_label(label) else INVALID_LABEL
    count = policy.dropped(shown)
    if count <= _LOG_FIRST or count % _LOG_EVERY == 0:
        reasons = ", ".join(f"{why} {n}" for why, n in policy.drops().get(shown, {}).items())
        logger.warning(
            "Metric %s was not sent: the site's metric policy (%s) dropped it (%s so far).",
            ascii(shown),
            policy.source,
            reasons,
        )
    _report_drop(fl_ctx, shown, policy.drops().get(shown, {}))
    return None


def _report_drop(fl_ctx: FLContext, label: str, counts: dict[str, int]) -> None:
    """Tell the server a metric was dropped: the label and its counts per reason, never a value."""
    from nvflare.apis.fl_constant import EventScope, FLContextKey
    from nvflare.apis.shareable import Shareable

    from flip_nvflare.filters.budget import METRIC_DROP_EVENT

    engine = fl_ctx.get_engine()
    if engine is None:
        return
    payload = Shareable()
    payload[METRIC_LABEL] = label
    payload["dropped"] = dict(counts)
    payload[METRIC_CLIENT] = fl_ctx.get_identity_name()
    try:
        with engine.new_context() as event_ctx:
            event_ctx.set_prop(FLContextKey.EVENT_DATA, payload, private=True, sticky=False)
            event_ctx.set_prop(FLContextKey.EVENT_SCOPE, value=EventScope.FEDERATION, private=True, sticky=False)
            engine.fire_event(METRIC_DROP_EVENT, event_ctx)
    except Exception:  # a report of a drop must never break the client's code
        logger.warning("The report of a dropped metric could not be sent to the server.", exc_info=True)
