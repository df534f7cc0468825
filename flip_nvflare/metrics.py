"""Client-side metric reporting: ``send_metrics_value`` fires a federated event to the server.

The server's MetricsForwarder receives it, maps the client to its trust, and delivers it to the
hub. Client code never calls the hub itself. This module imports NVFlare only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flip_nvflare.constants import FlipEvents

if TYPE_CHECKING:
    from nvflare.apis.fl_context import FLContext

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


def send_metrics_value(
    label: str,
    value: float,
    fl_ctx: FLContext,
    round: int | None = None,
    *,
    x_value: float | None = None,
    x_label: str | None = None,
) -> None:
    """Send one metric value from client code towards the hub.

    Args:
        label: The metric's name, e.g. ``"LOSS_FUNCTION"``; ``"LABEL@x_label"`` names an x-axis.
        value: The value (non-finite values are dropped by the server with a warning).
        fl_ctx: The FLContext of the task being executed.
        round: The global round; defaults to the round of the current task.
        x_value: Optional x coordinate for a per-epoch curve (H2 hubs).
        x_label: Optional x-axis name, 1-64 characters (H2 hubs).
    """
    from nvflare.apis.fl_constant import EventScope, FLContextKey
    from nvflare.apis.shareable import Shareable

    if not isinstance(label, str) or not label:
        raise ValueError("send_metrics_value: label must be a non-empty string.")
    payload = Shareable()
    payload[METRIC_LABEL] = label
    payload[METRIC_VALUE] = float(value)
    payload[METRIC_ROUND] = round if round is not None else current_round(fl_ctx)
    payload[METRIC_X_VALUE] = x_value
    payload[METRIC_X_LABEL] = x_label
    payload[METRIC_CLIENT] = fl_ctx.get_identity_name()
    fl_ctx.set_prop(FLContextKey.EVENT_DATA, payload, private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.EVENT_SCOPE, value=EventScope.FEDERATION, private=True, sticky=False)
    fl_ctx.get_engine().fire_event(FlipEvents.FED_SEND_METRIC, fl_ctx)
