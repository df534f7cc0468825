from __future__ import annotations

import multiprocessing
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flip_nvflare.core.base import remove_inside
from flip_nvflare.executors.claims import CLAIMS_DIR, ImageClaims, ReleaseOutcome, make_claim_token
from flip_nvflare.executors.manifest import Origin


def _remover(net: Path) -> Callable[[Path], bool]:
    """The backend's cleanup: refuses anything outside the net folder."""
    return lambda path: remove_inside(path, [net])


def _download(claims: ImageClaims, accession: str) -> Path:
    folder = claims.folder_of(accession)
    (folder / "scans").mkdir(parents=True, exist_ok=True)
    (folder / "scans" / "img.nii").write_bytes(b"x")
    return folder


def test_first_user_downloads_and_deletes(tmp_path: Path) -> None:
    job = ImageClaims(tmp_path, make_claim_token("job-a", "site-1"))
    assert job.claim("ACC1") == Origin.DOWNLOADED
    folder = _download(job, "ACC1")
    assert job.release("ACC1", delete_folder=True, remove=_remover(tmp_path)) == ReleaseOutcome.DELETED
    assert not folder.exists()
    assert not (tmp_path / CLAIMS_DIR / "ACC1").exists()
    assert list((tmp_path / CLAIMS_DIR / ".trash").iterdir()) == []


def test_shared_folder_is_deleted_by_the_last_job_only(tmp_path: Path) -> None:
    a = ImageClaims(tmp_path, make_claim_token("job-a", "site-1"))
    b = ImageClaims(tmp_path, make_claim_token("job-b", "site-1"))
    assert a.claim("ACC1") == Origin.DOWNLOADED
    folder = _download(a, "ACC1")
    assert b.claim("ACC1") == Origin.SHARED
    assert a.holders("ACC1") == sorted([a.token, b.token])
    assert a.release("ACC1", delete_folder=True, remove=_remover(tmp_path)) == ReleaseOutcome.KEPT_SHARED
    assert folder.is_dir()
    assert b.release("ACC1", delete_folder=True, remove=_remover(tmp_path)) == ReleaseOutcome.DELETED
    assert not folder.exists()


def test_unclaimed_existing_folder_is_never_claimed_nor_deleted(tmp_path: Path) -> None:
    folder = tmp_path / "ACC1"
    folder.mkdir()
    job = ImageClaims(tmp_path, make_claim_token("job-a", "site-1"))
    assert job.claim("ACC1") == Origin.PREEXISTING
    assert job.holders("ACC1") == []


def test_release_without_permission_keeps_the_folder(tmp_path: Path) -> None:
    job = ImageClaims(tmp_path, make_claim_token("job-a", "site-1"))
    job.claim("ACC1")
    folder = _download(job, "ACC1")
    assert job.release("ACC1", delete_folder=False, remove=_remover(tmp_path)) == ReleaseOutcome.KEPT
    assert folder.is_dir()


def test_release_of_a_missing_folder_and_twice(tmp_path: Path) -> None:
    job = ImageClaims(tmp_path, make_claim_token("job-a", "site-1"))
    job.claim("ACC1")
    remove = _remover(tmp_path)
    assert job.release("ACC1", delete_folder=True, remove=remove) == ReleaseOutcome.ABSENT
    assert job.release("ACC1", delete_folder=True, remove=remove) == ReleaseOutcome.ABSENT


def test_failed_delete_is_left_in_trash_and_emptied_later(tmp_path: Path) -> None:
    job = ImageClaims(tmp_path, make_claim_token("job-a", "site-1"))
    job.claim("ACC1")
    folder = _download(job, "ACC1")

    def broken(path: Path) -> None:
        raise OSError("disk busy")

    with pytest.raises(OSError):
        job.release("ACC1", delete_folder=True, remove=broken)
    assert not folder.exists()
    assert len(list((tmp_path / CLAIMS_DIR / ".trash").iterdir())) == 1
    assert job.empty_trash(_remover(tmp_path)) == 1
    assert list((tmp_path / CLAIMS_DIR / ".trash").iterdir()) == []


def test_tokens_are_unique_and_safe() -> None:
    first, second = make_claim_token("simulate_job", "site 1/x"), make_claim_token("simulate_job", "site 1/x")
    assert first != second
    assert "/" not in first and " " not in first


def _worker(net: str, index: int, rounds: int, errors: multiprocessing.Queue) -> None:
    claims = ImageClaims(net, make_claim_token(f"job-{index}", "site-1"))
    remove = _remover(Path(net))
    for _ in range(rounds):
        origin = claims.claim("ACC1")
        if origin == Origin.PREEXISTING:
            errors.put(f"worker {index}: saw an unclaimed folder")
            return
        folder = _download(claims, "ACC1")
        time.sleep(0.002)
        if not (folder / "scans" / "img.nii").exists():
            errors.put(f"worker {index}: folder deleted while claimed")
            return
        claims.release("ACC1", delete_folder=True, remove=remove)


def test_concurrent_jobs_never_delete_a_folder_in_use(tmp_path: Path) -> None:
    errors: multiprocessing.Queue = multiprocessing.Queue()
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_worker, args=(str(tmp_path), i, 40, errors)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    assert all(w.exitcode == 0 for w in workers)
    assert not (tmp_path / "ACC1").exists()
    shutil.rmtree(tmp_path / CLAIMS_DIR)


def test_claiming_again_keeps_the_folder_ours(tmp_path: Path) -> None:
    job = ImageClaims(tmp_path, make_claim_token("job-a", "site-1"))
    assert job.claim("ACC1") == Origin.DOWNLOADED
    _download(job, "ACC1")  # e.g. a request that timed out on the client but completed on the server
    assert job.claim("ACC1") == Origin.DOWNLOADED
    assert job.release("ACC1", delete_folder=True, remove=_remover(tmp_path)) == ReleaseOutcome.DELETED


def test_a_removal_that_fails_once_is_tried_again_and_a_second_failure_is_raised(tmp_path: Path) -> None:
    job = ImageClaims(tmp_path, make_claim_token("job-a", "site-1"))
    job.claim("ACC1")
    _download(job, "ACC1")
    calls: list[Path] = []
    real = _remover(tmp_path)

    def flaky(path: Path) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise OSError("Directory not empty")  # a late write into the folder while it was removed
        real(path)

    assert job.release("ACC1", delete_folder=True, remove=flaky) == ReleaseOutcome.DELETED
    assert len(calls) == 2 and not calls[0].exists() and not (tmp_path / "ACC1").exists()

    job.claim("ACC2")
    _download(job, "ACC2")

    def broken(path: Path) -> None:
        raise OSError("read-only")

    with pytest.raises(OSError, match="read-only"):
        job.release("ACC2", delete_folder=True, remove=broken)
    assert not (tmp_path / "ACC2").exists()  # moved out of the images folder; empty_trash finishes it
    assert job.empty_trash(real) == 1
