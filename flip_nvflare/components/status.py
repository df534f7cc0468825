"""StatusReporter: tells the hub where the model's run is in its lifecycle.

The lifecycle, each status at most once and in this order::

    INITIATED -> PREPARED -> TRAINING_STARTED (RUNNING on H2 hubs) -> one final status

Progress statuses are triggered by NVFlare and FLIP events (configurable). Reaching one sends any
earlier one not sent yet (FedAvg, for example, starts training before it reports the initial
model), and a status never goes backwards. Exactly one final status is sent:

* ``RESULTS_UPLOADED`` / ``RESULTS_UPLOAD_FAILED`` (ERROR on H1 hubs): when the ResultsUploader
  reports the end of its upload (FlipEvents.RESULTS_UPLOADED / RESULTS_UPLOAD_FAILED);
* ``ERROR``: at once on FATAL_SYSTEM_ERROR (including a client failure that ends the run) or
  FlipEvents.PREPARATION_FAILED, so it is queued even if the run dies before END_RUN;
* ``STOPPED``: the run was aborted (its abort signal fired without a fatal error).

When the server runs a JobWatcher (``flip_nvflare.components.job_watch``), an aborted run's final
status is left to it: only the server's parent process knows whether NVFlare ended the job because
a person aborted it (STOPPED) or because a site failed (ERROR). The reporter writes what the
watcher needs to its hand-off file (``flip_nvflare.components.handoff``).

If the job has no ResultsUploader, a run that completes reports ``completed_status`` at END_RUN.
A run that completes although every client result of its work failed (every training result, or
every client's evaluation) ends ``ERROR`` instead of a success status; its results, each failure
recorded, are still uploaded.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components import handoff
from flip_nvflare.components.session import HubSession, RunOutcome
from flip_nvflare.components.widget import HubWidget, run_outcome
from flip_nvflare.components.work import DEFAULT_WORK_TASKS, WorkTally
from flip_nvflare.constants import DEFAULT_FLIP_ID, FlipEvents, FlipProps, ModelStatus
from flip_nvflare.core.base import as_model_status
from flip_nvflare.errors import FlipConfigError, FlipError
from flip_nvflare.executors.sanitize import sanitize_hub_text

#: Non-final statuses, in lifecycle order.
LIFECYCLE = (ModelStatus.INITIATED, ModelStatus.PREPARED, ModelStatus.TRAINING_STARTED)

#: Events that move the lifecycle forward, by default.
DEFAULT_STATUS_EVENTS: dict[ModelStatus, tuple[str, ...]] = {
    ModelStatus.INITIATED: (EventType.START_RUN, FlipEvents.TRAINING_INITIATED),
    ModelStatus.PREPARED: (FlipEvents.PREPARATION_DONE, AppEventType.INITIAL_MODEL_LOADED),
    ModelStatus.TRAINING_STARTED: (
        AppEventType.TRAINING_STARTED,
        AppEventType.ROUND_STARTED,
        AppEventType.CROSS_VAL_INIT,
        AppEventType.SEND_MODEL_FOR_VALIDATION,
    ),
}

_ERROR_EVENTS = (EventType.FATAL_SYSTEM_ERROR, FlipEvents.PREPARATION_FAILED)
#: Cap on a failure reason in the log.
_MAX_REASON = 1000
_END_EVENTS = (EventType.END_WORKFLOW, EventType.ABOUT_TO_END_RUN, EventType.END_RUN)
_UPLOAD_EVENTS = {
    FlipEvents.RESULTS_UPLOADED: ModelStatus.RESULTS_UPLOADED,
    FlipEvents.RESULTS_UPLOAD_FAILED: ModelStatus.RESULTS_UPLOAD_FAILED,
}


def _status_events(overrides: Mapping[str, Sequence[str]] | None) -> dict[str, ModelStatus]:
    table = dict(DEFAULT_STATUS_EVENTS)
    for name, events in (overrides or {}).items():
        try:
            status = as_model_status(name)
        except FlipError:
            status = None
        if status not in LIFECYCLE:
            raise FlipConfigError(
                f"StatusReporter status_events: {name!r} is not one of INITIATED, PREPARED, TRAINING_STARTED."
            )
        if isinstance(events, str) or not all(isinstance(e, str) and e for e in events):
            raise FlipConfigError(f"StatusReporter status_events[{name!r}] must be a list of event names.")
        table[status] = tuple(events)
    by_event: dict[str, ModelStatus] = {}
    for status in LIFECYCLE:
        for event in table[status]:
            by_event.setdefault(event, status)
    return by_event


class StatusReporter(HubWidget):
    """Reports the model's lifecycle statuses to the hub (through the ordered background delivery).

    Args:
        flip_id: Id of the FlipBackend component.
        status_events: Optional overrides of which events trigger INITIATED, PREPARED and
            TRAINING_STARTED, e.g. ``{"PREPARED": ["_flip_preparation_done"]}``.
        completed_status: Final status of a completed run in a job without a ResultsUploader.
        work_tasks: Tasks whose client results are the run's work (default ``train``, ``evaluate``,
            ``evaluation``): if every result of one of them failed, a run that otherwise completed
            ends ``ERROR`` (see :mod:`flip_nvflare.components.work`).
    """

    def __init__(
        self,
        flip_id: str = DEFAULT_FLIP_ID,
        status_events: Mapping[str, Sequence[str]] | None = None,
        completed_status: str = ModelStatus.RESULTS_UPLOADED.value,
        work_tasks: Sequence[str] | None = None,
    ) -> None:
        super().__init__(flip_id)
        self._work = WorkTally(DEFAULT_WORK_TASKS if work_tasks is None else work_tasks)
        self._by_event = _status_events(status_events)
        try:
            self._completed_status = as_model_status(completed_status)
        except FlipError as exc:
            raise FlipConfigError(f"StatusReporter completed_status: {exc}") from None
        if not self._completed_status.is_final:
            raise FlipConfigError("StatusReporter completed_status must be a final status (e.g. RESULTS_UPLOADED).")
        self._lock = threading.Lock()
        self._reached = -1  # index in LIFECYCLE of the last status sent
        self._final: ModelStatus | None = None

    @property
    def final_status(self) -> ModelStatus | None:
        """The final status sent in this run, if any."""
        with self._lock:
            return self._final

    def on_event(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        """Translate events into statuses."""
        if event_type == EventType.START_RUN:
            with self._lock:
                self._reached = -1
                self._final = None
            self._work.reset()
            self._handoff(fl_ctx, **_handoff_identity(fl_ctx, session))
        elif event_type == EventType.BEFORE_PROCESS_SUBMISSION:
            self._work.record(fl_ctx)
        if event_type in _ERROR_EVENTS:
            self._finish(session, ModelStatus.ERROR, fl_ctx, f"event {event_type}")
        elif event_type in _UPLOAD_EVENTS:
            if fl_ctx.get_prop(FlipProps.RESULTS_FLIP_ID, None) in (None, self.flip_id):  # not another backend's upload
                self._finish(session, _UPLOAD_EVENTS[event_type], fl_ctx, f"event {event_type}")
        elif event_type in self._by_event:
            self._advance(session, self._by_event[event_type], fl_ctx)
        if event_type in _END_EVENTS:
            self._check_end(event_type, fl_ctx, session)

    def _advance(self, session: HubSession, status: ModelStatus, fl_ctx: FLContext) -> None:
        target = LIFECYCLE.index(status)
        with self._lock:
            if self._final is not None or target <= self._reached:
                return
            to_send = LIFECYCLE[self._reached + 1 : target + 1]
            self._reached = target
            for item in to_send:
                session.report_status(item)
        self.log_info(fl_ctx, f"FLIP status {', '.join(s.value for s in to_send)} queued for the hub.")

    def _finish(self, session: HubSession, status: ModelStatus, fl_ctx: FLContext, why: str) -> None:
        failed = self._work.all_failed() if status not in (ModelStatus.ERROR, ModelStatus.STOPPED) else None
        if failed:  # the run completed but produced nothing: its results record each failure
            status, why = ModelStatus.ERROR, f"{failed}; {why}"
        with self._lock:
            if self._final is not None:
                return
            self._final = status
            session.report_status(status)
        self._handoff(fl_ctx, final_status=status.value)
        self.log_info(fl_ctx, f"FLIP final status {status.value} queued for the hub ({why}).")

    def _handoff(self, fl_ctx: FLContext, **fields: object) -> None:
        root = _workspace_root(fl_ctx)
        if root is not None:
            handoff.update_handoff(root, str(fl_ctx.get_job_id()), **fields)

    def _check_end(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        outcome = run_outcome(fl_ctx, session)
        if outcome is RunOutcome.FAILED:
            # the failure reason may quote a client (NVFlare's workflows put its return code in their panic)
            why = sanitize_hub_text(session.journal.failure or "fatal error", _MAX_REASON)
            self._finish(session, ModelStatus.ERROR, fl_ctx, f"run failed: {why}")
        elif outcome is RunOutcome.ABORTED:
            root = _workspace_root(fl_ctx)
            if root is not None and handoff.watcher_present(root):
                with self._lock:
                    if self._final is not None:
                        return
                self._handoff(fl_ctx, aborted=True)
                if event_type == EventType.END_RUN:
                    self.log_info(fl_ctx, "Run aborted: the server's JobWatcher reports the final status.")
                return
            self._finish(session, ModelStatus.STOPPED, fl_ctx, "run aborted")
        elif event_type == EventType.END_RUN and not session.results_upload_expected:
            self._finish(session, self._completed_status, fl_ctx, "run completed; this job has no ResultsUploader")


def _workspace_root(fl_ctx: FLContext) -> str | None:
    try:
        return str(fl_ctx.get_engine().get_workspace().get_root_dir())
    except Exception:
        return None


def _handoff_identity(fl_ctx: FLContext, session: HubSession) -> dict[str, object]:
    try:
        clients = [c.name for c in fl_ctx.get_engine().get_clients()]
    except Exception:
        clients = []
    return {
        "model_id": session.model_id,
        "flip_mode": session.flip_mode,
        "hub_api": session.hub_api.value if session.hub_api else None,
        "trusts": session.trust_names.as_dict(clients),
        "final_status": None,
        "aborted": False,
    }
