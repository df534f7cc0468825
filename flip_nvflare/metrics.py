"""Client-side metric reporting: ``send_metrics_value`` fires a federated event to the server.

The server's MetricsForwarder receives it, maps the client to its trust, and delivers it to the
hub. Client code never calls the hub itself. This module imports NVFlare only when called.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from flip_nvflare.constants import MAX_X_LABEL, FlipEvents
from flip_nvflare.errors import FlipArgumentTypeError, FlipInvalidArgument

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
        value: The value (a number, numpy scalar or one-element tensor). NaN and infinities are
            sent on and dropped, counted, by the server.
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
    payload = Shareable()
    payload[METRIC_LABEL] = label
    payload[METRIC_VALUE] = number
    payload[METRIC_ROUND] = round if round is not None else current_round(fl_ctx)
    payload[METRIC_X_VALUE] = x_number
    payload[METRIC_X_LABEL] = x_label
    payload[METRIC_CLIENT] = fl_ctx.get_identity_name()
    # A context of its own, so the caller's event properties are left as they were.
    with engine.new_context() as event_ctx:
        event_ctx.set_prop(FLContextKey.EVENT_DATA, payload, private=True, sticky=False)
        event_ctx.set_prop(FLContextKey.EVENT_SCOPE, value=EventScope.FEDERATION, private=True, sticky=False)
        engine.fire_event(FlipEvents.FED_SEND_METRIC, event_ctx)
