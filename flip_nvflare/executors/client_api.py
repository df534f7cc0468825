"""ClientApiRunner: NVFlare's Client API executor, with FLIP's backend and failure reporting added.

It is NVFlare's :class:`~nvflare.app_common.executors.client_api_executor.ClientAPIExecutor`
(every argument and both execution modes unchanged), extended through its events and replies:

- at START_RUN it makes the job's FLIP backend the one ``FLIP()`` returns in this process, so an
  in-process script gets the job's backend (dev or prod as the job config says). An
  external-process script builds the same backend from its app's config
  (:mod:`flip_nvflare.executors.script_backend`);
- when the script fails, the reply carries the failure as sanitized text in its ``exception``
  header (NVFlare's executor sends none), for the server's ExceptionForwarder: an in-process
  script's exception is caught as its thread ends; an external script run through
  ``python -m flip_nvflare.executors.script`` leaves it in a file in its app folder. The text is
  sanitized here, at the trust, like the executor-style runners' (no accession ids, query, data
  paths); the full traceback stays in the site's log;
- a failed reply keeps only its headers: a failed result carries no weights;
- every metric the script logs (``SummaryWriter``, ``flare.log``) passes the site's metric policy
  before it leaves (:func:`flip_nvflare.metrics.admit_metric`: the allow list, non-finite values
  dropped and counted, rounding), as ``send_metrics_value`` does for executor-style apps.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from nvflare.apis.dxo import DXO
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor

from flip_nvflare.backend import get_flip_backend
from flip_nvflare.client import clear_script_backend, set_script_backend
from flip_nvflare.constants import DEFAULT_FLIP_ID, FlipHeaders
from flip_nvflare.errors import FlipError, format_traceback
from flip_nvflare.executors.manifest import cohort_identifiers
from flip_nvflare.executors.sanitize import DEFAULT_MAX_CHARS, Sanitizer
from flip_nvflare.executors.script import FAILURE_FILE
from flip_nvflare.filters.percentile_privacy import withhold_payload
from flip_nvflare.workspace import job_custom_dir, job_run_dir

#: The thread name NVFlare's in-process backend gives the script's thread.
IN_PROCESS_THREAD = "client_api_in_process_trainer"

#: Seconds a reply that NVFlare marked TASK_ABORTED waits for the script thread's exception: an
#: in-process script that raises asks NVFlare to abort the task just before its thread ends.
SCRIPT_FAILURE_WAIT = 5.0

_hook_lock = threading.Lock()
_hook_installed = False
_last_failure: dict[str, str] = {}
_failure_seen = threading.Event()


def _record_thread_failure(args: threading.ExceptHookArgs) -> None:
    thread = args.thread
    if thread is not None and thread.name == IN_PROCESS_THREAD and args.exc_value is not None:
        _last_failure["text"] = format_traceback(args.exc_value)
        _failure_seen.set()


def _forget_failure() -> None:
    _last_failure.clear()
    _failure_seen.clear()


def _install_thread_hook() -> None:
    """Chain a hook in front of ``threading.excepthook`` that keeps the script thread's last exception."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            try:
                _record_thread_failure(args)
            finally:
                previous(args)

        threading.excepthook = hook
        _hook_installed = True


class ClientApiRunner(ClientAPIExecutor):
    """Runs a FLIP Client API script (NVFlare's ClientAPIExecutor + FLIP's backend and failure text).

    Args:
        flip_id: Id of the job's FlipBackend component.
        project_id: The project's encrypted id (redacted from failure text), normally ``"{project_id}"``.
        query: The cohort query (redacted from failure text), normally ``"{query}"``.
        max_exception_chars: Cap on the failure text sent to the hub.
        redact_columns: Dataframe columns whose values are also redacted from failure text.
        *args: NVFlare's ClientAPIExecutor positional arguments (``execution_mode`` first).
        **kwargs: NVFlare's ClientAPIExecutor arguments (``execution_mode``, ``task_script_path``,
            ``task_script_args``, ``command``, task names, exchange format...).
    """

    def __init__(
        self,
        *args: Any,
        flip_id: str = DEFAULT_FLIP_ID,
        project_id: str = "{project_id}",
        query: str = "{query}",
        max_exception_chars: int = DEFAULT_MAX_CHARS,
        redact_columns: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._flip_id = flip_id
        self._project_id = project_id
        self._query = query
        self._max_exception_chars = max_exception_chars
        self._redact_columns = list(redact_columns or [])
        self._app_dir: Path | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Make the job's backend current before the script starts; forget it when the run ends."""
        if event_type == EventType.START_RUN:
            _forget_failure()
            _install_thread_hook()
            workspace = fl_ctx.get_engine().get_workspace()
            self._app_dir = Path(workspace.get_app_dir(fl_ctx.get_job_id()))
            (self._app_dir / FAILURE_FILE).unlink(missing_ok=True)
            try:
                set_script_backend(get_flip_backend(fl_ctx, self._flip_id))
            except FlipError as exc:
                self.log_error(fl_ctx, f"The script cannot get the job's FLIP backend: {exc}", fire_event=False)
        super().handle_event(event_type, fl_ctx)
        if event_type == EventType.END_RUN:
            clear_script_backend()

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Run the task through NVFlare's executor; give a failed reply FLIP's sanitized exception text."""
        result = super().execute(task_name, shareable, fl_ctx, abort_signal)
        return_code = result.get_return_code()
        if return_code == ReturnCode.OK:
            return result
        if return_code == ReturnCode.TASK_ABORTED:
            if abort_signal.triggered or not self._script_failed():
                return result  # aborted from outside (the server ended the task): not the script's failure
            # the script raised: NVFlare reports that as an aborted task, FLIP as the failure it is
            result.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
        withhold_payload(result)
        if result.get_header(FlipHeaders.EXCEPTION) is None:
            result.set_header(FlipHeaders.EXCEPTION, self._failure_text(fl_ctx, task_name))
        return result

    def fire_log_analytics(self, fl_ctx: FLContext, dxo: DXO) -> None:
        """Pass the script's metric on only as the site's metric policy allows (see the module docstring)."""
        admitted = admit_analytics(dxo, fl_ctx)
        if admitted is not None:
            super().fire_log_analytics(fl_ctx, admitted)

    def _script_failed(self) -> bool:
        """Whether an in-process script raised (waiting briefly for its thread to end, see SCRIPT_FAILURE_WAIT)."""
        return self.execution_mode == "in_process" and _failure_seen.wait(SCRIPT_FAILURE_WAIT)

    def _failure_text(self, fl_ctx: FLContext, task_name: str) -> str:
        raw = _last_failure.get("text")
        if raw is None and self._app_dir is not None:
            failure = self._app_dir / FAILURE_FILE
            if failure.is_file() and not failure.is_symlink():
                raw = failure.read_text(encoding="utf-8", errors="replace")[: 64 * self._max_exception_chars]
        if raw is None:
            return f"The script ended without a result for task {task_name!r} (see the site's log)."
        try:
            return self._sanitizer(fl_ctx).text(raw)
        except Exception as exc:  # never send unsanitized text
            self.log_error(
                fl_ctx, f"Sanitizing the script's failure failed:\n{format_traceback(exc)}", fire_event=False
            )
            return f"The script failed on task {task_name!r} (details withheld: see the site's log)."

    def _sanitizer(self, fl_ctx: FLContext) -> Sanitizer:
        custom = job_custom_dir(fl_ctx)
        return Sanitizer(
            identifiers=cohort_identifiers(job_run_dir(fl_ctx), self._redact_columns),
            query=self._query if isinstance(self._query, str) and self._query.strip() else None,
            secrets=[self._project_id if isinstance(self._project_id, str) and self._project_id else None],
            code_roots=[custom] if custom is not None else [],
            max_chars=self._max_exception_chars,
        )


def admit_analytics(dxo: DXO, fl_ctx: FLContext) -> DXO | None:
    """``dxo`` (an NVFlare analytics record) as the site's metric policy lets it leave, or None.

    A scalar is admitted (or dropped) by its tag; each entry of a scalars record by ``tag/key``
    (dropped entries removed, the record dropped when none is left). Text, images and log records
    carry no number the policy can check: they leave only where the site has no metric policy.
    """
    from nvflare.apis.analytix import AnalyticsDataType, TrackConst

    from flip_nvflare.filters.metric_policy import MetricPolicy
    from flip_nvflare.metrics import admit_metric

    data = dxo.data if isinstance(dxo.data, dict) else {}
    tag = data.get(TrackConst.TRACK_KEY)
    value = data.get(TrackConst.TRACK_VALUE)
    kind = dxo.get_meta_prop(TrackConst.DATA_TYPE_KEY)
    if kind in (AnalyticsDataType.SCALAR, AnalyticsDataType.METRIC, "SCALAR", "METRIC"):
        admitted = admit_metric(tag, value, fl_ctx)
        if admitted is None:
            return None
        data[TrackConst.TRACK_VALUE] = admitted
        return dxo
    if kind in (AnalyticsDataType.SCALARS, AnalyticsDataType.METRICS, "SCALARS", "METRICS") and isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            admitted = admit_metric(f"{tag}/{key}", item, fl_ctx)
            if admitted is not None:
                kept[key] = admitted
        if not kept:
            return None
        data[TrackConst.TRACK_VALUE] = kept
        return dxo
    policy = MetricPolicy.for_site(fl_ctx)
    return dxo if policy.allow is None and policy.broken is None else None
