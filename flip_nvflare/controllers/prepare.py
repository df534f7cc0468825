"""InitTraining and InitEvaluation: ask every client to prepare its data before the stock workflows run.

Put one first in ``config_fed_server.json``'s workflows; ScatterAndGather, CrossSiteModelEval or
NVFlare's evaluation workflow follow::

    {"id": "init_training", "path": "flip_nvflare.controllers.InitTraining",
     "args": {"min_clients": "{min_clients}"}}

The controller fires :attr:`FlipEvents.TRAINING_INITIATED` (StatusReporter reports INITIATED),
broadcasts the preparation task (``init_training`` / ``init_task``) and waits for the clients.
When every required client has prepared it fires :attr:`FlipEvents.PREPARATION_DONE` and hands
over to the next workflow. When a client's preparation fails -- or too few clients answer in
time -- it fires :attr:`FlipEvents.PREPARATION_FAILED` and ends the run with a panic that names
the client and the return code, never the client's error text (that text, already sanitized at
the trust, reaches the hub through ExceptionForwarder). A return code is a free string a client app
can set: it is named only if it is one of NVFlare's, and whatever else a client's reply carries
(its summary counts, its task name) is sanitized before it is logged or passed on.

:class:`CleanupClients` is the matching last workflow: it broadcasts the post task
(``post_validation`` / ``post_task``) so each client's ImageCleanup runs, and never fails the run.

``min_clients`` below the number of targets is allowed but warned about at the start (each round
of the next workflow would aggregate only the first results, see
:func:`flip_nvflare.jobs.check.min_clients_warning`); when the controller moves on before every
target has prepared, it logs which sites have not and what happens to them (each prepares before
its first task, or refuses it: :func:`flip_nvflare.executors.cohort.prepare_before_task`).

Event props (read them with ``fl_ctx.get_prop``):

- ``FlipProps.PREPARATION_TARGETS`` (TRAINING_INITIATED): names of the clients asked to prepare.
- ``FlipProps.PREPARATION_FAILED_CLIENT``, ``FlipProps.PREPARATION_FAILURE`` (PREPARATION_FAILED): the
  client (``None`` when the failure is about several) and a short reason without patient data;
  ``FLContextKey.EVENT_DATA`` holds the same as one sentence ("Data preparation failed at site-1: EXECUTION_EXCEPTION").
- ``FlipProps.PREPARATION_SUMMARY`` (PREPARATION_DONE): client name -> its preparation summary (counts only).
"""

from __future__ import annotations

import threading
from typing import Any

from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask, Task, TaskCompletionStatus
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from flip_nvflare.constants import FlipEvents, FlipHeaders, FlipProps, FlipTasks
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.executors.sanitize import hub_return_code, sanitize_hub_text
from flip_nvflare.jobs.check import min_clients_warning, name_sites


def _check_count(name: str, value: object, owner: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FlipConfigError(f"{owner}: {name} must be an integer >= 0, got {value!r}.")
    return value


def _check_clients(value: object, owner: str) -> list[str] | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise FlipConfigError(f"{owner}: participating_clients must be a list of client names, got {value!r}.")
    return list(dict.fromkeys(value))


class PrepareClients(Controller):
    """Broadcasts a preparation task and ends the run if a client cannot prepare.

    Args:
        min_clients: Clients that must prepare before the run goes on; normally ``"{min_clients}"``.
            0 (or unset) means all targets.
        participating_clients: Clients to ask (default: every connected client).
        wait_time_after_min_received: Seconds to wait for more clients once ``min_clients`` prepared.
        task_timeout: Seconds to wait for the preparation in all; 0 waits for ever.
        task_name: The preparation task (default: the class's :attr:`default_task_name`).
    """

    #: The task a subclass sends when the job config names none.
    default_task_name = ""
    #: Whether the next workflow aggregates only the first ``min_clients`` results (training), which
    #: decides what a ``min_clients`` below the number of sites costs (see :func:`min_clients_warning`).
    aggregates_first_results = True

    def __init__(
        self,
        min_clients: int | None = 0,
        participating_clients: list[str] | None = None,
        wait_time_after_min_received: int = 0,
        task_timeout: int = 0,
        task_name: str | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        task_name = self.default_task_name if task_name is None else task_name
        if not isinstance(task_name, str) or not task_name:
            raise FlipConfigError(f"{owner}: task_name must be a non-empty string.")
        self._task_name = task_name
        self._min_clients = _check_count("min_clients", min_clients, owner)
        self._participants = _check_clients(participating_clients, owner)
        self._wait_after_min = _check_count("wait_time_after_min_received", wait_time_after_min_received, owner)
        self._timeout = _check_count("task_timeout", task_timeout, owner)
        if self._participants and self._min_clients > len(self._participants):
            raise FlipConfigError(
                f"{owner}: min_clients ({self._min_clients}) is more than the {len(self._participants)} "
                "participating_clients."
            )
        self._lock = threading.Lock()
        self._prepared: dict[str, Any] = {}
        self._failed: dict[str, str] = {}

    def start_controller(self, fl_ctx: FLContext) -> None:
        """Nothing to set up; arguments were checked when the config was built."""

    def stop_controller(self, fl_ctx: FLContext) -> None:
        """Cancel the preparation task if the run ends while it is out."""
        self.cancel_all_tasks(fl_ctx=fl_ctx)

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Fire TRAINING_INITIATED, broadcast the task, wait, then fire DONE or FAILED (and panic)."""
        targets = self._targets(fl_ctx)
        if targets is None:
            return
        required = self._min_clients or len(targets)
        if required > len(targets):
            self._fail(
                fl_ctx,
                None,
                f"{required} clients must prepare (min_clients) but only {len(targets)} are connected "
                f"({', '.join(targets)}).",
            )
            return
        shortfall = min_clients_warning(required, targets, training=self.aggregates_first_results)
        if shortfall:
            self.log_warning(fl_ctx, f"{shortfall} (job start)", fire_event=False)
        fl_ctx.set_prop(FlipProps.PREPARATION_TARGETS, list(targets), private=True, sticky=False)
        self.fire_event(FlipEvents.TRAINING_INITIATED, fl_ctx)
        self.log_info(fl_ctx, f"Asking {len(targets)} client(s) to prepare their data (task {self._task_name!r}).")

        task = Task(
            name=self._task_name,
            data=Shareable(),
            timeout=self._timeout,
            result_received_cb=self._on_result,
        )
        self.broadcast_and_wait(
            task=task,
            fl_ctx=fl_ctx,
            targets=targets,
            min_responses=required,
            wait_time_after_min_received=self._wait_after_min,
            abort_signal=abort_signal,
        )
        if abort_signal.triggered:
            return
        with self._lock:
            failed = dict(self._failed)
            prepared = dict(self._prepared)
        if failed:
            names = ", ".join(sorted(failed))
            reasons = "; ".join(f"{name}: {reason}" for name, reason in sorted(failed.items()))
            self.system_panic(
                f"Data preparation failed at {names} ({reasons}). The run was stopped before training; the "
                "trust's sanitized error is in the model's FLIP log, the full one in that client's log.",
                fl_ctx,
            )
            return
        if len(prepared) < required:
            silent = [name for name in targets if name not in prepared]
            why = "timed out" if task.completion_status == TaskCompletionStatus.TIMEOUT else "did not answer"
            self._fail(
                fl_ctx,
                None,
                f"only {len(prepared)} of the {required} required clients prepared their data; "
                f"{', '.join(silent)} {why}.",
            )
            return
        fl_ctx.set_prop(FlipProps.PREPARATION_SUMMARY, prepared, private=True, sticky=False)
        self.fire_event(FlipEvents.PREPARATION_DONE, fl_ctx)
        self.log_info(fl_ctx, f"{len(prepared)} client(s) prepared: {_describe(prepared)}.")
        pending = [name for name in targets if name not in prepared]
        if pending:
            sent = {client_task.client.name for client_task in task.client_tasks}
            self.log_warning(fl_ctx, self._moving_on(required, targets, pending, sent), fire_event=False)

    def _moving_on(self, required: int, targets: list[str], pending: list[str], sent: set[str]) -> str:
        """What happens to the sites that had not prepared when the run moved on without them."""
        busy = [name for name in pending if name in sent]
        unsent = [name for name in pending if name not in sent]
        parts = [
            f"Moving on with {len(targets) - len(pending)} of {len(targets)} sites prepared (min_clients {required}); "
            f"not prepared: {name_sites(pending)}."
        ]
        if busy:
            parts.append(
                f"Still preparing: {name_sites(busy)}; each finishes its preparation before it takes another task "
                "(its late answer is ignored here)."
            )
        if unsent:
            parts.append(
                f"Never sent the preparation task: {name_sites(unsent)}; each prepares its cohort when its first "
                "task arrives, or refuses that task with a clear error if it cannot (no site runs on an "
                "unprepared cohort)."
            )
        if self.aggregates_first_results:
            parts.append(
                f"Each round aggregates the first {required} results, so their work counts only when it is among "
                "them; set min_clients to the number of sites to train on all of them."
            )
        return " ".join(parts)

    def _targets(self, fl_ctx: FLContext) -> list[str] | None:
        connected = [c.name for c in fl_ctx.get_engine().get_clients()]
        if self._participants is None:
            return connected
        absent = [name for name in self._participants if name not in connected]
        if absent:
            self._fail(
                fl_ctx,
                None,
                f"participating client(s) {', '.join(absent)} are not connected (connected: {', '.join(connected)}).",
            )
            return None
        return list(self._participants)

    def _on_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        result = client_task.result
        name = client_task.client.name
        client_task.result = None
        rc = result.get_return_code(ReturnCode.OK) if isinstance(result, Shareable) else ReturnCode.EXECUTION_EXCEPTION
        if rc == ReturnCode.OK:
            summary = result.get_header(FlipHeaders.PREPARATION_SUMMARY) if isinstance(result, Shareable) else None
            with self._lock:
                self._prepared[name] = summary if isinstance(summary, dict) else {}
            return
        if rc == ReturnCode.TASK_UNKNOWN:
            reason = f"{rc}: the client has no executor for task {self._task_name!r} (add CohortPreparer for it)"
        else:
            reason = hub_return_code(rc)  # goes into the event, the panic and the run summary
        with self._lock:
            self._failed[name] = reason
        self._fire_failed(fl_ctx, name, reason)
        self.log_error(fl_ctx, f"Client {name} could not prepare its data ({reason}).", fire_event=False)
        # Stop waiting for the others: the run ends anyway.
        self.cancel_task(client_task.task, completion_status=TaskCompletionStatus.ERROR, fl_ctx=fl_ctx)

    def _fail(self, fl_ctx: FLContext, client: str | None, reason: str) -> None:
        self._fire_failed(fl_ctx, client, reason)
        self.system_panic(f"Data preparation failed: {reason}", fl_ctx)

    def _fire_failed(self, fl_ctx: FLContext, client: str | None, reason: str) -> None:
        """Fire PREPARATION_FAILED; the reason (no patient data) is also the event's EVENT_DATA."""
        fl_ctx.set_prop(FlipProps.PREPARATION_FAILED_CLIENT, client, private=True, sticky=False)
        fl_ctx.set_prop(FlipProps.PREPARATION_FAILURE, reason, private=True, sticky=False)
        where = f" at {client}" if client else ""
        self.fire_event_with_data(
            FlipEvents.PREPARATION_FAILED, fl_ctx, FLContextKey.EVENT_DATA, f"Data preparation failed{where}: {reason}"
        )

    def process_result_of_unknown_task(
        self, client: Client, task_name: str, client_task_id: str, result: Shareable, fl_ctx: FLContext
    ) -> None:
        """A late answer (after the task ended) changes nothing."""
        shown = sanitize_hub_text(task_name, _MAX_NAME)  # the task name comes with the client's request
        self.log_info(fl_ctx, f"Ignoring a late result from {client.name} for task {shown!r}.")


class InitTraining(PrepareClients):
    """Asks every client to prepare its data (task ``init_training``) before training starts.

    Takes the arguments of :class:`PrepareClients`.
    """

    default_task_name = FlipTasks.INIT_TRAINING


class InitEvaluation(PrepareClients):
    """Asks every client to prepare its data (task ``init_task``) before evaluation starts.

    Takes the arguments of :class:`PrepareClients`.
    """

    default_task_name = FlipTasks.INIT_TASK
    aggregates_first_results = False


class CleanupClients(Controller):
    """Last workflow of a job: asks every client to run its post task (ImageCleanup). Never fails the run.

    Args:
        task_name: ``post_validation`` (training jobs) or ``post_task`` (evaluation jobs).
        participating_clients: Clients to ask (default: every connected client).
        task_timeout: Seconds to wait for the clients (0 waits for ever).
    """

    def __init__(
        self,
        task_name: str = FlipTasks.POST_VALIDATION,
        participating_clients: list[str] | None = None,
        task_timeout: int = 600,
    ) -> None:
        super().__init__()
        self._task_name = task_name
        self._participants = _check_clients(participating_clients, "CleanupClients")
        self._timeout = _check_count("task_timeout", task_timeout, "CleanupClients")

    def start_controller(self, fl_ctx: FLContext) -> None:
        """Nothing to set up."""

    def stop_controller(self, fl_ctx: FLContext) -> None:
        """Cancel the post task if the run ends while it is out."""
        self.cancel_all_tasks(fl_ctx=fl_ctx)

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Broadcast the post task to every client and wait (up to ``task_timeout``)."""
        connected = [c.name for c in fl_ctx.get_engine().get_clients()]
        targets = [n for n in self._participants if n in connected] if self._participants else connected
        if not targets:
            return
        task = Task(name=self._task_name, data=Shareable(), timeout=self._timeout, result_received_cb=self._on_result)
        self.broadcast_and_wait(task=task, fl_ctx=fl_ctx, targets=targets, min_responses=0, abort_signal=abort_signal)

    def _on_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        result = client_task.result
        client_task.result = None
        name = client_task.client.name
        rc = result.get_return_code(ReturnCode.OK) if isinstance(result, Shareable) else None
        if rc == ReturnCode.OK:
            counts = result.get_header(FlipHeaders.CLEANUP_SUMMARY) if isinstance(result, Shareable) else None
            self.log_info(fl_ctx, f"{name} finished {self._task_name!r}: {_counts(counts)}.")
        else:
            self.log_warning(
                fl_ctx, f"{name} answered {self._task_name!r} with {hub_return_code(rc)}.", fire_event=False
            )

    def process_result_of_unknown_task(
        self, client: Client, task_name: str, client_task_id: str, result: Shareable, fl_ctx: FLContext
    ) -> None:
        """A late answer changes nothing."""


def _describe(prepared: dict[str, Any]) -> str:
    parts = []
    for name, summary in sorted(prepared.items()):
        if summary:
            ready, accessions = _count(summary.get("ready")), _count(summary.get("accessions"))
            parts.append(f"{name} {ready}/{accessions} accessions ready")
        else:
            parts.append(name)
    return ", ".join(parts)


#: Cap on a sanitized name taken from a client's reply.
_MAX_NAME = 200


def _count(value: object) -> str:
    """A count from a client's summary header, or ``?`` if it is not a count (the header is the client's to set)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "?"


def _counts(counts: object) -> str:
    """A client's cleanup counts for the log: numbers only, under sanitized names."""
    if not isinstance(counts, dict):
        return "{}"
    shown = {
        sanitize_hub_text(key, _MAX_NAME): value
        for key, value in counts.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    return str(shown)
