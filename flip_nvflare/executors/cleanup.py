"""ImageCleanup: at the end of a job, delete what this job downloaded, and nothing else.

Configure it for the post tasks (``post_validation`` for training jobs, ``post_task`` for
evaluation jobs); in jobs without a CohortPreparer it can also take the preparation task. It reads
the job's manifest (see :mod:`flip_nvflare.executors.manifest`) and, for every accession folder
this job claimed, releases the claim; a folder is deleted only when this job was allowed to delete
it and no other job still claims it (see :mod:`flip_nvflare.executors.claims`). Dev-mode folders
and folders that existed before the job are never deleted. The cohort dataframe and manifest,
which hold patient data, are deleted too once every claim is released; a small ``cleanup.json``
with counts stays.

With ``cleanup_at_end_run`` (default) the same release also runs at END_RUN, so a job that ends
early (aborted, or failed before its post task) does not leave its downloads behind.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from flip_nvflare.args import json_bool
from flip_nvflare.backend import get_flip_backend
from flip_nvflare.constants import DEFAULT_FLIP_ID, FlipHeaders
from flip_nvflare.core.base import FLIPBase
from flip_nvflare.errors import format_traceback
from flip_nvflare.executors.claims import ImageClaims, ReleaseOutcome
from flip_nvflare.executors.manifest import (
    MANIFEST_FILE,
    CohortManifest,
    PreparedCohortError,
    UntrustedManifestError,
    prepared_dir,
)
from flip_nvflare.workspace import job_run_dir, write_atomically

CLEANUP_RECORD = "cleanup.json"

logger = logging.getLogger(__name__)


@dataclass
class CleanupSummary:
    """Counts of what a cleanup did (no identifiers)."""

    deleted: int = 0
    kept_shared: int = 0
    kept: int = 0
    absent: int = 0
    failed: int = 0
    cohort_files_deleted: bool = False

    def describe(self) -> str:
        """One log line."""
        return (
            f"{self.deleted} folder(s) deleted, {self.kept_shared} kept for other jobs, {self.kept} kept "
            f"(not this job's to delete), {self.absent} already gone, {self.failed} failed"
        )


def release_images(manifest: CohortManifest, backend: FLIPBase, folder: Path) -> CleanupSummary:
    """Release every claim the manifest records and delete the folders this job may delete.

    Entries are marked released and the manifest is saved, so running this again only retries
    what failed. Never raises for one accession's failure; it is counted in ``failed``.

    Raises:
        UntrustedManifestError: The manifest's claims folder is not the backend's
            ``IMAGES_DIR/NET_ID``; raised before anything is renamed, released or deleted.
    """
    summary = CleanupSummary()
    net = manifest.claims_net(backend.images_root())
    claims = ImageClaims(net, manifest.claim_token) if net is not None and manifest.claim_token else None
    for accession, entry in manifest.images.items():
        if entry.released:
            continue
        if not entry.claimed or claims is None:  # dev, pre-existing or untracked: never this job's to delete
            outcome = ReleaseOutcome.KEPT if entry.folder else ReleaseOutcome.ABSENT
        else:
            try:
                outcome = claims.release(accession, delete_folder=entry.deletable, remove=backend.cleanup)
            except Exception as exc:  # the accession id is patient data: only the error's type is logged
                logger.warning("Releasing one image folder failed (%s); it is retried later.", type(exc).__name__)
                summary.failed += 1
                continue
        entry.released = True
        setattr(summary, outcome, getattr(summary, outcome) + 1)  # outcomes are named like the counters
    if claims is not None:
        claims.empty_trash(backend.cleanup)
    manifest.save(folder)
    return summary


class ImageCleanup(Executor):
    """Deletes only the images this job downloaded (see the module docstring).

    Args:
        flip_id: Id of the job's FlipBackend component.
        delete_cohort_files: Also delete the saved cohort dataframe and manifest once every claim
            is released (they hold patient data).
        cleanup_at_end_run: Release at END_RUN too, if a post task did not.
    """

    def __init__(
        self,
        flip_id: str = DEFAULT_FLIP_ID,
        delete_cohort_files: bool = True,
        cleanup_at_end_run: bool = True,
    ) -> None:
        super().__init__()
        self._flip_id = flip_id
        self._delete_cohort_files = json_bool("ImageCleanup", "delete_cohort_files", delete_cohort_files)
        self._cleanup_at_end_run = json_bool("ImageCleanup", "cleanup_at_end_run", cleanup_at_end_run)
        self._lock = threading.Lock()

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Release this job's image folders; the reply carries the counts."""
        try:
            summary = self.clean(fl_ctx)
        except Exception as exc:
            # Local log only: cleanup failures never carry patient data to the hub, and never fail the job.
            self.log_error(fl_ctx, f"Image cleanup failed: {format_traceback(exc)}", fire_event=False)
            return make_reply(ReturnCode.OK, headers={FlipHeaders.CLEANUP_SUMMARY: {"failed": -1}})
        reply = make_reply(ReturnCode.OK)
        reply.set_header(FlipHeaders.CLEANUP_SUMMARY, asdict(summary) if summary else {})
        return reply

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """At END_RUN, release whatever the post task did not."""
        if event_type == EventType.END_RUN and self._cleanup_at_end_run:
            try:
                self.clean(fl_ctx)
            except Exception as exc:
                self.log_error(fl_ctx, f"Image cleanup at END_RUN failed: {format_traceback(exc)}", fire_event=False)

    def clean(self, fl_ctx: FLContext) -> CleanupSummary | None:
        """Release this job's claims; return the counts, or ``None`` if nothing was prepared."""
        folder = prepared_dir(job_run_dir(fl_ctx))
        with self._lock:
            try:
                manifest = CohortManifest.load(folder)
            except FileNotFoundError:
                self.log_debug(fl_ctx, "Image cleanup: this job prepared no cohort here; nothing to delete.")
                return None
            except PreparedCohortError as exc:
                self.log_error(fl_ctx, str(exc), fire_event=False)
                return None
            summary = CleanupSummary()
            if any(not entry.released for entry in manifest.images.values()):
                backend = get_flip_backend(fl_ctx, self._flip_id)
                try:
                    summary = release_images(manifest, backend, folder)
                except UntrustedManifestError as exc:  # nothing was touched; the message names no path
                    self.log_error(fl_ctx, str(exc), fire_event=False)
                    return CleanupSummary(failed=sum(1 for entry in manifest.images.values() if not entry.released))
                self.log_info(fl_ctx, f"Image cleanup: {summary.describe()}.")
            if self._delete_cohort_files and summary.failed == 0:
                summary.cohort_files_deleted = _delete_cohort_files(folder, manifest, summary)
            return summary


def _delete_cohort_files(folder: Path, manifest: CohortManifest, summary: CleanupSummary) -> bool:
    """Replace the manifest and dataframe by a record of counts; return True when done."""
    record = {
        "job_id": manifest.job_id,
        "site": manifest.site,
        "mode": manifest.mode,
        "rows": manifest.rows,
        "accessions": len(manifest.images),
        "cleanup": {k: v for k, v in asdict(summary).items() if k != "cohort_files_deleted"},
    }
    write_atomically(folder / CLEANUP_RECORD, json.dumps(record, indent=1, sort_keys=True))
    if manifest.cohort_file:
        (folder / manifest.cohort_file).unlink(missing_ok=True)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    return True
