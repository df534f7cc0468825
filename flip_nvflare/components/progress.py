"""ProgressReporter: typed round events for H2 hubs' logs endpoint (1-based rounds).

* ``ROUND_STARTED {total_rounds}`` when a training round starts;
* ``CLIENT_RESULT_RECEIVED {size_bytes}`` for each client result the aggregator accepted,
  attributed to that client (the size is the sum of the result's array sizes);
* ``ROUND_AGGREGATED {returned, expected}`` when the round's results are aggregated: results
  accepted, out of clients connected when the round started.

Works with ScatterAndGather and FedAvg (through the events both fire). H1 hubs have no typed
events: there it does nothing. The dev backend records the events in its ``logs.jsonl``.
"""

from __future__ import annotations

import threading
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.session import HubSession
from flip_nvflare.components.widget import HubWidget, as_round, peer_name, result_round
from flip_nvflare.constants import DEFAULT_FLIP_ID, HubApi

_MAX_DEPTH = 8


def payload_size(value: Any, depth: int = 0) -> int:
    """Bytes held by the arrays, tensors and byte strings inside ``value`` (nested dicts/lists)."""
    if depth > _MAX_DEPTH:
        return 0
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    numel, element_size = getattr(value, "numel", None), getattr(value, "element_size", None)
    if callable(numel) and callable(element_size):
        try:
            return int(numel()) * int(element_size())
        except (TypeError, ValueError, RuntimeError):
            return 0
    if isinstance(value, dict):
        return sum(payload_size(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(payload_size(v, depth + 1) for v in value)
    return 0


def result_size(result: Shareable) -> int:
    """Size of a client result's data (its DXO's arrays), without serialising it."""
    from nvflare.apis.dxo import from_shareable

    try:
        dxo = from_shareable(result)
    except (TypeError, ValueError, KeyError):
        return 0
    return payload_size(dxo.data)


class ProgressReporter(HubWidget):
    """Sends typed round progress events to H2 hubs.

    Args:
        flip_id: Id of the FlipBackend component.
    """

    def __init__(self, flip_id: str = DEFAULT_FLIP_ID) -> None:
        super().__init__(flip_id)
        self._enabled = False
        self._round: int | None = None
        self._expected = 0
        self._accepted: dict[int, int] = {}
        self._lock = threading.Lock()

    def on_event(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        """Turn round events into hub progress events."""
        if event_type == EventType.START_RUN:
            self._enabled = session.hub_api is not HubApi.H1
            self._round, self._expected, self._accepted = None, 0, {}
            if not self._enabled:
                self.log_info(fl_ctx, "The hub is H1, which has no typed progress events: ProgressReporter is idle.")
            return
        if not self._enabled:
            return
        if event_type == AppEventType.ROUND_STARTED:
            self._round_started(fl_ctx, session)
        elif event_type == AppEventType.AFTER_CONTRIBUTION_ACCEPT:
            self._result_accepted(fl_ctx, session)
        elif event_type == AppEventType.AFTER_AGGREGATION:
            round_ = as_round(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, None))
            if round_ is None:
                round_ = self._round
            if round_ is not None:
                with self._lock:
                    returned = self._accepted.get(round_, 0)
                session.send_progress(
                    "ROUND_AGGREGATED", round_ + 1, {"returned": returned, "expected": max(self._expected, returned)}
                )

    def _round_started(self, fl_ctx: FLContext, session: HubSession) -> None:
        round_ = as_round(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, None))
        if round_ is None:
            return
        with self._lock:
            self._round = round_
            self._expected = len(fl_ctx.get_engine().get_clients())
            self._accepted[round_] = 0
        details: dict[str, Any] = {}
        total = as_round(fl_ctx.get_prop(AppConstants.NUM_ROUNDS, None))
        if total is not None:
            details["total_rounds"] = total
        session.send_progress("ROUND_STARTED", round_ + 1, details)

    def _result_accepted(self, fl_ctx: FLContext, session: HubSession) -> None:
        if not fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED, False):
            return
        client = peer_name(fl_ctx)
        result = fl_ctx.get_prop(AppConstants.TRAINING_RESULT, None)
        if not isinstance(result, Shareable):
            result = fl_ctx.get_prop(FLContextKey.TASK_RESULT, None)
        round_ = as_round(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, None))
        if round_ is None and isinstance(result, Shareable):
            round_ = result_round(result)
        if round_ is None:
            round_ = self._round
        if client is None or round_ is None:
            return
        with self._lock:
            self._accepted[round_] = self._accepted.get(round_, 0) + 1
        size = result_size(result) if isinstance(result, Shareable) else 0
        session.send_progress("CLIENT_RESULT_RECEIVED", round_ + 1, {"size_bytes": size}, client_name=client)
