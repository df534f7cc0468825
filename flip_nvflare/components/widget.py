"""HubWidget: the base of the server components that report to the hub, and small shared helpers.

A hub widget gets the job's :class:`~flip_nvflare.components.session.HubSession` from the
FlipBackend component (``flip_id``) at START_RUN, holds it until END_RUN, and never lets an
exception of its own escape into NVFlare: a reporting problem is logged, training goes on.
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from flip_nvflare.backend import get_hub_session
from flip_nvflare.components.session import HubSession, RunOutcome
from flip_nvflare.constants import DEFAULT_FLIP_ID
from flip_nvflare.errors import FlipConfigError, FlipError


class HubWidget(FLComponent):
    """Base class of the FLIP server widgets.

    Subclasses implement :meth:`on_event`, which is called for every event once the session is
    open (START_RUN included). Events that other components fire while END_RUN is being handled
    (e.g. the ResultsUploader's) still arrive after this widget's own END_RUN: the session stays
    open until its last holder lets go.

    Args:
        flip_id: Id of the job's FlipBackend component.
    """

    def __init__(self, flip_id: str = DEFAULT_FLIP_ID) -> None:
        super().__init__()
        if not isinstance(flip_id, str) or not flip_id:
            raise FlipConfigError(f"{type(self).__name__}: flip_id must be the id of the FlipBackend component.")
        self._flip_id = flip_id
        self._session: HubSession | None = None
        self._holder = f"{type(self).__name__}@{id(self):x}"

    @property
    def flip_id(self) -> str:
        """Id of the FlipBackend component this widget reports through."""
        return self._flip_id

    @property
    def session(self) -> HubSession | None:
        """The hub session, while the run is on (None if it could not be opened)."""
        return self._session

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Open the session at START_RUN, dispatch to :meth:`on_event`, release it at END_RUN."""
        if event_type == EventType.START_RUN:
            try:
                self._session = get_hub_session(fl_ctx, self._flip_id)
            except FlipError:
                self._session = None  # the FlipBackend reported why and stopped the run
                self.log_warning(fl_ctx, f"{self.name} is idle: the FLIP backend is not usable.", fire_event=False)
                return
            self._session.hold(self._holder)
        session = self._session
        if session is None:
            return
        if event_type == EventType.ABOUT_TO_END_RUN:
            session.settle_outcome(_outcome_now(fl_ctx, session))
        try:
            self.on_event(event_type, fl_ctx, session)
        except Exception as exc:  # reporting must never break the run
            self.log_exception(fl_ctx, f"{self.name} failed on event {event_type}: {type(exc).__name__}: {exc}")
        finally:
            if event_type == EventType.END_RUN:
                session.release(self._holder)

    def on_event(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        """Handle one event with the open session (override)."""


def run_outcome(fl_ctx: FLContext, session: HubSession) -> RunOutcome:
    """How the run ended: failed (a fatal error or a failed preparation), aborted, or completed.

    Whether it was aborted is settled at ABOUT_TO_END_RUN: after that, NVFlare's own teardown may
    trigger the run's abort signal (the simulator does, once the clients have ended), which is not
    an abort. A failure always counts, even one recorded while the run ends.
    """
    if session.journal.failure is not None or fl_ctx.get_prop(FLContextKey.FATAL_SYSTEM_ERROR, False):
        return RunOutcome.FAILED
    settled = session.outcome
    return settled if settled is not None else _outcome_now(fl_ctx, session)


def _outcome_now(fl_ctx: FLContext, session: HubSession) -> RunOutcome:
    if session.journal.failure is not None or fl_ctx.get_prop(FLContextKey.FATAL_SYSTEM_ERROR, False):
        return RunOutcome.FAILED
    signal = fl_ctx.get_run_abort_signal()
    if signal is not None and signal.triggered:
        return RunOutcome.ABORTED
    return RunOutcome.COMPLETED


def peer_name(fl_ctx: FLContext) -> str | None:
    """The name of the client whose request or result is being processed, if any."""
    peer = fl_ctx.get_peer_context()
    name = peer.get_identity_name() if peer is not None else None
    return name if isinstance(name, str) and name else None


def as_round(value: Any) -> int | None:
    """``value`` as a round number (int >= 0), or None."""
    if isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 and number == value else None


def result_round(result: Shareable) -> int | None:
    """The round a client result belongs to, from the round cookie or header the controller set."""
    for value in (
        result.get_cookie(AppConstants.CONTRIBUTION_ROUND, None),
        result.get_header(AppConstants.CURRENT_ROUND, None),
    ):
        round_ = as_round(value)
        if round_ is not None:
            return round_
    return None


class ClientRounds:
    """Remembers the round of the last task each client was sent (for metrics and errors without one)."""

    def __init__(self) -> None:
        self._rounds: dict[str, int] = {}
        self.server_round: int | None = None

    def task_sent(self, fl_ctx: FLContext) -> None:
        """Call on AFTER_TASK_DATA_FILTER: note the round of the task going to the peer."""
        client = peer_name(fl_ctx)
        data = fl_ctx.get_prop(FLContextKey.TASK_DATA, None)
        if client is None or not isinstance(data, Shareable):
            return
        round_ = as_round(data.get_header(AppConstants.CURRENT_ROUND, None))
        if round_ is not None:
            self._rounds[client] = round_

    def round_started(self, fl_ctx: FLContext) -> None:
        """Call on ROUND_STARTED: note the server's current round."""
        round_ = as_round(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, None))
        if round_ is not None:
            self.server_round = round_

    def of(self, client_name: str) -> int:
        """The round ``client_name`` is working on (its last task's round, else the server's, else 0)."""
        return self._rounds.get(client_name, self.server_round if self.server_round is not None else 0)
