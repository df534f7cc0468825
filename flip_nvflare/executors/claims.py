"""Shared-use markers for image folders on a trust's net, so a job deletes only what it downloaded.

Several jobs at one trust share ``<IMAGES_DIR>/<NET_ID>/``, and the imaging-api puts every
download of an accession in the same folder ``<IMAGES_DIR>/<NET_ID>/<accession>/``. Two jobs may
need the same accession at the same time, and a folder may also be there for reasons that have
nothing to do with FLIP jobs. The rules:

- Before asking for an accession, a job *claims* it: it writes a marker
  ``<net>/.flip_nvflare_claims/<accession>/<token>`` (one token per job and site).
- If the folder already exists and nobody has claimed it, the job does **not** claim it: the folder
  is someone else's and is never deleted (origin ``preexisting``).
- When a job is done, it *releases* its claims. The folder is deleted only when the last claim on
  it is released, so a job never deletes a folder another running job uses.

Claiming and releasing hold an exclusive lock (``flock`` on ``.flip_nvflare_claims/.lock``), so a
release and a concurrent claim cannot interleave. A folder to delete is first renamed into
``.flip_nvflare_claims/.trash/`` under the lock (instant), then deleted outside it.

A job that dies without releasing leaves its markers behind: its folders are then kept, which is the
safe direction. Markers name only the accession (already a folder name on that volume) and the job.

Nothing is done through a symlink: an accession must be one safe folder name, the claims folder, its
trash, lock file and marker folders must not be links (:class:`ClaimsLayoutError` otherwise, before
anything is changed), and an accession folder that is a link is renamed into the trash as a link and
then unlinked by the backend's ``cleanup`` (its target is left untouched).
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flip_nvflare.core.base import check_accession_id
from flip_nvflare.errors import ClaimsLayoutError, FlipInvalidArgument
from flip_nvflare.executors.manifest import Origin

CLAIMS_DIR = ".flip_nvflare_claims"
TRASH_DIR = ".trash"
LOCK_FILE = ".lock"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_process_lock = threading.Lock()


def make_claim_token(job_id: str, site: str) -> str:
    """A marker name unique to one preparation of one job at one site."""
    parts = [_UNSAFE.sub("_", job_id)[:64], _UNSAFE.sub("_", site)[:64], uuid.uuid4().hex[:12]]
    return "__".join(p for p in parts if p)


class ReleaseOutcome:
    """What releasing one claim did to the folder."""

    #: This was the last claim and the folder was deleted.
    DELETED = "deleted"
    #: Other jobs still claim the folder: it stays for them.
    KEPT_SHARED = "kept_shared"
    #: This job may not delete the folder (e.g. it existed before any job claimed it).
    KEPT = "kept"
    #: There was no folder (e.g. the download failed).
    ABSENT = "absent"


class ImageClaims:
    """Claims of one job on the accession folders of one net.

    Args:
        net_dir: ``<IMAGES_DIR>/<NET_ID>``: where the imaging-api puts accession folders.
        token: This job's marker name (see :func:`make_claim_token`).
    """

    def __init__(self, net_dir: str | Path, token: str) -> None:
        self.net_dir = Path(net_dir)
        self.token = token
        self.claims_dir = self.net_dir / CLAIMS_DIR

    def folder_of(self, accession_id: str) -> Path:
        """Where the imaging-api puts ``accession_id`` on this net."""
        return self.net_dir / accession_id

    def is_trackable(self, accession_id: str) -> bool:
        """Whether an accession's folder can be tracked (not one of this module's own names)."""
        return not accession_id.startswith(CLAIMS_DIR)

    def _checked_accession(self, accession_id: str) -> str:
        """``accession_id`` if it is one safe folder name that is not this module's own; else raise.

        Raises:
            FlipInvalidArgument: It is not (the value is never shown: it may identify a patient).
        """
        check_accession_id(accession_id)
        if not self.is_trackable(accession_id):
            raise FlipInvalidArgument("accession_id is a name the claims folder uses for itself.")
        return accession_id

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        _check_real_folder(self.claims_dir, "claims folder")
        with _process_lock:
            try:
                fd = os.open(self.claims_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except OSError as exc:
                if os.path.islink(self.claims_dir / LOCK_FILE):
                    raise ClaimsLayoutError(
                        "The claims lock file is a symlink: nothing was claimed or released."
                    ) from exc
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def claim(self, accession_id: str) -> str:
        """Claim an accession before asking for it; return its origin.

        Returns:
            ``Origin.DOWNLOADED`` (no folder and no claims: this job is its first user),
            ``Origin.SHARED`` (other jobs hold claims), or ``Origin.PREEXISTING`` (a folder nobody
            claimed exists: not claimed, never deleted).
        """
        if not self.is_trackable(accession_id):
            return Origin.UNMANAGED
        check_accession_id(accession_id)
        marker_dir = self.claims_dir / accession_id
        with self._locked():
            _check_not_a_link(marker_dir, "claim marker folder")
            markers = list(_markers(marker_dir))
            others = [p for p in markers if p.name != self.token]
            already_mine = len(others) < len(markers)
            if not others and not already_mine and self.folder_of(accession_id).exists():
                return Origin.PREEXISTING
            marker_dir.mkdir(parents=True, exist_ok=True)
            (marker_dir / self.token).touch()
            return Origin.SHARED if others else Origin.DOWNLOADED

    def release(self, accession_id: str, *, delete_folder: bool, remove: Callable[[Path], object]) -> str:
        """Release this job's claim; delete the folder if it was the last claim and ``delete_folder``.

        Args:
            accession_id: The accession.
            delete_folder: Whether this job may delete the folder once unclaimed.
            remove: Deletes a path (the backend's ``cleanup``, which refuses paths outside its roots).

        Returns:
            One of :class:`ReleaseOutcome`.

        Raises:
            FlipInvalidArgument: ``accession_id`` is not one safe folder name (nothing is done).
            ClaimsLayoutError: A folder of the claims layout is a symlink (nothing is done).
        """
        self._checked_accession(accession_id)
        marker_dir = self.claims_dir / accession_id
        folder = self.folder_of(accession_id)
        trashed: Path | None = None
        with self._locked():
            _check_not_a_link(marker_dir, "claim marker folder")
            trash = self.claims_dir / TRASH_DIR
            _check_not_a_link(trash, "claims trash folder")
            (marker_dir / self.token).unlink(missing_ok=True)
            if list(_markers(marker_dir)):
                return ReleaseOutcome.KEPT_SHARED
            _rmdir_quietly(marker_dir)
            if not (folder.exists() or folder.is_symlink()):
                return ReleaseOutcome.ABSENT
            if not delete_folder:
                return ReleaseOutcome.KEPT
            trash.mkdir(exist_ok=True)
            _check_real_folder(trash, "claims trash folder")
            trashed = trash / f"{uuid.uuid4().hex}"
            os.rename(folder, trashed)  # a link is moved as a link; its target stays where it is
        try:
            remove(trashed)
        except Exception:
            # a file that was still being written into the folder (a late answer of the imaging
            # service) can make the first removal fail: the folder is out of the images folder
            # already, so try once more; a second failure is raised (empty_trash retries later)
            remove(trashed)
        return ReleaseOutcome.DELETED

    def empty_trash(self, remove: Callable[[Path], object]) -> int:
        """Delete folders left in the trash by releases that could not finish; return how many."""
        trash = self.claims_dir / TRASH_DIR
        count = 0
        if trash.is_symlink() or self.claims_dir.is_symlink():
            return 0
        try:
            entries = list(trash.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return 0
        for entry in entries:
            try:
                remove(entry)
                count += 1
            except (OSError, ValueError):
                continue
        return count

    def holders(self, accession_id: str) -> list[str]:
        """Tokens of the jobs that currently claim ``accession_id``."""
        return sorted(p.name for p in _markers(self.claims_dir / accession_id))


def _markers(marker_dir: Path) -> Iterator[Path]:
    try:
        yield from (p for p in marker_dir.iterdir() if not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return


def _check_not_a_link(path: Path, what: str) -> None:
    if path.is_symlink():
        raise ClaimsLayoutError(f"The {what} is a symlink: nothing was claimed, released or deleted.")


def _check_real_folder(path: Path, what: str) -> None:
    _check_not_a_link(path, what)
    if not path.is_dir():
        raise ClaimsLayoutError(f"The {what} is not a folder: nothing was claimed, released or deleted.")


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
