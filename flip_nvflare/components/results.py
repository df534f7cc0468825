"""ResultsUploader: at the end of a run, gathers the results, uploads them, then tidies up.

At END_RUN of a run that completed, the uploader:

1. copies the files matching ``include`` (by default the final and best global models the
   persistors saved: ``app_server/*.pt``, ``app_server/*.pth``, ``models/*``) into the run's
   results folder (``<run folder>/flip_results``), next to the validation / evaluation JSON the
   generators keep there;
2. writes ``run_summary.json`` there: statuses, metric counts, hub delivery counts, per-client
   errors, trust names, rounds aggregated, the files included;
3. writes ``provenance.json`` there last (:mod:`flip_nvflare.components.provenance`): model and job
   ids, job type, rounds, trusts, the aggregation and privacy settings of the job's configs,
   versions, a hash of the app code that ran and the SHA-256 of every other file; its digest is
   logged (``flip-nvflare verify-results`` checks a zip against it). A provenance that cannot be
   made is logged and the results go without it;
4. uploads the folder through the job's backend (prod: a zip in S3 under
   ``<prefix>/<model_id>/<YYYYmmdd_HHMMSS>.zip``; dev: the same zip in the dev output folder);
5. on success deletes the results folder and ``remove_after_upload`` (by default the files it
   gathered and the ``cross_site_val`` folder, which holds the models exchanged for cross-site
   validation) and fires FlipEvents.RESULTS_UPLOADED; on failure deletes nothing, logs where the
   results are and fires FlipEvents.RESULTS_UPLOAD_FAILED. The StatusReporter turns these events
   into the final status.

Symlinks are never followed: an included file that is a link, or is reached through a linked
folder, is not gathered; a link in the results folder is not zipped; a results folder that is itself
a link is refused (the upload fails). The summary's ``skipped_links`` counts the links skipped.

A run that was aborted or failed is not uploaded: its results folder (with the summary) is kept
and the log says where. The upload runs at END_RUN, when training is over; hub calls still go
through the background delivery, which drains after it.
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.provenance import (
    PROVENANCE_FILE,
    app_code_hash,
    build_provenance,
    job_settings,
    job_type_of,
    read_json_object,
    write_provenance,
)
from flip_nvflare.components.result_json import (
    DEFAULT_RESULTS_DIR,
    check_plain_name,
    results_folder,
    to_jsonable,
    write_json_atomically,
)
from flip_nvflare.components.session import HubSession, RunOutcome
from flip_nvflare.components.widget import HubWidget, run_outcome
from flip_nvflare.constants import DEFAULT_FLIP_ID, FlipEvents, FlipProps
from flip_nvflare.core.results import count_links
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.progress import ProgressLog

DEFAULT_INCLUDE = ("app_server/*.pt", "app_server/*.pth", "models/*")
DEFAULT_REMOVE_AFTER_UPLOAD = ("cross_site_val",)
SUMMARY_FILE = "run_summary.json"
#: Run summary field: symlinks skipped (not followed) while gathering and zipping the results.
SKIPPED_LINKS = "skipped_links"


def _check_patterns(name: str, patterns: Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    values = tuple(default if patterns is None else patterns)
    for pattern in values:
        if not isinstance(pattern, str) or not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise FlipConfigError(
                f"ResultsUploader {name} must list paths or glob patterns relative to the job's run folder "
                f"(no absolute paths, no '..'), got {pattern!r}."
            )
    return values


def _inside(path: Path, root: Path) -> bool:
    resolved, resolved_root = path.resolve(), root.resolve()
    return resolved != resolved_root and resolved.is_relative_to(resolved_root)


def _first_link(path: Path, root: Path) -> Path | None:
    """The first symlink on the way from ``root`` (not included) down to ``path`` (included), if any."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink():
            return current
    return None


def _search_roots(fl_ctx: FLContext, run_dir: Path) -> list[Path]:
    """The run folder, and the workspace's result root for this job when that is elsewhere."""
    result_root = Path(fl_ctx.get_engine().get_workspace().get_result_root(fl_ctx.get_job_id()))
    return [run_dir] if result_root.resolve() == run_dir.resolve() else [run_dir, result_root]


def _upload(session: HubSession, folder: Path, display: ProgressLog) -> str:
    """Upload through the backend, with a progress display when its upload takes a ``progress`` callback."""
    upload: Any = session.backend.upload_results_to_s3  # ``progress`` is optional in the backends' contract
    try:
        accepts = "progress" in inspect.signature(upload).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts:
        return str(upload(folder, session.model_id, progress=display))
    return str(upload(folder, session.model_id))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class ResultsUploader(HubWidget):
    """Gathers a run's results into its results folder, uploads them, then removes the job's copies.

    Args:
        flip_id: Id of the FlipBackend component.
        results_dir: Results folder name inside the run folder (shared with the JSON generators).
        include: Files to add to the results, as glob patterns relative to the run folder (also
            tried relative to the workspace's result root when that differs).
        remove_after_upload: Files or folders (glob patterns relative to the run folder) deleted
            after a successful upload, besides the results folder. Default: the files gathered
            into the results and the ``cross_site_val`` folder; ``[]`` keeps everything else.
    """

    def __init__(
        self,
        flip_id: str = DEFAULT_FLIP_ID,
        results_dir: str = DEFAULT_RESULTS_DIR,
        include: Sequence[str] | None = None,
        remove_after_upload: Sequence[str] | None = None,
    ) -> None:
        super().__init__(flip_id)
        self._results_dir = check_plain_name(results_dir, "results_dir")
        self._include = _check_patterns("include", include, DEFAULT_INCLUDE)
        self._remove_after: tuple[str, ...] | None = None
        if remove_after_upload is not None:
            self._remove_after = _check_patterns("remove_after_upload", remove_after_upload, ())
        self._rounds_aggregated = 0

    def on_event(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        """Register for the upload at START_RUN, count rounds, upload at END_RUN."""
        if event_type == EventType.START_RUN:
            session.results_upload_expected = True
            self._rounds_aggregated = 0
        elif event_type == AppEventType.AFTER_AGGREGATION:
            self._rounds_aggregated += 1
        elif event_type == EventType.END_RUN:
            self._end_run(fl_ctx, session)

    def _end_run(self, fl_ctx: FLContext, session: HubSession) -> None:
        outcome = run_outcome(fl_ctx, session)
        folder = results_folder(fl_ctx, self._results_dir)
        run_dir = folder.parent
        roots = _search_roots(fl_ctx, run_dir)
        try:
            if folder.is_symlink():
                raise FlipConfigError(f"the results folder {folder} is a symlink; symlinks are never followed")
            folder.mkdir(parents=True, exist_ok=True)
            gathered, skipped = self._gather(fl_ctx, roots, folder)
            summary = self._write_summary(fl_ctx, session, folder, outcome, gathered, skipped)
            self._write_provenance(fl_ctx, folder, summary)
        except Exception as exc:
            self.log_exception(fl_ctx, f"Gathering the results in {folder} failed: {type(exc).__name__}: {exc}")
            if outcome is RunOutcome.COMPLETED:
                self._announce(fl_ctx, FlipEvents.RESULTS_UPLOAD_FAILED, None)
            return
        if outcome is not RunOutcome.COMPLETED:
            self.log_warning(
                fl_ctx,
                f"The run {outcome.value}: its results are not uploaded; they are kept in {folder}.",
                fire_event=False,
            )
            return
        display = ProgressLog("Results upload", unit="bytes", log=lambda line: self.log_info(fl_ctx, line))
        try:
            location = _upload(session, folder, display)
        except Exception as exc:
            if display.started:
                display.finish()
            self.log_error(
                fl_ctx,
                f"Uploading the results failed ({type(exc).__name__}: {exc}). Nothing was deleted: the results "
                f"are in {folder} and the original files in {run_dir}.",
                fire_event=False,
            )
            self._announce(fl_ctx, FlipEvents.RESULTS_UPLOAD_FAILED, None)
            return
        if display.started:
            display.finish()
        self.log_info(fl_ctx, f"Results uploaded to {location}.")
        self._clean_up(fl_ctx, roots, folder, gathered)
        self._announce(fl_ctx, FlipEvents.RESULTS_UPLOADED, location)

    def _gather(self, fl_ctx: FLContext, roots: list[Path], folder: Path) -> tuple[list[Path], int]:
        """Copy the included files into the results folder (flat), never through a symlink.

        Returns:
            The originals copied, and the number of symlinks skipped (a linked file, or a linked
            folder the pattern went through, counted once).
        """
        gathered: list[Path] = []
        seen: set[Path] = set()
        links: set[Path] = set()
        for root in roots:
            for pattern in self._include:
                for source in sorted(root.glob(pattern)):
                    if source.is_relative_to(folder):  # already in the results (its links are counted there)
                        continue
                    link = _first_link(source, root)
                    if link is not None:
                        links.add(link)
                        continue
                    if not source.is_file() or source.resolve() in seen or _inside(source, folder):
                        continue
                    seen.add(source.resolve())
                    target = folder / source.name
                    if target.exists() or target.is_symlink():
                        self.log_warning(
                            fl_ctx, f"{source} not added to the results: a file named {source.name} is there.", False
                        )
                        continue
                    shutil.copy2(source, target, follow_symlinks=False)
                    gathered.append(source)
        if links:
            self.log_warning(
                fl_ctx, f"{len(links)} symlink(s) matching include were skipped, not followed.", fire_event=False
            )
        if not gathered:
            self.log_warning(
                fl_ctx,
                f"No model file matched {list(self._include)} in {roots[0]}: the results hold no model "
                "(set ResultsUploader include= to where the persistor saves it).",
                fire_event=False,
            )
        return gathered, len(links)

    def _write_summary(
        self,
        fl_ctx: FLContext,
        session: HubSession,
        folder: Path,
        outcome: RunOutcome,
        gathered: list[Path],
        skipped_links: int,
    ) -> dict[str, Any]:
        summary = session.summary()
        for own in (SUMMARY_FILE, PROVENANCE_FILE):  # their own names: replaced, never written through
            if (folder / own).is_symlink():
                (folder / own).unlink()
        files = sorted(
            p.name
            for p in folder.iterdir()
            if p.is_file() and not p.is_symlink() and p.name not in (SUMMARY_FILE, PROVENANCE_FILE)
        )
        summary.update(
            {
                "job_id": fl_ctx.get_job_id(),
                "outcome": outcome.value,
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "rounds_aggregated": self._rounds_aggregated,
                "files": sorted([*files, SUMMARY_FILE, PROVENANCE_FILE]),
                "gathered_from": [str(p) for p in gathered],
                SKIPPED_LINKS: skipped_links + count_links(folder),
            }
        )
        summary = to_jsonable(summary)
        write_json_atomically(folder / SUMMARY_FILE, summary)
        return summary

    def _write_provenance(self, fl_ctx: FLContext, folder: Path, summary: dict[str, Any]) -> None:
        """Write provenance.json (after everything else in the folder); log and go on if it cannot be made."""
        try:
            workspace = fl_ctx.get_engine().get_workspace()
            job_id = fl_ctx.get_job_id()
            app_dir = Path(workspace.get_app_dir(job_id))
            server = read_json_object(app_dir / "config" / "config_fed_server.json")
            client = read_json_object(app_dir / "config" / "config_fed_client.json")
            meta = fl_ctx.get_prop(FLContextKey.JOB_META)
            provenance = build_provenance(
                summary,
                results_folder=folder,
                job_id=job_id,
                job_type=job_type_of(server, read_json_object(app_dir / "custom" / "config.json")),
                rounds_completed=self._rounds_aggregated,
                settings=job_settings(server, client),
                app_code=app_code_hash(app_dir),
                resource_spec=meta.get("resource_spec") if isinstance(meta, dict) else None,
            )
            write_provenance(folder, provenance)
        except Exception as exc:
            (folder / PROVENANCE_FILE).unlink(missing_ok=True)
            self.log_error(
                fl_ctx,
                f"The results' {PROVENANCE_FILE} could not be made ({type(exc).__name__}); they go without it.",
                fire_event=False,
            )
            return
        self.log_info(
            fl_ctx,
            f"Results provenance: {len(provenance['files'])} file(s) hashed, digest {provenance['digest']['sha256']} "
            "(flip-nvflare verify-results RESULTS.zip --expect-digest DIGEST checks a zip against it).",
        )

    def _clean_up(self, fl_ctx: FLContext, roots: list[Path], folder: Path, gathered: list[Path]) -> None:
        targets = [folder]
        if self._remove_after is None:
            targets += gathered
            targets += [roots[0] / p for p in DEFAULT_REMOVE_AFTER_UPLOAD]
        else:
            targets += [match for root in roots for p in self._remove_after for match in sorted(root.glob(p))]
        for target in targets:
            if not any(_inside(target, root) for root in roots):
                self.log_warning(fl_ctx, f"Not removing {target}: it is outside the job's folders.", False)
                continue
            try:
                _remove(target)
            except OSError as exc:
                self.log_warning(fl_ctx, f"Could not remove {target} after the upload: {exc}", False)

    def _announce(self, fl_ctx: FLContext, event_type: str, location: str | None) -> None:
        fl_ctx.set_prop(FlipProps.RESULTS_LOCATION, location, private=True, sticky=False)
        fl_ctx.set_prop(FlipProps.RESULTS_FLIP_ID, self.flip_id, private=True, sticky=False)
        self.fire_event(event_type, fl_ctx)
