"""Zip a results folder (streamed to a temporary file) and put it in S3."""

from __future__ import annotations

import logging
import os
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
    """Return the folder as a Path if it exists and is a directory, else raise."""
    folder = Path(results_folder)
    if not folder.is_dir():
        raise FlipInvalidArgument(f"results_folder {str(folder)!r} is not an existing folder.")
    return folder


def results_key(prefix: str, model_id: str, when: datetime | None = None) -> str:
    """The object key ``<prefix>/<model_id>/<YYYYmmdd_HHMMSS>.zip`` (never starting with ``/``)."""
    stamp = (when or datetime.now(timezone.utc)).strftime("%Y%m%d_%H%M%S")
    parts = [p for p in (prefix.strip("/"), model_id, f"{stamp}.zip") if p]
    return "/".join(parts)


def zip_folder(folder: Path, destination: Path) -> int:
    """Write every file under ``folder`` into the zip ``destination``, streaming; return its size."""
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
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
