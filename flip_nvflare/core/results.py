"""Zip a results folder (streamed to a temporary file) and put it in S3.

Symlinks are never followed: a link in the results folder (to a file or a folder, inside or outside
it) is skipped and counted, and a results folder that is itself a link is refused, so the zip holds
only the files that really are in the folder.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flip_nvflare.errors import FlipInvalidArgument, FlipResultsUploadError

logger = logging.getLogger(__name__)

#: Files at least this large are uploaded in parts.
MULTIPART_THRESHOLD = 64 * 1024 * 1024


def check_results_folder(results_folder: str | Path) -> Path:
    """Return the folder as a Path if it is an existing directory and not a symlink, else raise.

    Raises:
        FlipInvalidArgument: It does not exist, is not a folder, or is a symlink (never followed).
    """
    folder = Path(results_folder)
    if folder.is_symlink():
        raise FlipInvalidArgument(f"results_folder {str(folder)!r} is a symlink; symlinks are never followed.")
    if not folder.is_dir():
        raise FlipInvalidArgument(f"results_folder {str(folder)!r} is not an existing folder.")
    return folder


def results_key(prefix: str, model_id: str, when: datetime | None = None) -> str:
    """The object key ``<prefix>/<model_id>/<YYYYmmdd_HHMMSS>.zip`` (never starting with ``/``)."""
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y%m%d_%H%M%S")
    parts = [p for p in (prefix.strip("/"), model_id, f"{stamp}.zip") if p]
    return "/".join(parts)


def _walk(folder: Path) -> tuple[list[Path], int]:
    """The regular files under ``folder`` (sorted) and the number of symlinks met; no link is followed."""
    files: list[Path] = []
    links = 0
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    links += 1
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    files.append(Path(entry.path))
                # sockets, FIFOs and devices are not results: left out
    return sorted(files), links


def count_links(folder: str | Path) -> int:
    """The number of symlinks under ``folder`` (at any depth, without following any): what a zip skips.

    Args:
        folder: The results folder.

    Returns:
        How many symlinks (to files or folders, inside or outside it, or dangling) it holds.
    """
    return _walk(Path(folder))[1]


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    stamp = time.localtime(mtime)[:6]
    return min(max(stamp, (1980, 1, 1, 0, 0, 0)), (2107, 12, 31, 23, 59, 58))


def _add_file(zf: zipfile.ZipFile, path: Path, arcname: str) -> bool:
    """Stream one regular file into the zip; False (nothing added) if it has become a symlink meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False
        raise
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            return False
        entry = zipfile.ZipInfo(arcname, date_time=_zip_time(info.st_mtime))
        entry.external_attr = (info.st_mode & 0xFFFF) << 16
        entry.compress_type = zipfile.ZIP_DEFLATED
        entry.file_size = info.st_size  # lets the writer choose ZIP64 for large models
        with zf.open(entry, "w") as target:
            shutil.copyfileobj(source, target, 1024 * 1024)
    return True


def zip_folder(folder: Path, destination: Path) -> int:
    """Write every regular file under ``folder`` into the zip ``destination``, streaming; return its size.

    Symlinks are skipped, never followed (to files or folders, inside or outside ``folder``); their
    number is logged as a warning (see :func:`count_links`). File names in the zip are relative to
    ``folder``.

    Args:
        folder: The results folder.
        destination: The zip file to write.

    Returns:
        The size of the zip in bytes.
    """
    files, links = _walk(folder)
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in files:
            if not _add_file(zf, path, path.relative_to(folder).as_posix()):
                links += 1
    if links:
        logger.warning("Results zip: %d symlink(s) in the results folder were skipped, not followed.", links)
    return destination.stat().st_size


@contextmanager
def zipped(folder: Path) -> Iterator[Path]:
    """Zip ``folder`` into a temporary file that is removed on exit."""
    fd, name = tempfile.mkstemp(prefix="flip-results-", suffix=".zip")
    os.close(fd)
    path = Path(name)
    try:
        zip_folder(folder, path)
        yield path
    finally:
        path.unlink(missing_ok=True)


def upload_zip(s3_client: Any, zip_path: Path, bucket: str, key: str) -> None:
    """Upload one file to S3, in parts when large. Raises FlipResultsUploadError on any failure."""
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)
    t0 = time.monotonic()
    try:
        s3_client.upload_file(str(zip_path), bucket, key, Config=config)
    except (BotoCoreError, ClientError, OSError) as exc:
        raise FlipResultsUploadError(
            f"Uploading results to s3://{bucket}/{key} failed ({type(exc).__name__}: {exc}); "
            "the results folder was left intact."
        ) from exc
    logger.info(
        "S3 upload s3://%s/%s: %d bytes in %.0f ms",
        bucket,
        key,
        zip_path.stat().st_size,
        (time.monotonic() - t0) * 1000,
    )
