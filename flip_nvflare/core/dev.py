"""FLIPStandardDev: the FLIP methods on local files (CSV cohort, image folders, a ledger instead of the hub)."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flip_nvflare.constants import ModelStatus, ResourceType
from flip_nvflare.core.base import (
    FLIPBase,
    ResourceTypes,
    as_model_status,
    as_resource_types,
    check_accession_id,
    check_model_id,
    check_text,
    exception_log_body,
    metric_body,
    progress_event_body,
    remove_inside,
)
from flip_nvflare.core.results import check_results_folder, results_key, zip_folder
from flip_nvflare.core.settings import (
    SettingsReader,
)
from flip_nvflare.errors import FlipInvalidArgument, FlipInvalidResponse, FlipMissingData

if TYPE_CHECKING:
    import pandas as pd


class FLIPStandardDev(FLIPBase):
    """Local development backend: CSV cohort, image folders, and a ledger instead of the hub.

    Hub-facing methods touch no network: they append what they would have sent to
    ``status.jsonl``, ``metrics.jsonl`` and ``logs.jsonl`` in ``output_dir``, and results zips are
    written to ``output_dir/results/<model_id>/``.

    Args:
        dataframe_csv: The cohort CSV, with an ``accession_id`` column (``DEV_DATAFRAME``).
        images_dir: Folder holding one sub-folder per accession (``DEV_IMAGES_DIR``).
        output_dir: Where the ledger, zips and uploaded resources go (``DEV_OUTPUT_DIR``).
        cleanable_dirs: Folders :meth:`cleanup` may delete inside (default: none; dev data is
            the developer's own and is never cleaned).
        env: Mapping used instead of ``os.environ``.
    """

    def __init__(
        self,
        *,
        dataframe_csv: str | Path | None = None,
        images_dir: str | Path | None = None,
        output_dir: str | Path | None = None,
        cleanable_dirs: Sequence[str | Path] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._reader = SettingsReader(
            {
                "DEV_DATAFRAME": str(dataframe_csv) if dataframe_csv is not None else None,
                "DEV_IMAGES_DIR": str(images_dir) if images_dir is not None else None,
                "DEV_OUTPUT_DIR": str(output_dir) if output_dir is not None else None,
            },
            env,
        )
        self._cleanable = [Path(p) for p in cleanable_dirs or ()]
        self._lock = threading.Lock()

    def _path(self, name: str, purpose: str) -> Path:
        return Path(str(self._reader.require(purpose, [name])[name]))

    @property
    def mode(self) -> str:
        """``"dev"``."""
        return "dev"

    def setting(self, name: str) -> str | None:
        """A dev setting as given (``DEV_DATAFRAME``, ``DEV_IMAGES_DIR``, ``DEV_OUTPUT_DIR``), or None if unset."""
        if name not in ("DEV_DATAFRAME", "DEV_IMAGES_DIR", "DEV_OUTPUT_DIR"):
            raise KeyError(name)
        value = self._reader.raw(name)
        return None if value is None else str(value)

    @property
    def output_dir(self) -> Path:
        """The dev output folder (created on first use)."""
        path = self._path("DEV_OUTPUT_DIR", "record what dev mode would send to the hub")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _append(self, ledger: str, record: dict[str, Any]) -> None:
        record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record}
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock, open(self.output_dir / ledger, "a", encoding="utf-8") as fh:
            fh.write(line)

    def get_dataframe(self, project_id: str, query: str) -> pd.DataFrame:
        """Read the cohort CSV (the query is not run in dev mode)."""
        import pandas as pd

        check_text("project_id", project_id)
        check_text("query", query)
        csv = self._path("DEV_DATAFRAME", "read the dev cohort")
        # Messages name no path and no accession id: dev errors follow prod's rule, since they can
        # travel (sanitized, but still) in a failed task's reply.
        if not csv.is_file():
            raise FlipMissingData(
                "Dev cohort CSV missing: the file DEV_DATAFRAME names does not exist; create it or point "
                "DEV_DATAFRAME at the cohort CSV."
            )
        frame = pd.read_csv(csv)
        if "accession_id" not in frame.columns:
            raise FlipInvalidResponse(
                "Dev cohort CSV (DEV_DATAFRAME) has no 'accession_id' column; add one naming each row's image folder."
            )
        return frame

    def get_by_accession_number(
        self, project_id: str, accession_id: str, resource_type: ResourceTypes = ResourceType.NIFTI
    ) -> Path:
        """Return ``<images_dir>/<accession_id>``, which must already exist."""
        check_text("project_id", project_id)
        check_accession_id(accession_id)
        as_resource_types(resource_type)
        images_dir = self._path("DEV_IMAGES_DIR", "find dev images")
        folder = images_dir / accession_id
        if not folder.is_dir():
            raise FlipMissingData(
                "Dev image folder missing: no image folder for this accession under the dev images folder "
                "(DEV_IMAGES_DIR); create one folder per accession_id there, named after it and holding its images."
            )
        return folder

    def add_resource(
        self,
        project_id: str,
        accession_id: str,
        scan_id: str,
        resource_id: str,
        files: Sequence[str | Path],
    ) -> list[str]:
        """Copy the files to ``output_dir/resources/<accession>/<scan>/<resource>/``."""
        check_text("project_id", project_id)
        for value in (accession_id, scan_id, resource_id):
            check_accession_id(value)
        if not files:
            raise FlipInvalidArgument("files must list at least one file to upload.")
        target_dir = self.output_dir / "resources" / accession_id / scan_id / resource_id
        target_dir.mkdir(parents=True, exist_ok=True)
        copied = []
        for item in files:
            source = Path(item)
            if not source.is_file():
                raise FlipInvalidArgument("add_resource: a file to upload does not exist or is not a file.")
            target = target_dir / source.name
            shutil.copyfile(source, target)
            copied.append(target.as_uri())
        return copied

    def update_status(self, model_id: str, new_model_status: ModelStatus | str) -> None:
        """Append the status to ``status.jsonl``."""
        model_id = check_model_id(model_id)
        status = as_model_status(new_model_status)
        self._append("status.jsonl", {"model_id": model_id, "status": status.value})

    def send_metrics(
        self,
        client_name: str,
        model_id: str,
        label: str,
        value: float,
        round: int,
        *,
        x_value: float | None = None,
        x_label: str | None = None,
        trust_name: str | None = None,
    ) -> bool:
        """Append the metric to ``metrics.jsonl`` (non-finite values skipped with a warning)."""
        record = metric_body(client_name, model_id, label, value, round, x_value, x_label, trust_name)
        if record is None:
            return False
        self._append("metrics.jsonl", record)
        return True

    def send_handled_exception(
        self, formatted_exception: str, client_name: str, model_id: str, *, trust_name: str | None = None
    ) -> None:
        """Append the exception text to ``logs.jsonl``."""
        model_id, body = exception_log_body(formatted_exception, client_name, model_id, trust_name)
        self._append("logs.jsonl", {"model_id": model_id, **body})

    def send_progress_event(
        self,
        model_id: str,
        event_type: str,
        global_round: int | None,
        details: Mapping[str, Any],
        client_name: str | None = None,
    ) -> None:
        """Append a typed progress event to ``logs.jsonl``."""
        model_id, body = progress_event_body(model_id, event_type, global_round, details, client_name)
        self._append("logs.jsonl", {"model_id": model_id, **body})

    def upload_results_to_s3(self, results_folder: str | Path, model_id: str) -> str:
        """Write the zip that would be uploaded to ``output_dir/results/<model_id>/<ts>.zip``."""
        from flip_nvflare.errors import FlipResultsUploadError

        model_id = check_model_id(model_id)
        folder = check_results_folder(results_folder)
        destination = self.output_dir / "results" / results_key("", model_id)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            zip_folder(folder, destination)
        except OSError as exc:
            destination.unlink(missing_ok=True)
            raise FlipResultsUploadError(
                f"Writing the dev results zip failed ({type(exc).__name__}); the results folder was left intact."
            ) from exc
        return str(destination)

    def cleanup(self, path: str | Path) -> bool:
        """Delete ``path`` if it lies inside ``cleanable_dirs`` (none by default in dev mode)."""
        return remove_inside(path, self._cleanable)
