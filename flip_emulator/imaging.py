"""The imaging side of a trust: the XNAT-style archive, downloads into the shared volume, and uploads.

A download copies the files of one resource type of one accession from the archive to
``<images_root>/<net_id>/<accession>/`` keeping XNAT's layout (``scans/<scan>/resources/<R>/files/...``),
as the real imaging-api does. A download whose files are already there (same names and sizes)
is a cache hit and copies nothing. Uploaded files are kept beside the archive (``uploads/``) and
are served by later downloads like archive files.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

SAFE_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


class ImagingError(Exception):
    """A request the imaging-api refuses; ``status_code`` and ``detail`` are what it answers."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def is_safe_segment(value: str) -> bool:
    """Whether ``value`` is one URL path segment of ``[A-Za-z0-9._~-]`` and not ``.`` or ``..``."""
    return bool(SAFE_SEGMENT.fullmatch(value)) and value not in (".", "..")


@dataclass(frozen=True)
class StudyFile:
    """A file of a study: where it is, and its path under the accession folder."""

    source: Path
    relative: PurePosixPath


class ImageArchive:
    """The archive of one trust and its part of the shared images volume.

    Args:
        archive: Folder of ``<accession>/scans/...`` studies (read only).
        uploads: Folder where uploaded resources are kept (same layout).
        images_root: The shared images volume (``IMAGES_DIR``).
        net_id: The trust's network id.
    """

    def __init__(self, archive: Path, uploads: Path, images_root: Path, net_id: str) -> None:
        self.archive = archive
        self.uploads = uploads
        self.images_root = images_root
        self.net_id = net_id

    @property
    def net_dir(self) -> Path:
        """``<images_root>/<net_id>``: where downloads land."""
        return self.images_root / self.net_id

    @property
    def upload_root(self) -> Path:
        """``<images_root>/<net_id>/upload``: where clients stage files to upload."""
        return self.net_dir / "upload"

    def has_accession(self, accession_id: str) -> bool:
        """Whether the archive (or an upload) knows ``accession_id``."""
        return (self.archive / accession_id).is_dir() or (self.uploads / accession_id).is_dir()

    def files(self, accession_id: str, resource_type: str) -> list[StudyFile]:
        """The files of one resource type (or ``ALL``: every resource) of an accession.

        Raises:
            ImagingError: 404 when the accession or data of that type is missing.
        """
        if not self.has_accession(accession_id):
            raise ImagingError(404, "Resource not found: no study with this accession id in the archive.")
        found: dict[PurePosixPath, StudyFile] = {}
        for root in (self.archive / accession_id, self.uploads / accession_id):
            for resource_dir in sorted(root.glob("scans/*/resources/*")):
                if resource_type != "ALL" and resource_dir.name != resource_type:
                    continue
                for path in sorted(p for p in resource_dir.rglob("*") if p.is_file()):
                    relative = PurePosixPath(path.relative_to(root).as_posix())
                    found[relative] = StudyFile(path, relative)
        if not found:
            raise ImagingError(404, f"Resource not found: no {resource_type} data for this accession.")
        return list(found.values())

    def destination(self, accession_id: str) -> Path:
        """The folder an accession is downloaded to (absolute)."""
        return (self.net_dir / accession_id).absolute()

    def is_cached(self, files: list[StudyFile], destination: Path) -> bool:
        """Whether every file is already at the destination with the right size."""
        for item in files:
            target = destination / item.relative
            try:
                if target.stat().st_size != item.source.stat().st_size:
                    return False
            except OSError:
                return False
        return True

    def copy(self, files: list[StudyFile], destination: Path) -> None:
        """Copy ``files`` under ``destination``; each file appears whole or not at all."""
        for item in files:
            target = destination / item.relative
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial-{secrets.token_hex(6)}")
            shutil.copyfile(item.source, partial)
            os.replace(partial, target)

    def staged_file(self, relative: str) -> Path:
        """The staged file ``relative`` names under the upload folder.

        Raises:
            ImagingError: 400 for a path that leaves the upload folder, 404 if it is not a file.
        """
        pure = PurePosixPath(relative)
        if not relative or "\\" in relative or pure.is_absolute() or any(p in ("..", "") for p in pure.parts):
            raise ImagingError(400, "Path traversal: files must be relative paths inside the upload folder.")
        root = self.upload_root.resolve()
        path = (root / pure).resolve()
        if not path.is_relative_to(root):
            raise ImagingError(400, "Path traversal: files must be relative paths inside the upload folder.")
        if not path.is_file():
            raise ImagingError(404, "Resource not found: a file to upload is not in the upload folder.")
        return path

    def upload(
        self,
        accession_id: str,
        scan_id: str,
        resource_id: str,
        relative_files: list[str],
        *,
        exist_ok: bool,
        url_base: str,
    ) -> list[str]:
        """Store staged files as a resource of a scan of an accession; return their XNAT URLs.

        Raises:
            ImagingError: 400 traversal, 404 unknown accession or missing file, 500 if a file exists
                and ``exist_ok`` is false (nothing is written then).
        """
        if not relative_files:
            raise ImagingError(400, "files must list at least one file to upload.")
        if not self.has_accession(accession_id):
            raise ImagingError(404, "Resource not found: no study with this accession id in the archive.")
        sources = [self.staged_file(r) for r in relative_files]
        folder = self.uploads / accession_id / "scans" / scan_id / "resources" / resource_id / "files"
        targets = [folder / s.name for s in sources]
        if len({t.name for t in targets}) != len(targets):
            raise ImagingError(400, "files must have distinct file names.")
        if not exist_ok:
            archived = self.archive / accession_id / "scans" / scan_id / "resources" / resource_id / "files"
            for target in targets:
                if target.exists() or (archived / target.name).exists():
                    raise ImagingError(
                        500, "Upload failed: a file of this resource already exists (send exist_ok=true to replace it)."
                    )
        urls = []
        for source, target in zip(sources, targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.partial-{secrets.token_hex(6)}")
            shutil.copyfile(source, partial)
            os.replace(partial, target)
            urls.append(
                f"{url_base.rstrip('/')}/data/experiments/{accession_id}/scans/{scan_id}"
                f"/resources/{resource_id}/files/{target.name}"
            )
        return urls
