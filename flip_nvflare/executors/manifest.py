"""The prepared cohort of a job at one trust: the manifest file and the saved dataframe.

:class:`~flip_nvflare.executors.cohort.CohortPreparer` writes, in the client's job run folder::

    <run_dir>/flip_cohort/manifest.json   accession -> local folder, or why it is missing
    <run_dir>/flip_cohort/cohort.pkl      the cohort dataframe, exactly as the trust returned it

User code reads them with :func:`flip_nvflare.prepared_cohort`; ImageCleanup reads the manifest to
delete only what this job downloaded. The dataframe is a pickle because pandas writes and reads it
without loss (dtypes, nullable integers, dates, string ids such as ``"00123"``, which CSV would turn
into numbers) and quickly, with no extra dependency; the file is written and read by the same job
on the same machine with the same pandas, which is the case pickle is safe for. Both files hold
patient data and stay on the client; ImageCleanup deletes them at the end of the job.

This module is pure Python (pandas is imported only to load the dataframe).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flip_nvflare.errors import FlipKeyError, PreparedCohortError, UntrustedManifestError
from flip_nvflare.workspace import write_atomically

if TYPE_CHECKING:
    import pandas as pd

PREPARED_DIR = "flip_cohort"
MANIFEST_FILE = "manifest.json"
COHORT_FILE = "cohort.pkl"
MANIFEST_VERSION = 1


class Origin:
    """Where an accession's local folder came from, which decides whether cleanup may delete it."""

    #: The imaging service created it for this job (no other job had claimed it): deletable.
    DOWNLOADED = "downloaded"
    #: Another job on the same net had claimed it too: deleted by whichever job releases it last.
    SHARED = "shared"
    #: It was there before this job asked, and no job had claimed it: never deleted.
    PREEXISTING = "preexisting"
    #: A dev-mode folder (the developer's own data): never deleted.
    DEV = "dev"
    #: Not on a net this job can track (no IMAGES_DIR / NET_ID, or an unexpected layout): never deleted.
    UNMANAGED = "unmanaged"


class Status:
    """Whether an accession's images are available locally."""

    READY = "ready"
    MISSING = "missing"


@dataclass
class ImageEntry:
    """The local state of one accession.

    Attributes:
        status: ``ready`` or ``missing``.
        folder: Absolute folder of its images (when ready).
        origin: One of :class:`Origin` (when known).
        reason: Why it is missing (never contains the accession id).
        claimed: This job holds a claim on it on the shared net, to release at cleanup.
        deletable: The folder may be deleted once the last claim on it is released.
        released: Cleanup has released this job's claim.
    """

    status: str
    folder: str | None = None
    origin: str | None = None
    reason: str | None = None
    claimed: bool = False
    deletable: bool = False
    released: bool = False


@dataclass
class CohortManifest:
    """What a job prepared at one trust (see the module docstring for where it lives)."""

    job_id: str
    site: str
    mode: str
    resource_types: list[str]
    accession_column: str
    rows: int
    images: dict[str, ImageEntry] = field(default_factory=dict)
    claim_token: str | None = None
    claims_root: str | None = None
    cohort_file: str | None = COHORT_FILE
    summary: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    version: int = MANIFEST_VERSION

    def to_json(self) -> dict[str, Any]:
        """The manifest as a JSON-able dict."""
        data = asdict(self)
        data["images"] = {key: asdict(entry) for key, entry in self.images.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CohortManifest:
        """Build a manifest from :meth:`to_json` output."""
        values = dict(data)
        images = {str(k): ImageEntry(**v) for k, v in dict(values.pop("images", {})).items()}
        known = set(cls.__dataclass_fields__)
        return cls(images=images, **{k: v for k, v in values.items() if k in known})

    def claims_net(self, images_root: Path | None) -> Path | None:
        """The net folder whose claims this manifest records, checked against the backend's own.

        Args:
            images_root: The backend's ``IMAGES_DIR/NET_ID`` (``FLIPBase.images_root()``).

        Returns:
            ``images_root`` when the manifest records claims there (compared with symlinks resolved),
            ``None`` when it records no claims.

        Raises:
            UntrustedManifestError: The manifest records claims elsewhere (``IMAGES_DIR`` itself,
                another net, a folder inside the net, anything outside), through ``..``, or the
                backend has no ``IMAGES_DIR/NET_ID``. The message names no path.
        """
        if not self.claims_root or not self.claim_token:
            return None
        root = Path(self.claims_root)
        if (
            images_root is None
            or not root.is_absolute()
            or ".." in root.parts
            or root.resolve() != Path(images_root).resolve()
        ):
            raise UntrustedManifestError(
                "Image cleanup refused: the prepared-cohort manifest records claims in a folder that is not this "
                "trust's IMAGES_DIR/NET_ID (or IMAGES_DIR / NET_ID are not set); nothing was released or deleted."
            )
        return Path(images_root)

    def save(self, folder: Path) -> Path:
        """Write ``manifest.json`` into ``folder`` atomically; return its path."""
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / MANIFEST_FILE
        write_atomically(target, json.dumps(self.to_json(), indent=1, sort_keys=True))
        return target

    @classmethod
    def load(cls, folder: Path) -> CohortManifest:
        """Read ``manifest.json`` from ``folder``.

        Raises:
            FileNotFoundError: There is no manifest there.
            PreparedCohortError: The file is not a manifest this version understands.
        """
        path = folder / MANIFEST_FILE
        text = path.read_text(encoding="utf-8")
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise PreparedCohortError(
                f"The prepared-cohort manifest {path} is damaged ({type(exc).__name__}); prepare the cohort again."
            ) from None


def prepared_dir(run_dir: str | Path) -> Path:
    """The folder holding the prepared cohort inside a job's run folder."""
    return Path(run_dir) / PREPARED_DIR


def cohort_identifiers(run_dir: str | Path, extra_columns: Iterable[str] = ()) -> list[str]:
    """Identifiers to redact from text leaving the trust, from the job's prepared cohort.

    They are the accession ids (of the manifest and of the dataframe) and the values of
    ``extra_columns``; the list is empty if nothing was prepared.
    """
    folder = prepared_dir(run_dir)
    try:
        manifest = CohortManifest.load(folder)
    except (OSError, PreparedCohortError):
        return []
    found: dict[str, None] = dict.fromkeys(manifest.images)
    columns = [manifest.accession_column, *extra_columns]
    if manifest.cohort_file and (folder / manifest.cohort_file).is_file():
        try:
            frame = PreparedCohort(folder, manifest).dataframe
        except Exception:  # an unreadable dataframe must not hide the original failure
            return list(found)
        for column in columns:
            if column in frame.columns:
                found.update(dict.fromkeys(frame[column].dropna().astype(str).str.strip()))
    return [value for value in found if value]


class PreparedCohort:
    """The cohort CohortPreparer prepared for this job, as user code sees it.

    Get one with :func:`flip_nvflare.prepared_cohort`. The dataframe is loaded on first use.

    Args:
        folder: The ``flip_cohort`` folder of the job's run folder.
        manifest: The manifest read from it.
    """

    def __init__(self, folder: Path, manifest: CohortManifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self._frame: pd.DataFrame | None = None

    @classmethod
    def open(cls, run_dir: str | Path) -> PreparedCohort:
        """Open the prepared cohort of the job whose run folder is ``run_dir``.

        Raises:
            PreparedCohortError: Nothing was prepared there.
        """
        folder = prepared_dir(run_dir)
        try:
            manifest = CohortManifest.load(folder)
        except FileNotFoundError:
            raise PreparedCohortError(
                "This job has no prepared cohort: add the CohortPreparer executor for the preparation task "
                '("init_training", or "init_task" for evaluation) to config_fed_client.json and the '
                "InitTraining / InitEvaluation workflow to config_fed_server.json, or fetch the cohort "
                "yourself with FLIP().get_dataframe(project_id, query)."
            ) from None
        return cls(folder, manifest)

    @property
    def accession_column(self) -> str:
        """The dataframe column holding accession ids."""
        return self.manifest.accession_column

    @property
    def dataframe(self) -> pd.DataFrame:
        """The cohort dataframe, as the trust returned it (a copy is not made: do not modify it in place)."""
        if self._frame is None:
            import pandas as pd

            if not self.manifest.cohort_file:
                raise PreparedCohortError("The prepared cohort's dataframe was not kept for this job.")
            path = self.folder / self.manifest.cohort_file
            if not path.is_file():
                raise PreparedCohortError(
                    "The prepared cohort's dataframe is gone (ImageCleanup deletes it at the end of the job)."
                )
            self._frame = pd.read_pickle(path)
        return self._frame

    @property
    def folders(self) -> dict[str, Path]:
        """Accession id -> local folder of its images, for every accession whose images are ready."""
        return {
            key: Path(entry.folder)
            for key, entry in self.manifest.images.items()
            if entry.status == Status.READY and entry.folder
        }

    @property
    def missing(self) -> dict[str, str]:
        """Accession id -> why its images are not available."""
        return {
            key: entry.reason or "unknown"
            for key, entry in self.manifest.images.items()
            if entry.status != Status.READY
        }

    def folder_of(self, accession_id: str) -> Path:
        """The local folder of one accession's images.

        Raises:
            FlipKeyError: The accession is not in the cohort, or its images are missing (the message
                gives the reason, not the id).
        """
        entry = self.manifest.images.get(accession_id)
        if entry is None:
            raise FlipKeyError("This accession is not part of the prepared cohort.")
        if entry.status != Status.READY or not entry.folder:
            raise FlipKeyError(f"This accession's images are missing: {entry.reason or 'unknown reason'}.")
        return Path(entry.folder)

    def ready_dataframe(self, folder_column: str = "image_folder") -> pd.DataFrame:
        """The rows whose images are ready, with their local folder in ``folder_column``."""
        frame = self.dataframe
        folders = self.folders
        column = self.accession_column
        if column not in frame.columns:
            raise PreparedCohortError(f"The prepared cohort has no {column!r} column.")
        keys = frame[column].astype("string")
        ready = frame[keys.isin(list(folders))].copy()
        ready[folder_column] = keys[ready.index].map(lambda key: str(folders[str(key)]))
        return ready

    def __iter__(self) -> Iterator[tuple[str, Path]]:
        """Iterate over (accession id, folder) of the ready accessions."""
        return iter(self.folders.items())

    def __len__(self) -> int:
        return len(self.folders)

    def __repr__(self) -> str:
        summary = self.manifest.summary
        return (
            f"PreparedCohort(rows={self.manifest.rows}, ready={summary.get('ready', len(self.folders))}, "
            f"missing={summary.get('missing', len(self.missing))}, mode={self.manifest.mode!r})"
        )
