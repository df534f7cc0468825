"""Zip a results folder and stream the zip into S3 (a multipart upload: no temporary file).

Symlinks are never followed: a link in the results folder (to a file or a folder, inside or outside
it) is skipped and counted, and a results folder that is itself a link is refused, so the zip holds
only the files that really are in the folder.

Each member is stored as it is (``ZIP_STORED``) when it would not compress, so the CPU is not spent
deflating model weights, images or archives: by its name (``.pt``, ``.safetensors``, ``.npz``,
``.nii.gz``, ``.png``, ...) or, for any other name, by compressing a sample of it. The rest is
deflated (level 6). The zip is written to a non-seekable stream, so each member's sizes and CRC
follow its data (data descriptors) and members over 4 GiB use ZIP64: a standard zip that ``unzip``
and Python's :mod:`zipfile` read. The stream cuts the zip into parts that are uploaded while the
next part fills; memory stays bounded by a few parts whatever the size of the results.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from io import RawIOBase
from pathlib import Path
from typing import Any

from flip_nvflare.errors import FlipInvalidArgument, FlipResultsUploadError

logger = logging.getLogger(__name__)

#: Size of each uploaded part (S3 allows 10,000 parts of at least 5 MiB, the last one smaller).
PART_SIZE = 8 * 1024 * 1024
#: Parts uploaded at once while the next one fills; memory is about ``(PARTS_IN_FLIGHT + 1) * part``.
PARTS_IN_FLIGHT = 2
#: After this many parts, each part is twice as large (so 10,000 parts hold over 100 GiB).
_GROW_AFTER_PARTS = 4000
_MAX_PARTS = 10_000
#: Names ending so hold data that is already compressed or random-like: stored, not deflated.
STORED_SUFFIXES = (
    ".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".onnx", ".npz", ".npy", ".h5", ".hdf5", ".pkl.gz",
    ".nii.gz", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".zip", ".7z",
    ".png", ".jpg", ".jpeg", ".gif", ".webp", ".mp4", ".pdf",
)  # fmt: skip
#: Other files: the first this many bytes are compressed (fast level) to decide.
SAMPLE_BYTES = 256 * 1024
#: A sample that shrinks to more than this fraction of its size is stored, not deflated.
STORE_ABOVE_RATIO = 0.9
_COPY_CHUNK = 1024 * 1024

#: ``progress(bytes_done, bytes_total)``: bytes of the results' files read into the zip so far.
Progress = Callable[[int, int], None]


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


def compresses(name: str, sample: bytes) -> bool:
    """Whether a member is worth deflating: not by its name (:data:`STORED_SUFFIXES`), else by a sample.

    Args:
        name: The member's name (only its ending is looked at, case-insensitively).
        sample: The first bytes of the file (up to :data:`SAMPLE_BYTES`).

    Returns:
        False for names of already-compressed data, for an empty sample and for a sample that
        shrinks by less than ``1 - STORE_ABOVE_RATIO``; True otherwise.
    """
    if name.lower().endswith(STORED_SUFFIXES) or not sample:
        return False
    return len(zlib.compress(sample, 1)) <= STORE_ABOVE_RATIO * len(sample)


class _Tally:
    """Counts the bytes read into the zip and calls ``progress`` at most about once per percent."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self._progress = progress
        self._step = max(1, total // 100)
        self._next = self._step

    def add(self, count: int) -> None:
        self.done += count
        if self._progress is not None and self.done >= self._next:
            self._next = (self.done // self._step + 1) * self._step
            self._progress(min(self.done, self.total), self.total)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress(self.total, self.total)


def _add_file(zf: zipfile.ZipFile, path: Path, arcname: str, tally: _Tally) -> bool:
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
        sample = b"" if arcname.lower().endswith(STORED_SUFFIXES) else source.read(SAMPLE_BYTES)
        entry = zipfile.ZipInfo(arcname, date_time=_zip_time(info.st_mtime))
        entry.external_attr = (info.st_mode & 0xFFFF) << 16
        entry.compress_type = zipfile.ZIP_DEFLATED if compresses(arcname, sample) else zipfile.ZIP_STORED
        entry.file_size = info.st_size  # lets the writer choose ZIP64 for large models
        with zf.open(entry, "w") as target:
            if sample:
                target.write(sample)
                tally.add(len(sample))
            while chunk := source.read(_COPY_CHUNK):
                target.write(chunk)
                tally.add(len(chunk))
    return True


def write_zip(folder: Path, stream: Any, progress: Progress | None = None) -> int:
    """Write every regular file under ``folder`` as a zip into ``stream``; return the number of members.

    Symlinks are skipped, never followed (to files or folders, inside or outside ``folder``); their
    number is logged as a warning (see :func:`count_links`). Member names are relative to
    ``folder``. Members that would not compress are stored, the rest deflated (level 6).

    Args:
        folder: The results folder.
        stream: A writable binary file object, seekable or not (a non-seekable one gets data
            descriptors after each member).
        progress: Called with (bytes of the files read so far, their total) about every percent,
            and once at the end with (total, total).

    Returns:
        How many files the zip holds.
    """
    files, links = _walk(folder)
    total = 0
    for path in files:
        try:
            total += path.lstat().st_size
        except OSError:
            pass  # gone meanwhile: opening it below reports it
    tally = _Tally(total, progress)
    members = 0
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6, allowZip64=True) as zf:
        for path in files:
            if _add_file(zf, path, path.relative_to(folder).as_posix(), tally):
                members += 1
            else:
                links += 1
    tally.finish()
    if links:
        logger.warning("Results zip: %d symlink(s) in the results folder were skipped, not followed.", links)
    return members


def zip_folder(folder: Path, destination: Path, progress: Progress | None = None) -> int:
    """Write every regular file under ``folder`` into the zip file ``destination``; return its size.

    See :func:`write_zip` for what goes in (links are skipped, never followed).

    Args:
        folder: The results folder.
        destination: The zip file to write.
        progress: As for :func:`write_zip`.

    Returns:
        The size of the zip in bytes.
    """
    with open(destination, "wb") as target:
        write_zip(folder, target, progress)
    return destination.stat().st_size


class MultipartStream(RawIOBase):
    """A write-only, non-seekable stream that uploads what is written to one S3 object, in parts.

    Parts are uploaded in background threads (at most ``in_flight`` at once) while the next part
    fills, so memory stays about ``(in_flight + 1) * part_size``. A stream that never fills one
    part is stored with a single ``put_object`` at :meth:`finish`. Any failure aborts the
    multipart upload, so S3 keeps no parts and no object; the error is raised by the next
    :meth:`write` or by :meth:`finish`.

    Args:
        s3_client: A boto3 S3 client (thread-safe; shared by the upload threads).
        bucket: The bucket.
        key: The object key.
        part_size: Bytes per part (at least 5 MiB for real S3, except the last part).
        in_flight: Parts uploaded at once.
    """

    def __init__(
        self, s3_client: Any, bucket: str, key: str, *, part_size: int = PART_SIZE, in_flight: int = PARTS_IN_FLIGHT
    ) -> None:
        super().__init__()
        self._s3 = s3_client
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._slots = threading.BoundedSemaphore(in_flight)
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight = in_flight
        self._failure: BaseException | None = None
        self.size = 0

    def writable(self) -> bool:
        """True: the stream takes bytes."""
        return True

    def write(self, data: Any) -> int:
        """Append ``data``; upload a part each time one is full. Raises if an upload has failed."""
        self._check()
        view = memoryview(data).cast("B")
        self._buffer += view
        self.size += len(view)
        while len(self._buffer) >= self._part_size:
            self._send(self._part_size)
        return len(view)

    def _check(self) -> None:
        """Raise the first failure of a part upload, if any."""
        if self._failure is not None:
            raise self._failure

    def _note(self, future: Future[dict[str, Any]]) -> None:
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()

    def _send(self, size: int) -> None:
        """Upload the first ``size`` bytes of the buffer as the next part (once an upload slot is free)."""
        if self._upload_id is None:
            created = self._s3.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = str(created["UploadId"])
            self._pool = ThreadPoolExecutor(self._in_flight, thread_name_prefix="flip-results-upload")
        number = len(self._parts) + 1
        if number > _MAX_PARTS:
            raise FlipResultsUploadError(f"The results zip needs more than {_MAX_PARTS} parts; too large for S3.")
        if number == _GROW_AFTER_PARTS:
            self._part_size *= 2
        # Wait (the zip waits with it) while the uploads are behind: memory stays bounded.
        self._slots.acquire()
        assert self._pool is not None
        try:
            with memoryview(self._buffer) as buffered:
                part = bytes(buffered[:size])
            del self._buffer[:size]
            future = self._pool.submit(self._upload_part, number, part)
            self._parts.append(future)
            future.add_done_callback(self._note)
        except BaseException:
            self._slots.release()
            raise
        self._check()

    def _upload_part(self, number: int, part: bytes) -> dict[str, Any]:
        try:
            answer = self._s3.upload_part(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=part
            )
            return {"PartNumber": number, "ETag": answer["ETag"]}
        finally:
            self._slots.release()

    def finish(self) -> None:
        """Upload what is left and complete the object; on any failure, abort and raise."""
        try:
            self._check()
            if self._upload_id is None:
                self._s3.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer))
                self._buffer = bytearray()
                return
            if self._buffer:
                self._send(len(self._buffer))
            parts = [future.result() for future in self._parts]
            self._s3.complete_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
            )
            self._upload_id = None
        except BaseException:
            self.abort()
            raise
        finally:
            self._shutdown()

    def abort(self) -> None:
        """Abandon the upload: wait for the part uploads under way, then abort it so S3 keeps nothing."""
        self._buffer = bytearray()
        self._shutdown()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id)
            except Exception as exc:  # the original failure matters more; S3's lifecycle rules clean up
                logger.warning("Aborting the results multipart upload failed (%s).", type(exc).__name__)

    def _shutdown(self) -> None:
        if self._pool is not None:
            for future in self._parts:
                future.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None


def upload_folder_zip(
    s3_client: Any,
    folder: Path,
    bucket: str,
    key: str,
    *,
    progress: Progress | None = None,
    part_size: int = PART_SIZE,
) -> int:
    """Zip ``folder`` straight into the S3 object ``bucket/key``: no temporary file, bounded memory.

    See :func:`write_zip` for what goes in and :class:`MultipartStream` for how it is uploaded.
    On any failure nothing is left in S3 (the multipart upload is aborted) and the folder is
    untouched.

    Args:
        s3_client: A boto3 S3 client.
        folder: The results folder (checked with :func:`check_results_folder` by the caller).
        bucket: The bucket.
        key: The object key.
        progress: Called with (bytes of the files read so far, their total) about every percent,
            and once at the end with (total, total) after the object is complete.
        part_size: Bytes per uploaded part.

    Returns:
        The size of the uploaded zip in bytes.

    Raises:
        FlipResultsUploadError: Reading the folder, or any S3 call, failed.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    t0 = time.monotonic()
    stream = MultipartStream(s3_client, bucket, key, part_size=part_size)
    last: list[tuple[int, int]] = []

    def hold_last(done: int, total: int) -> None:
        if done >= total and progress is not None:
            last.append((done, total))  # reported once the object is complete
        elif progress is not None:
            progress(done, total)

    try:
        try:
            write_zip(folder, stream, hold_last)
        except BaseException:
            stream.abort()
            raise
        stream.finish()
    except FlipResultsUploadError:
        raise
    except (BotoCoreError, ClientError) as exc:
        raise FlipResultsUploadError(
            f"Uploading results to s3://{bucket}/{key} failed ({type(exc).__name__}: {exc}); "
            "the results folder was left intact."
        ) from exc
    except OSError as exc:  # reading the folder (or a socket error botocore did not wrap)
        raise FlipResultsUploadError(
            f"Preparing the results upload to s3://{bucket}/{key} failed ({type(exc).__name__}); "
            "the results folder was left intact."
        ) from exc
    if progress is not None and last:
        progress(*last[-1])
    logger.info(
        "S3 upload s3://%s/%s: %d bytes in %.0f ms (streamed, no temporary file)",
        bucket,
        key,
        stream.size,
        (time.monotonic() - t0) * 1000,
    )
    return stream.size
