"""CohortPreparer: fetch the cohort once, bring its images to the trust, and write a manifest.

Configure it for the preparation task (``init_training`` in training jobs, ``init_task`` in
evaluation jobs)::

    {"tasks": ["init_training"],
     "executor": {"path": "flip_nvflare.executors.CohortPreparer",
                  "args": {"project_id": "{project_id}", "query": "{query}",
                           "resource_types": ["NIFTI"], "concurrency": 4}}}

It fetches the cohort dataframe, asks for the images of every accession in it (``concurrency`` at
a time, transient failures retried), shows progress as counts (a bar on a terminal, a percent
line every ``progress_interval`` seconds in the log; see :mod:`flip_nvflare.progress`), and writes the manifest and the
dataframe into the job's run folder, where user code reads them with
:func:`flip_nvflare.prepared_cohort`. Accessions whose images cannot be had are recorded with the
reason; the preparation fails only if more than ``max_missing_fraction`` of them are missing.

On a trust's shared images volume every accession is claimed before it is requested (see
:mod:`flip_nvflare.executors.claims`), so ImageCleanup can later delete exactly what this job
downloaded. A failure is answered with an execution-exception reply whose ``exception`` header is
a short, sanitized message; the full traceback stays in the client's log.

A site that never ran the preparation task (the server moved on once ``min_clients`` sites had
prepared) is prepared before its first task instead: at START_RUN the preparer makes itself known
to the job's runners (:attr:`FlipProps.COHORT_PREPARER`), and :func:`prepare_before_task`, which
the runners call before every task, prepares the cohort first or refuses the task with a clear
error. No app runs on an unprepared cohort.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from flip_nvflare.args import json_bool
from flip_nvflare.backend import get_flip_backend
from flip_nvflare.constants import DEFAULT_FLIP_ID, FlipHeaders, FlipProps, ResourceType
from flip_nvflare.core.base import FLIPBase, as_resource_types, check_accession_id
from flip_nvflare.errors import FlipConfigError, PreparationError, format_traceback
from flip_nvflare.executors.claims import ImageClaims, make_claim_token
from flip_nvflare.executors.cleanup import release_images
from flip_nvflare.executors.context import config_text, site_name
from flip_nvflare.executors.downloads import (
    DEFAULT_DOWNLOAD_RETRIES,
    DEFAULT_DOWNLOAD_RETRY_DELAY,
    FetchReport,
    ImageFetcher,
    Progress,
    download_retry,
)
from flip_nvflare.executors.manifest import (
    COHORT_FILE,
    CohortManifest,
    ImageEntry,
    Origin,
    PreparedCohortError,
    Status,
    cohort_identifiers,
    prepared_dir,
)
from flip_nvflare.executors.sanitize import Sanitizer
from flip_nvflare.progress import ProgressLog
from flip_nvflare.retry import RetryPolicy
from flip_nvflare.workspace import job_custom_dir, job_run_dir

if TYPE_CHECKING:
    import pandas as pd

#: Image requests in flight at once, by default.
DEFAULT_CONCURRENCY = 4


class CohortPreparer(Executor):
    """Prepares a job's cohort at a trust (see the module docstring).

    Args:
        project_id: The encrypted project id, normally ``"{project_id}"``.
        query: The cohort SQL, normally ``"{query}"``.
        resource_types: Resource type(s) to fetch for each accession (``DICOM``, ``NIFTI``, ``SEG``, ``ALL``).
        concurrency: Image requests in flight at once.
        retries: Extra attempts for an accession whose request failed transiently.
        retry_delay: Seconds before the first extra attempt (doubles each time).
        max_missing_fraction: Fail if more than this fraction of the accessions has no images (0-1).
        accession_column: The dataframe column holding accession ids.
        download_images: Fetch images (False: only fetch and save the dataframe).
        allow_empty_cohort: Accept a cohort with no rows (default: fail, nothing to train on).
        progress_interval: Seconds between progress log lines (a percent line with counts); on a
            terminal a progress bar is drawn instead.
        flip_id: Id of the job's FlipBackend component.
    """

    def __init__(
        self,
        project_id: str = "{project_id}",
        query: str = "{query}",
        resource_types: str | list[str] = "NIFTI",
        concurrency: int = DEFAULT_CONCURRENCY,
        retries: int = DEFAULT_DOWNLOAD_RETRIES,
        retry_delay: float = DEFAULT_DOWNLOAD_RETRY_DELAY,
        max_missing_fraction: float = 0.2,
        accession_column: str = "accession_id",
        download_images: bool = True,
        allow_empty_cohort: bool = False,
        progress_interval: float = 10.0,
        flip_id: str = DEFAULT_FLIP_ID,
    ) -> None:
        super().__init__()
        self._resource_types: list[ResourceType] = as_resource_types(resource_types)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise FlipConfigError(f"CohortPreparer: concurrency must be an integer >= 1, got {concurrency!r}.")
        try:
            self._retry = download_retry(retries, retry_delay)
        except FlipConfigError as exc:
            raise FlipConfigError(f"CohortPreparer: {exc}") from None
        if not isinstance(max_missing_fraction, (int, float)) or not 0 <= max_missing_fraction <= 1:
            raise FlipConfigError(
                f"CohortPreparer: max_missing_fraction must be between 0 and 1, got {max_missing_fraction!r}."
            )
        if not isinstance(accession_column, str) or not accession_column:
            raise FlipConfigError("CohortPreparer: accession_column must name a dataframe column.")
        if progress_interval <= 0:
            raise FlipConfigError("CohortPreparer: progress_interval must be > 0.")
        self._project_id = project_id
        self._query = query
        self._concurrency = concurrency
        self._max_missing_fraction = float(max_missing_fraction)
        self._accession_column = accession_column
        self._download_images = json_bool("CohortPreparer", "download_images", download_images)
        self._allow_empty = json_bool("CohortPreparer", "allow_empty_cohort", allow_empty_cohort)
        self._progress_interval = float(progress_interval)
        self._flip_id = flip_id
        self._prepare_lock = threading.Lock()
        self._known_prepared: set[str] = set()

    # ------------------------------------------------------------------ NVFlare entry points

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """At START_RUN, make this preparer known to the runners and log a config problem early.

        (The preparation task reports a config problem to the hub.)
        """
        if event_type == EventType.START_RUN:
            fl_ctx.set_prop(FlipProps.COHORT_PREPARER, self, private=True, sticky=True)
            try:
                config_text("project_id", self._project_id, "CohortPreparer")
                config_text("query", self._query, "CohortPreparer")
            except FlipConfigError as exc:
                self.log_error(fl_ctx, str(exc), fire_event=False)

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Prepare the cohort; reply OK with a summary, or an execution exception with a sanitized reason."""
        try:
            with self._prepare_lock:
                summary = self.prepare(fl_ctx, abort_signal)
        except PreparationError as exc:
            self.log_error(fl_ctx, f"Cohort preparation failed: {exc}", fire_event=False)
            return self._failure(fl_ctx, str(exc))
        except Exception as exc:
            self.log_error(fl_ctx, f"Cohort preparation failed:\n{format_traceback(exc)}", fire_event=False)
            return self._failure(fl_ctx, f"CohortPreparer could not prepare the cohort: {type(exc).__name__}: {exc}")
        if summary.get("stopped"):
            return make_reply(ReturnCode.TASK_ABORTED)
        return make_reply(ReturnCode.OK, headers={FlipHeaders.PREPARATION_SUMMARY: summary})

    def _failure(self, fl_ctx: FLContext, text: str) -> Shareable:
        """An execution-exception reply whose ``exception`` header is ``text``, sanitized."""
        sanitizer = Sanitizer(
            identifiers=cohort_identifiers(job_run_dir(fl_ctx)),
            query=self._query if isinstance(self._query, str) else None,
            secrets=[self._project_id if isinstance(self._project_id, str) else None],
            code_roots=[p for p in [job_custom_dir(fl_ctx)] if p is not None],
        )
        return make_reply(ReturnCode.EXECUTION_EXCEPTION, headers={FlipHeaders.EXCEPTION: sanitizer.text(text)})

    # ------------------------------------------------------------------ prepared or not

    def is_prepared(self, fl_ctx: FLContext) -> bool:
        """Whether this job's cohort is prepared at this site.

        True when the job's run folder holds the manifest of a preparation that finished (not
        stopped, no more missing accessions than ``max_missing_fraction`` allows, nothing released
        yet) and its saved dataframe. Read from the files, so it holds across the client processes
        of one job (NVFlare's simulator may run each task in a new one).
        """
        folder = prepared_dir(job_run_dir(fl_ctx))
        if str(folder) in self._known_prepared:
            return True
        try:
            manifest = CohortManifest.load(folder)
        except (OSError, PreparedCohortError):
            return False
        summary = manifest.summary
        if not summary or summary.get("stopped") or manifest.job_id != str(fl_ctx.get_job_id()):
            return False
        if manifest.cohort_file and not (folder / manifest.cohort_file).is_file():
            return False
        if any(entry.released for entry in manifest.images.values()):
            return False
        total, missing = summary.get("accessions"), summary.get("missing")
        if isinstance(total, int) and isinstance(missing, int) and total > 0:
            if missing / total > self._max_missing_fraction:
                return False
        self._known_prepared.add(str(folder))
        return True

    def ensure_prepared(self, fl_ctx: FLContext, abort_signal: Signal | None = None) -> dict[str, Any] | None:
        """Prepare this job's cohort unless it already is.

        Returns:
            The preparation's summary (counts only), or ``None`` if the cohort was already prepared.

        Raises:
            PreparationError: The preparation failed or was stopped (the message is safe to send).
        """
        with self._prepare_lock:
            if self.is_prepared(fl_ctx):
                return None
            summary = self.prepare(fl_ctx, abort_signal)
            if summary.get("stopped"):
                raise PreparationError("The cohort's preparation was stopped before it finished.")
            return summary

    # ------------------------------------------------------------------ the preparation

    def prepare(self, fl_ctx: FLContext, abort_signal: Signal | None = None) -> dict[str, Any]:
        """Fetch the cohort and its images and write the manifest; return a summary (counts only).

        Raises:
            PreparationError: Too many accessions are missing, the cohort is empty, or a column is absent.
        """
        project_id = config_text("project_id", self._project_id, "CohortPreparer")
        query = config_text("query", self._query, "CohortPreparer")
        backend = get_flip_backend(fl_ctx, self._flip_id)
        folder = prepared_dir(job_run_dir(fl_ctx))
        self._release_previous_attempt(fl_ctx, backend, folder)

        t0 = time.monotonic()
        frame = backend.get_dataframe(project_id, query)
        self.log_info(
            fl_ctx,
            f"Cohort fetched: {len(frame)} rows x {len(frame.columns)} columns in {time.monotonic() - t0:.1f} s.",
        )
        if len(frame) == 0 and not self._allow_empty:
            raise PreparationError(
                "The cohort is empty: the query returned no rows at this trust. Check the query, or set "
                '"allow_empty_cohort": true on CohortPreparer if a trust may have no data.'
            )
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_pickle(folder / COHORT_FILE)

        mode = backend.mode
        accessions = self._accessions(frame) if self._download_images else []
        manifest = CohortManifest(
            job_id=str(fl_ctx.get_job_id()),
            site=site_name(fl_ctx),
            mode=mode,
            resource_types=[rt.value for rt in self._resource_types],
            accession_column=self._accession_column,
            rows=len(frame),
        )
        claims = self._claims(fl_ctx, backend, manifest)
        try:
            report = self._fetch_images(fl_ctx, backend, project_id, accessions, claims, manifest, abort_signal)
        finally:
            manifest.save(folder)
        summary = self._summary(manifest, report, mode)
        manifest.summary = summary
        manifest.save(folder)
        self._check_missing(summary, report)
        self.log_info(
            fl_ctx,
            f"Cohort prepared: {summary['rows']} rows, {summary['ready']}/{summary['accessions']} accessions ready, "
            f"{summary['missing']} missing, in {summary['seconds']:.1f} s (concurrency {self._concurrency}).",
        )
        return summary

    def _accessions(self, frame: pd.DataFrame) -> list[str]:
        column = self._accession_column
        if column not in frame.columns:
            shown = ", ".join(str(c) for c in list(frame.columns)[:30])
            raise PreparationError(
                f"The cohort has no {column!r} column, so its images cannot be fetched (columns: {shown}). "
                f'Select it in the query, set "accession_column" on CohortPreparer, or set "download_images": false.'
            )
        values = frame[column].dropna().astype(str).str.strip()
        return list(dict.fromkeys(v for v in values if v))

    def _claims(self, fl_ctx: FLContext, backend: FLIPBase, manifest: CohortManifest) -> ImageClaims | None:
        if manifest.mode != "prod":
            return None
        root = backend.images_root()
        if root is None:
            self.log_warning(
                fl_ctx,
                "IMAGES_DIR is not set: this job cannot track the images it downloads, so ImageCleanup will keep them.",
                fire_event=False,
            )
            return None
        claims = ImageClaims(root, make_claim_token(manifest.job_id, manifest.site))
        manifest.claims_root = str(root)
        manifest.claim_token = claims.token
        return claims

    def _fetch_images(
        self,
        fl_ctx: FLContext,
        backend: FLIPBase,
        project_id: str,
        accessions: list[str],
        claims: ImageClaims | None,
        manifest: CohortManifest,
        abort_signal: Signal | None,
    ) -> FetchReport:
        default_origin = Origin.DEV if manifest.mode == "dev" else Origin.UNMANAGED
        single_attempt = backend.with_retry(RetryPolicy.single())  # the fetcher alone retries
        origins: dict[str, str] = {}
        lock = threading.Lock()

        def fetch(accession: str) -> Path:
            check_accession_id(accession)
            with lock:
                known = accession in origins
            if not known:  # claim once: a retry must not mistake this job's own download for someone else's
                origin = claims.claim(accession) if claims is not None else default_origin
                with lock:
                    origins[accession] = origin
            return single_attempt.get_by_accession_number(project_id, accession, self._resource_types)

        # A bar on a terminal, else a percent line every progress_interval seconds: counts only.
        display = ProgressLog(
            "Images",
            unit="images",
            log=lambda line: self.log_info(fl_ctx, line),
            interval=self._progress_interval,
        )

        def tick(snapshot: Progress) -> None:
            display.update(snapshot.done, snapshot.total, note=f"{snapshot.ready} ready, {snapshot.missing} missing")

        fetcher = ImageFetcher(
            fetch,
            concurrency=self._concurrency,
            retry=self._retry,
            progress_interval=self._progress_interval,
            tick=tick if accessions else None,
            should_stop=(lambda: bool(abort_signal.triggered)) if abort_signal is not None else None,
        )
        report = FetchReport()
        try:
            report = fetcher.run(accessions)
            if accessions:
                display.finish(f"{report.ready} ready, {report.missing} missing")
        finally:
            # Record every claim taken, even when the run stopped on a fatal error, so cleanup can release it.
            for accession in accessions:
                result = report.results.get(accession)
                origin = origins.get(accession)
                entry = ImageEntry(status=Status.MISSING, origin=origin, reason="not attempted")
                if result is not None:
                    entry.reason = result.reason
                    if result.folder is not None:
                        entry.status, entry.folder, entry.reason = Status.READY, str(result.folder), None
                entry.claimed = claims is not None and origin in (Origin.DOWNLOADED, Origin.SHARED)
                entry.deletable = entry.claimed and _is_expected_folder(claims, accession, entry.folder)
                if entry.claimed and not entry.deletable and entry.folder:
                    entry.origin = Origin.UNMANAGED
                manifest.images[accession] = entry
        return report

    def _summary(self, manifest: CohortManifest, report: FetchReport, mode: str) -> dict[str, Any]:
        return {
            "rows": manifest.rows,
            "accessions": len(manifest.images),
            "ready": report.ready,
            "missing": report.missing,
            "reasons": report.reasons(),
            "seconds": round(report.seconds, 3),
            "mode": mode,
            "stopped": report.stopped,
        }

    def _check_missing(self, summary: dict[str, Any], report: FetchReport) -> None:
        total = summary["accessions"]
        if report.stopped or total == 0:
            return
        if summary["missing"] / total > self._max_missing_fraction:
            reasons = "; ".join(f"{count} {reason}" for reason, count in sorted(summary["reasons"].items()))
            raise PreparationError(
                f"{summary['missing']} of {total} accessions have no images, more than the allowed "
                f"{self._max_missing_fraction:.0%} (max_missing_fraction): {reasons}."
            )

    def _release_previous_attempt(self, fl_ctx: FLContext, backend: FLIPBase, folder: Path) -> None:
        """If this run folder holds an earlier preparation of this job, release its claims first."""
        try:
            previous = CohortManifest.load(folder)
        except (FileNotFoundError, PreparedCohortError):
            return
        if any(not entry.released for entry in previous.images.values()):
            summary = release_images(previous, backend, folder)
            self.log_info(fl_ctx, f"Released an earlier preparation of this job: {summary.describe()}.")


def prepare_before_task(
    fl_ctx: FLContext, task_name: str, who: FLComponent, abort_signal: Signal | None = None
) -> None:
    """Make sure this site's cohort is prepared before ``task_name`` runs (the runners call it first).

    A job without a CohortPreparer has nothing to prepare (its app fetches its own data). Otherwise
    a site that has not prepared -- the server moved on before this site ran the preparation task
    -- prepares now, and the task runs on the prepared cohort.

    Args:
        fl_ctx: The task's context.
        task_name: The task about to run (for the messages).
        who: The runner asking (its log gets the messages).
        abort_signal: Stops the preparation when the task is aborted.

    Raises:
        PreparationError: The preparation was needed and failed: the task is refused, with a message
            that says why and is safe to send to the hub.
    """
    preparer = fl_ctx.get_prop(FlipProps.COHORT_PREPARER)
    if not isinstance(preparer, CohortPreparer) or preparer.is_prepared(fl_ctx):
        return
    who.log_warning(
        fl_ctx,
        f"Task {task_name!r} arrived before this site prepared its cohort (the server moved on without this "
        "site's preparation): preparing it first.",
        fire_event=False,
    )
    try:
        summary = preparer.ensure_prepared(fl_ctx, abort_signal)
    except PreparationError as exc:
        reason = str(exc)
    except Exception as exc:
        who.log_error(fl_ctx, f"Cohort preparation failed:\n{format_traceback(exc)}", fire_event=False)
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if summary is not None:
            who.log_info(
                fl_ctx, f"Cohort prepared before task {task_name!r}: {summary['ready']}/{summary['accessions']} ready."
            )
        return
    raise PreparationError(
        f"Task {task_name!r} refused: this site has not prepared its cohort for this job, and preparing it first "
        f"failed ({reason}). It does not run on an unprepared cohort; see the client's log."
    )


def _is_expected_folder(claims: ImageClaims | None, accession: str, folder: str | None) -> bool:
    """Whether the folder is where claims say it is (only such folders may ever be deleted)."""
    if claims is None:
        return False
    if folder is None:
        return True  # nothing there yet; if it appears later it will be at the expected place
    try:
        return Path(folder).resolve() == claims.folder_of(accession).resolve()
    except OSError:
        return False
