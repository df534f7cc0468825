"""JobWatcher: the FL server's site-level FLIP component (its parent process, not a job).

Configured once in the server's ``local/resources.json`` (see docs/deployment.md)::

    {"id": "flip_job_watcher", "path": "flip_nvflare.components.job_watch.JobWatcher", "args": {}}

It does three things no job component can:

1. **A site that lost its job is reported to the job.** NVFlare's parent process tells a job's
   process about a dead site when the site's heartbeats no longer list the job, or when its
   heartbeats stop for the deployment's ``heart_beat_timeout``. A site that *restarts* (its
   startup kit does so after a crash or a reboot) registers again under a new token, and NVFlare
   then never reports the job there as dead: the job would wait for that site for ever. The
   watcher checks every ``check_interval`` seconds whether a running job's participant is still
   registered under the token it joined the job with; when not, it sends NVFlare's own dead-job
   notice to the job (again every ``renotify_interval`` seconds, so every workflow of the job
   learns it). The job's workflows then drop the site after ``dead_client_grace_period``.
2. **It learns which site failed.** NVFlare ends a job when a site's job process dies (an
   out-of-memory kill, a crash in native code); the site's failure report names it. The watcher
   reads those reports (an incoming request filter on the server's cell; the report is then
   handled by NVFlare as before).
3. **It reports the final status of a FLIP job that could not report its own.** When a job ends
   (JOB_COMPLETED, or JOB_ABORTED when it could not start) it reads the job's hand-off file
   (:mod:`flip_nvflare.components.handoff`) or, when the job never ran its StatusReporter (its
   server app could not be built), the job's server config from the job store. A FLIP prod job
   with no final status gets one: STOPPED when a person aborted it, ERROR for any failure, with a
   hub log entry naming the trust whose site failed. The text holds names and NVFlare's codes
   only (sanitized); the hub key comes from the server's environment, as for the jobs.
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, RunProcessKey, SystemComponents
from nvflare.apis.fl_context import FLContext
from nvflare.apis.job_def import JobMetaKey, RunStatus

from flip_nvflare.args import positive_number
from flip_nvflare.components import handoff
from flip_nvflare.constants import FlipMode, ModelStatus, default_trust_name
from flip_nvflare.executors.sanitize import sanitize_hub_text

#: Component paths of the FlipBackend (the old one still loads for one release).
FLIP_BACKEND_PATHS = ("flip_nvflare.backend.FlipBackend", "flip_nvflare.components.FlipBackend")
#: NVFlare's process exit codes a site reports for a failed job, and what they mean for FLIP's users.
FAILURE_CODES = {
    101: "ended unexpectedly (for example killed for lack of memory, or a crash in native code)",
    102: "refused a component of the job that its site does not allow",
    103: "could not build the job's app (a configuration error)",
    104: "could not be started",
    9: "was aborted",
}
_MAX_TEXT = 2000
#: The code a site reports when a job's process died (NVFlare's ProcessExitCode.EXCEPTION).
DIED = 101

#: The reason of the dead-job notice for a site whose job process died.
DIED_REASON = "job process ended unexpectedly"


def flip_job_identity(server_config: dict[str, Any]) -> dict[str, Any] | None:
    """The model id and flip mode of a FLIP job's server config, or None if it is not a FLIP job."""
    for component in server_config.get("components") or []:
        if not isinstance(component, dict) or component.get("path") not in FLIP_BACKEND_PATHS:
            continue
        args = component.get("args") or {}

        def resolve(name: str, args: dict[str, Any] = args) -> Any:
            value = args.get(name)
            if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
                value = server_config.get(value[1:-1])
            return value

        identity = {"model_id": resolve("model_id"), "flip_mode": resolve("mode"), "hub_api": resolve("hub_api")}
        clients = server_config.get("participating_clients")
        if isinstance(clients, list) and clients and all(isinstance(c, str) for c in clients):
            names = resolve("trust_names")
            explicit = names if isinstance(names, dict) else {}
            identity["trusts"] = {c: str(explicit.get(c) or default_trust_name(c)) for c in clients}
        return identity
    return None


def server_config_from_app(app_zip: bytes) -> dict[str, Any] | None:
    """The ``config_fed_server.json`` inside a job's zipped server app, if there is one."""
    with zipfile.ZipFile(io.BytesIO(app_zip)) as archive:
        for name in archive.namelist():
            if name.replace("\\", "/").endswith("config/config_fed_server.json"):
                data = json.loads(archive.read(name))
                return data if isinstance(data, dict) else None
    return None


def _server_app_name(job: Any) -> str:
    """The job's app deployed to the server (a deploy map may say ``@ALL``)."""
    for app, sites in (job.get_deployment() or {}).items():
        if "server" in sites or "@ALL" in sites:
            return str(app)
    raise ValueError("the job deploys no app to the server")


def failure_text(trust: str, client: str, code: int) -> str:
    """The hub log entry for a site whose job process failed."""
    what = FAILURE_CODES.get(code, "failed")
    return (
        f"The job's process at the site of {trust} ({client}) {what}. NVFlare ended the run; "
        "the site's own log has the details."
    )


def run_failure_text(nvflare_status: str) -> str:
    """The hub log entry for a run that failed on the FL server with no site to blame."""
    return (
        f"The run could not go on at the FL server (NVFlare ended it {nvflare_status}): its server app could not "
        "be built or failed before reporting. No site is to blame; the FL server's own log has the details."
    )


def final_status_for(nvflare_status: str, failed_sites: bool) -> ModelStatus | None:
    """The FLIP final status of a job NVFlare ended with ``nvflare_status`` (None: a completed run)."""
    if nvflare_status == RunStatus.FINISHED_COMPLETED.value:
        return None
    if nvflare_status == RunStatus.FINISHED_ABORTED.value and not failed_sites:
        return ModelStatus.STOPPED
    return ModelStatus.ERROR


class JobWatcher(FLComponent):
    """Watches the FL server's jobs from its parent process; see the module docstring.

    Args:
        check_interval: Seconds between checks that each running job's sites are still registered.
        renotify_interval: Seconds between repeated dead-job notices for one site of one job.
        hub_api: ``"h1"`` or ``"h2"`` for jobs that did not say (else ``FLIP_HUB_API``, else h1).
        http_timeout: Seconds per hub call attempt (else ``FLIP_HTTP_TIMEOUT``, else 30).
    """

    def __init__(
        self,
        check_interval: float = 2.0,
        renotify_interval: float = 5.0,
        hub_api: str | None = None,
        http_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self._check_interval = positive_number("JobWatcher", "check_interval", check_interval)
        self._renotify_interval = positive_number("JobWatcher", "renotify_interval", renotify_interval)
        self._hub_api = hub_api
        self._http_timeout = (
            None if http_timeout is None else positive_number("JobWatcher", "http_timeout", http_timeout)
        )
        self._engine: Any = None
        self._root: Path | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures: dict[str, list[tuple[str, int]]] = {}
        self._notified: dict[tuple[str, str], float] = {}
        #: Sites whose job process died in a job that goes on without them: still registered, so
        #: only this record keeps their dead-job notice coming for every later workflow of the job.
        self._died: set[tuple[str, str]] = set()
        self._finished: set[str] = set()
        #: Builds the hub backend (replaceable in tests).
        self.backend_factory: Callable[[str | None], Any] = self._prod_backend

    # ------------------------------------------------------------------ events

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Start at SYSTEM_START, stop at SYSTEM_END, settle a job at JOB_COMPLETED / JOB_ABORTED."""
        try:
            if event_type == EventType.SYSTEM_START:
                self._start(fl_ctx)
            elif event_type == EventType.SYSTEM_END:
                self._stop.set()
            elif event_type in (EventType.JOB_COMPLETED, EventType.JOB_ABORTED) and self._root is not None:
                self._job_ended(event_type, fl_ctx)
        except Exception as exc:  # the watcher must never break the server
            self.log_exception(fl_ctx, f"FLIP JobWatcher failed on {event_type}: {type(exc).__name__}: {exc}")

    def _start(self, fl_ctx: FLContext) -> None:
        engine = fl_ctx.get_engine()
        self._engine = engine
        self._root = Path(engine.get_workspace().get_root_dir())
        folder = handoff.handoff_dir(self._root)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / handoff.WATCHING_MARKER).write_text("FLIP JobWatcher\n", encoding="utf-8")
        cell = engine.get_cell() if hasattr(engine, "get_cell") else None
        if cell is not None:
            from nvflare.fuel.f3.cellnet.defs import CellChannel, CellChannelTopic

            cell.add_incoming_request_filter(
                channel=CellChannel.SERVER_MAIN, topic=CellChannelTopic.REPORT_JOB_FAILURE, cb=self._failure_report
            )
        else:
            self.log_warning(fl_ctx, "FLIP JobWatcher: no cell; failed sites will not be named.", fire_event=False)
        self._thread = threading.Thread(target=self._watch, name="flip_job_watcher", daemon=True)
        self._thread.start()
        self.log_info(fl_ctx, f"FLIP JobWatcher started (sites checked every {self._check_interval:g} s).")

    # ------------------------------------------------------------------ failed sites

    def _failure_report(self, message: Any) -> None:
        """Incoming request filter: note which site reported which job failed; NVFlare then handles it."""
        try:
            from nvflare.private.defs import CellMessageHeaderKeys, JobFailureMsgKey

            payload = message.payload
            token = message.get_header(CellMessageHeaderKeys.TOKEN)
            client = self._engine.client_manager.clients.get(token) if token else None
            if client is None or not isinstance(payload, dict):
                return None
            job_id, code = payload.get(JobFailureMsgKey.JOB_ID), payload.get(JobFailureMsgKey.CODE)
            if not (isinstance(job_id, str) and isinstance(code, int) and code in FAILURE_CODES):
                return None
            if code == DIED and self._continues_without_lost_sites(job_id):
                # The job's policy is to go on without a lost site: NVFlare would end the whole run on
                # this report, so the report becomes a lost site instead (the job's dead-client watch
                # and its SiteLossReporter take it from here, min_clients permitting).
                payload[JobFailureMsgKey.CODE] = 0
                self.logger.warning(
                    f"FLIP JobWatcher: the job process of {client.name} for job {job_id} died; the job's policy "
                    "(on_site_lost: continue) treats the site as lost instead of ending the run."
                )
                with self._lock:
                    self._died.add((job_id, client.name))
                    self._notified[(job_id, client.name)] = time.monotonic()
                self._engine.notify_dead_job(job_id, client.name, DIED_REASON)
                return None
            with self._lock:
                self._failures.setdefault(job_id, []).append((client.name, code))
            self.logger.warning(f"FLIP JobWatcher: site {client.name} reported job {job_id} failed ({code}).")
        except Exception as exc:
            self.logger.warning(f"FLIP JobWatcher could not read a job failure report: {type(exc).__name__}")
        return None

    # ------------------------------------------------------------------ lost sites

    def _continues_without_lost_sites(self, job_id: str) -> bool:
        """Whether the job said (in its hand-off) that its policy for a lost site is ``continue``."""
        if self._root is None:
            return False
        found = handoff.read_handoff(self._root, job_id)
        return found is not None and found.get("on_site_lost") == "continue"

    def _watch(self) -> None:
        while not self._stop.wait(self._check_interval):
            try:
                self.check_sites()
            except Exception as exc:
                self.logger.warning(f"FLIP JobWatcher: checking the sites failed: {type(exc).__name__}: {exc}")

    def check_sites(self, now: float | None = None) -> list[tuple[str, str, str]]:
        """Send NVFlare's dead-job notice for every running job's site no longer registered as it joined.

        Returns:
            The notices sent: (job id, site, reason).
        """
        engine = self._engine
        now = time.monotonic() if now is None else now
        registered = dict(engine.client_manager.clients)  # token -> Client
        names = {c.name for c in registered.values()}
        lost: list[tuple[str, str, str]] = []
        for job_id, info in list(engine.run_processes.items()):
            participants = (info or {}).get(RunProcessKey.PARTICIPANTS) or {}
            for token, client in list(participants.items()):
                if token not in registered:
                    reason = "site restarted: its job is gone" if client.name in names else "site disconnected"
                    lost.append((job_id, client.name, reason))
        # A dead-job notice reaches only the workflow running when it arrives (NVFlare's communicator
        # of that workflow): a site whose job process died is still registered, so its notice is
        # repeated too, or the next workflow (cross-site validation) would wait for it for ever.
        with self._lock:
            lost += [(job_id, name, DIED_REASON) for job_id, name in self._died if job_id in engine.run_processes]
        sent = []
        for job_id, name, reason in lost:
            key = (job_id, name)
            with self._lock:
                last = self._notified.get(key)
                if last is not None and now - last < self._renotify_interval:
                    continue
                self._notified[key] = now
            if last is None:
                self.logger.warning(f"FLIP JobWatcher: job {job_id} lost site {name} ({reason}).")
            engine.notify_dead_job(job_id, name, reason)
            sent.append((job_id, name, reason))
        return sent

    # ------------------------------------------------------------------ end of a job

    def _job_ended(self, event_type: str, fl_ctx: FLContext) -> None:
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA, None) or {}
        job_id = data.get(JobMetaKey.JOB_ID.value) if isinstance(data, dict) else None
        if not isinstance(job_id, str) or not job_id:
            return
        job_manager = self._engine.get_component(SystemComponents.JOB_MANAGER)
        job = job_manager.get_job(job_id, fl_ctx)
        status = str(job.meta.get(JobMetaKey.STATUS.value, "")) if job is not None else ""
        if event_type == EventType.JOB_ABORTED and status != RunStatus.FAILED_TO_RUN.value:
            return  # a finished job's JOB_COMPLETED follows
        with self._lock:
            if job_id in self._finished:
                return
            self._finished.add(job_id)
            failures = self._failures.pop(job_id, [])
            for key in [k for k in self._notified if k[0] == job_id]:
                del self._notified[key]
            self._died = {k for k in self._died if k[0] != job_id}
        assert self._root is not None
        found = handoff.read_handoff(self._root, job_id)
        handoff.remove_handoff(self._root, job_id)
        if found is not None and found.get("final_status"):
            return  # the job reported its own final status
        identity: dict[str, Any] | None = found
        if identity is None or not identity.get("model_id"):
            if status == RunStatus.FINISHED_COMPLETED.value:
                return
            config = server_config_from_app(job_manager.get_app(job, _server_app_name(job), fl_ctx))
            from_config = flip_job_identity(config or {})
            identity = None if from_config is None else {**(found or {}), **from_config}
        final = final_status_for(status, bool(failures))
        if identity is None or final is None:
            return
        self.settle(job_id, identity, status, final, failures)

    def settle(
        self,
        job_id: str,
        identity: dict[str, Any],
        nvflare_status: str,
        final: ModelStatus,
        failures: list[tuple[str, int]],
    ) -> threading.Thread | None:
        """Report the final status (and each failed site) of a FLIP job, on a background thread."""
        model_id, mode = identity.get("model_id"), str(identity.get("flip_mode") or "").lower()
        found_trusts = identity.get("trusts")
        trusts: dict[str, Any] = found_trusts if isinstance(found_trusts, dict) else {}
        logs = []
        for client, code in dict.fromkeys(failures):
            trust = str(trusts.get(client) or default_trust_name(client))
            logs.append((client, trust, sanitize_hub_text(failure_text(trust, client, code), _MAX_TEXT)))
        named = ", ".join(f"{t} ({c})" for c, t, _ in logs) or "no site named"
        self.logger.warning(
            f"FLIP JobWatcher: job {job_id} ended {nvflare_status} without a final FLIP status; "
            f"reporting {final.value} ({named})."
        )
        if mode != FlipMode.PROD.value or not isinstance(model_id, str):
            self.logger.warning(f"FLIP JobWatcher: job {job_id} is not a prod job; nothing sent to the hub.")
            return None
        hub_api = identity.get("hub_api") or self._hub_api

        def send() -> None:
            backend = None
            try:
                backend = self.backend_factory(hub_api if isinstance(hub_api, str) else None)
                for client, trust, text in logs:
                    try:
                        backend.send_handled_exception(text, client, model_id, trust_name=trust)
                    except Exception as exc:
                        self.logger.error(f"FLIP JobWatcher: the hub refused the log of {client}: {type(exc).__name__}")
                if not logs and final is ModelStatus.ERROR:
                    reason = sanitize_hub_text(run_failure_text(nvflare_status), _MAX_TEXT)
                    try:
                        backend.send_run_log(model_id, reason, list(trusts.values()))
                    except Exception as exc:
                        self.logger.error(f"FLIP JobWatcher: the hub refused the run's log: {type(exc).__name__}")
                backend.update_status(model_id, final)
                self.logger.info(f"FLIP JobWatcher: final status {final.value} of job {job_id} sent to the hub.")
            except Exception as exc:
                self.logger.error(
                    f"FLIP JobWatcher: could not send the final status of job {job_id}: {type(exc).__name__}: {exc}"
                )
            finally:
                if backend is not None:
                    try:
                        backend.close()
                    except Exception:
                        pass

        thread = threading.Thread(target=send, name=f"flip_job_watcher_{job_id[:8]}", daemon=False)
        thread.start()
        return thread

    def _prod_backend(self, hub_api: str | None) -> Any:
        from flip_nvflare.core.prod import FLIPStandardProd

        return FLIPStandardProd(hub_api=hub_api, http_timeout=self._http_timeout)
