"""release_images: what ImageCleanup does with a manifest (real folders, the prod backend's cleanup)."""

from __future__ import annotations

from pathlib import Path

from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.executors.claims import ImageClaims, make_claim_token
from flip_nvflare.executors.cleanup import release_images
from flip_nvflare.executors.manifest import CohortManifest, ImageEntry, Origin, Status


def _folder(net: Path, accession: str) -> Path:
    (net / accession / "scans").mkdir(parents=True)
    (net / accession / "scans" / "img.nii").write_bytes(b"x")
    return net / accession


def test_release_images_deletes_only_this_jobs_unshared_downloads(tmp_path: Path) -> None:
    net = tmp_path / "images" / "net-1"
    net.mkdir(parents=True)
    ours = ImageClaims(net, make_claim_token("job-a", "site-1"))
    theirs = ImageClaims(net, make_claim_token("job-b", "site-1"))
    for accession in ("ACC1", "ACC2", "ACC4"):
        ours.claim(accession)
    theirs.claim("ACC2")
    for accession in ("ACC1", "ACC2", "ACC3"):
        _folder(net, accession)
    unrelated = _folder(net, "OTHER")
    manifest = CohortManifest(
        job_id="job-a",
        site="site-1",
        mode="prod",
        resource_types=["NIFTI"],
        accession_column="accession_id",
        rows=4,
        claim_token=ours.token,
        claims_root=str(net),
        images={
            "ACC1": ImageEntry(Status.READY, str(net / "ACC1"), Origin.DOWNLOADED, claimed=True, deletable=True),
            "ACC2": ImageEntry(Status.READY, str(net / "ACC2"), Origin.SHARED, claimed=True, deletable=True),
            "ACC3": ImageEntry(Status.READY, str(net / "ACC3"), Origin.PREEXISTING),
            "ACC4": ImageEntry(Status.MISSING, reason="not found", origin=Origin.DOWNLOADED, claimed=True),
        },
    )
    # the manifest's claims folder must be this backend's IMAGES_DIR/NET_ID (no request is made)
    backend = FLIPStandardProd(
        imaging_api_url="http://127.0.0.1:9", trust_key="k", net_id="net-1", images_dir=net.parent, env={}
    )
    manifest_dir = tmp_path / "run" / "flip_cohort"

    summary = release_images(manifest, backend, manifest_dir)

    assert (summary.deleted, summary.kept_shared, summary.kept, summary.absent, summary.failed) == (1, 1, 1, 1, 0)
    assert not (net / "ACC1").exists()
    assert (net / "ACC2" / "scans" / "img.nii").exists() and theirs.holders("ACC2") == [theirs.token]
    assert (net / "ACC3" / "scans" / "img.nii").exists()
    assert (unrelated / "scans" / "img.nii").exists()
    saved = CohortManifest.load(manifest_dir)
    assert saved.images and all(entry.released for entry in saved.images.values())

    again = release_images(saved, backend, manifest_dir)
    assert (again.deleted, again.kept_shared, again.kept, again.absent) == (0, 0, 0, 0)


def test_dev_folders_are_never_deleted(tmp_path: Path) -> None:
    images = tmp_path / "dev_images"
    folder = _folder(images, "ACC1")
    manifest = CohortManifest(
        job_id="job-a",
        site="site-1",
        mode="dev",
        resource_types=["NIFTI"],
        accession_column="accession_id",
        rows=1,
        images={"ACC1": ImageEntry(Status.READY, str(folder), Origin.DEV)},
    )
    summary = release_images(manifest, FLIPStandardProd(cleanable_dirs=[images], env={}), tmp_path / "m")
    assert summary.kept == 1 and summary.deleted == 0
    assert (folder / "scans" / "img.nii").exists()
