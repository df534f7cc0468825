"""Cleanup never deletes through a symlink, and never acts on a manifest that points outside this trust's net.

Real folders and the prod backend's ``cleanup`` (which may delete only inside ``IMAGES_DIR/NET_ID``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from nvflare.apis.fl_context import FLContext

import flip_nvflare.executors.cleanup as cleanup_module
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.errors import PreparedCohortError
from flip_nvflare.executors.claims import CLAIMS_DIR, TRASH_DIR, ImageClaims, ReleaseOutcome, make_claim_token
from flip_nvflare.executors.cleanup import ImageCleanup, release_images
from flip_nvflare.executors.manifest import CohortManifest, ImageEntry, Origin, Status, prepared_dir

NET_ID = "net-1"


def _folder(path: Path) -> Path:
    (path / "scans").mkdir(parents=True)
    (path / "scans" / "img.nii").write_bytes(b"voxels")
    return path


def _backend(images: Path | None) -> FLIPStandardProd:
    """A prod backend whose IMAGES_DIR/NET_ID is ``images/net-1`` (no request is ever made)."""
    return FLIPStandardProd(
        imaging_api_url="http://127.0.0.1:9",
        trust_key="trust-key-for-tests",
        net_id=NET_ID,
        images_dir=images,
        env={},
    )


def _manifest(claims_root: Path, token: str, *accessions: str) -> CohortManifest:
    return CohortManifest(
        job_id="job-a",
        site="site-1",
        mode="prod",
        resource_types=["NIFTI"],
        accession_column="accession_id",
        rows=len(accessions),
        claim_token=token,
        claims_root=str(claims_root),
        images={
            accession: ImageEntry(
                Status.READY, str(claims_root / accession), Origin.DOWNLOADED, claimed=True, deletable=True
            )
            for accession in accessions
        },
    )


@pytest.fixture
def images(tmp_path: Path) -> Path:
    (tmp_path / "images" / NET_ID).mkdir(parents=True)
    return tmp_path / "images"


# ------------------------------------------------------------------ a claimed folder that is a symlink


@pytest.mark.parametrize("points_to", ["another_accession", "outside", "the_net_folder", "another_net"])
def test_a_claimed_folder_that_is_a_symlink_is_unlinked_and_its_target_untouched(
    images: Path, tmp_path: Path, points_to: str
) -> None:
    net = images / NET_ID
    target = {
        "another_accession": net / "ACC2",
        "outside": tmp_path / "elsewhere" / "ACC1",
        "the_net_folder": net,
        "another_net": images / "net-2" / "ACC1",
    }[points_to]
    if points_to != "the_net_folder":
        _folder(target)
    kept = _folder(net / "ACC3")  # what a link to the net folder would take with it
    claims = ImageClaims(net, make_claim_token("job-a", "site-1"))
    assert claims.claim("ACC1") == Origin.DOWNLOADED
    (net / "ACC1").symlink_to(target, target_is_directory=True)
    backend = _backend(images)

    assert claims.release("ACC1", delete_folder=True, remove=backend.cleanup) == ReleaseOutcome.DELETED

    assert not (net / "ACC1").is_symlink() and not (net / "ACC1").exists()
    assert target.is_dir() and (kept / "scans" / "img.nii").exists()
    if points_to != "the_net_folder":
        assert (target / "scans" / "img.nii").read_bytes() == b"voxels"
    assert list((net / CLAIMS_DIR / TRASH_DIR).iterdir()) == []


def test_release_images_unlinks_a_symlinked_accession_and_counts_it_deleted(images: Path, tmp_path: Path) -> None:
    net = images / NET_ID
    outside = _folder(tmp_path / "elsewhere" / "ACC1")
    claims = ImageClaims(net, make_claim_token("job-a", "site-1"))
    claims.claim("ACC1")
    claims.claim("ACC2")
    (net / "ACC1").symlink_to(outside, target_is_directory=True)
    _folder(net / "ACC2")
    manifest = _manifest(net, claims.token, "ACC1", "ACC2")

    summary = release_images(manifest, _backend(images), tmp_path / "run" / "flip_cohort")

    assert (summary.deleted, summary.failed) == (2, 0)
    assert not (net / "ACC1").is_symlink() and not (net / "ACC2").exists()
    assert (outside / "scans" / "img.nii").read_bytes() == b"voxels"


def test_a_trash_folder_that_is_a_symlink_is_never_renamed_into(images: Path, tmp_path: Path) -> None:
    net = images / NET_ID
    claims = ImageClaims(net, make_claim_token("job-a", "site-1"))
    claims.claim("ACC1")
    folder = _folder(net / "ACC1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (net / CLAIMS_DIR / TRASH_DIR).symlink_to(elsewhere, target_is_directory=True)

    summary = release_images(_manifest(net, claims.token, "ACC1"), _backend(images), tmp_path / "m")

    assert (summary.deleted, summary.failed) == (0, 1)
    assert (folder / "scans" / "img.nii").exists() and list(elsewhere.iterdir()) == []


# ------------------------------------------------------------------ a manifest that points elsewhere


def _crafted(images: Path, tmp_path: Path, where: str) -> tuple[Path, str, ImageClaims]:
    """This job's claim on a downloaded folder outside ``images/net-1``: the claims root, the accession, the claims."""
    root, accession = {
        "images_dir": (images, "net-2"),  # the claims root one level up: a whole other net as "accession"
        "another_net": (images / "net-2", "ACC1"),
        "outside": (tmp_path / "elsewhere", "ACC1"),
        "inside_the_net": (images / NET_ID / "ACC9", "ACC1"),
        "dotdot_to_another_net": (images / NET_ID / ".." / "net-2", "ACC1"),
    }[where]
    claims = ImageClaims(root, make_claim_token("job-a", "site-1"))
    assert claims.claim(accession) == Origin.DOWNLOADED
    _folder(root.resolve() / accession)
    return root, accession, claims


@pytest.mark.parametrize("where", ["images_dir", "another_net", "outside", "inside_the_net", "dotdot_to_another_net"])
def test_a_manifest_whose_claims_root_is_not_this_trusts_net_is_refused_before_anything_moves(
    images: Path, tmp_path: Path, where: str
) -> None:
    root, accession, claims = _crafted(images, tmp_path, where)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    manifest = _manifest(root, claims.token, accession)

    with pytest.raises(PreparedCohortError) as err:
        release_images(manifest, _backend(images), tmp_path / "run" / "flip_cohort")

    assert "IMAGES_DIR/NET_ID" in str(err.value)
    assert str(root) not in str(err.value) and accession not in str(err.value)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert claims.holders(accession) == [claims.token]


def test_a_manifest_with_claims_is_refused_when_the_backend_has_no_net(images: Path, tmp_path: Path) -> None:
    net = images / NET_ID
    claims = ImageClaims(net, make_claim_token("job-a", "site-1"))
    claims.claim("ACC1")
    folder = _folder(net / "ACC1")

    with pytest.raises(PreparedCohortError):
        release_images(_manifest(net, claims.token, "ACC1"), _backend(None), tmp_path / "m")

    assert (folder / "scans" / "img.nii").exists() and claims.holders("ACC1") == [claims.token]


@pytest.mark.parametrize("accession", ["../net-2", "..", ".flip_nvflare_claims", "a/b"])
def test_an_unsafe_accession_in_the_manifest_is_never_renamed_or_deleted(
    images: Path, tmp_path: Path, accession: str
) -> None:
    net = images / NET_ID
    other_net = _folder(images / "net-2")
    _folder(net / "a" / "b")
    claims = ImageClaims(net, make_claim_token("job-a", "site-1"))
    marker_dir = net / CLAIMS_DIR / accession
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / claims.token).touch()
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if TRASH_DIR not in p.parts)

    summary = release_images(_manifest(net, claims.token, accession), _backend(images), tmp_path / "m")

    assert (summary.deleted, summary.failed) == (0, 1)
    assert (other_net / "scans" / "img.nii").exists() and (net / "a" / "b" / "scans" / "img.nii").exists()
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if TRASH_DIR not in p.parts)
    assert [p for p in before if p not in after] == []


def test_image_cleanup_logs_the_refusal_and_keeps_everything(
    images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, accession, claims = _crafted(images, tmp_path, "another_net")
    run_dir = tmp_path / "site" / "run"
    manifest = _manifest(root, claims.token, accession)
    manifest.save(prepared_dir(run_dir))
    backend = _backend(images)
    monkeypatch.setattr(cleanup_module, "job_run_dir", lambda fl_ctx: run_dir)
    monkeypatch.setattr(cleanup_module, "get_flip_backend", lambda fl_ctx, flip_id: backend)
    caplog.set_level(logging.INFO)

    summary = ImageCleanup().clean(FLContext())

    assert summary is not None and summary.deleted == 0 and summary.failed == 1
    assert not summary.cohort_files_deleted and (prepared_dir(run_dir) / "manifest.json").exists()
    assert (root / accession / "scans" / "img.nii").exists() and claims.holders(accession) == [claims.token]
    refusals = [r for r in caplog.records if "IMAGES_DIR/NET_ID" in r.getMessage()]
    assert refusals and refusals[0].levelno == logging.ERROR
    assert str(root) not in caplog.text and accession not in refusals[0].getMessage()
