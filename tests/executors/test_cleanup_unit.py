"""ImageCleanup on a mock client engine: after a dev preparation, and with a prod manifest of claimed downloads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from flip_nvflare.backend import FlipBackend
from flip_nvflare.constants import FlipHeaders
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.executors.claims import ImageClaims, make_claim_token
from flip_nvflare.executors.cleanup import CLEANUP_RECORD, ImageCleanup
from flip_nvflare.executors.cohort import CohortPreparer
from flip_nvflare.executors.manifest import (
    COHORT_FILE,
    MANIFEST_FILE,
    CohortManifest,
    ImageEntry,
    Origin,
    Status,
    prepared_dir,
)
from tests.engine import FakeEngine, FixedBackend


def prepared_dev_trust(tmp_path: Path) -> FakeEngine:
    """A client engine (dev backend) whose job prepared ACC001 and ACC002; ACC003 has no images."""
    csv = tmp_path / "cohort.csv"
    pd.DataFrame({"accession_id": ["ACC001", "ACC002", "ACC003"]}).to_csv(csv, index=False)
    for accession in ("ACC001", "ACC002"):
        (tmp_path / "images" / accession).mkdir(parents=True)
        (tmp_path / "images" / accession / "scan.nii.gz").write_bytes(b"nifti")
    flip = FlipBackend(mode="dev", dev_dataframe=str(csv), dev_images_dir=str(tmp_path / "images"))
    engine = FakeEngine(tmp_path, server=False, components={"flip": flip})
    preparer = CohortPreparer(project_id="p", query="q", max_missing_fraction=0.5, retry_delay=0)
    reply = preparer.execute("init_training", Shareable(), engine.new_context(), Signal())
    assert reply.get_return_code() == ReturnCode.OK
    return engine


def clean(engine: FakeEngine, executor: ImageCleanup | None = None) -> Shareable:
    reply = (executor or ImageCleanup()).execute("post_validation", Shareable(), engine.new_context(), Signal())
    assert reply.get_return_code() == ReturnCode.OK  # cleanup never fails the job
    return reply


def test_after_a_dev_preparation_the_developers_images_stay_and_the_cohort_files_go(tmp_path: Path) -> None:
    engine = prepared_dev_trust(tmp_path)

    counts = clean(engine).get_header(FlipHeaders.CLEANUP_SUMMARY)

    assert counts == {"deleted": 0, "kept_shared": 0, "kept": 2, "absent": 1, "failed": 0, "cohort_files_deleted": True}
    assert (tmp_path / "images" / "ACC001" / "scan.nii.gz").exists()
    folder = prepared_dir(engine.run_dir)
    assert not (folder / MANIFEST_FILE).exists() and not (folder / COHORT_FILE).exists()
    record_text = (folder / CLEANUP_RECORD).read_text()
    record = json.loads(record_text)
    assert (record["mode"], record["rows"], record["accessions"]) == ("dev", 3, 3)
    assert record["cleanup"] == {"deleted": 0, "kept_shared": 0, "kept": 2, "absent": 1, "failed": 0}
    assert "ACC00" not in record_text  # counts only, no patient identifiers

    assert clean(engine).get_header(FlipHeaders.CLEANUP_SUMMARY) == {}  # nothing left to clean


def test_cohort_files_can_be_kept_and_a_second_cleanup_does_nothing_more(tmp_path: Path) -> None:
    engine = prepared_dev_trust(tmp_path)
    executor = ImageCleanup(delete_cohort_files=False)

    first = clean(engine, executor).get_header(FlipHeaders.CLEANUP_SUMMARY)
    second = clean(engine, executor).get_header(FlipHeaders.CLEANUP_SUMMARY)

    assert (first["kept"], first["absent"], first["cohort_files_deleted"]) == (2, 1, False)
    assert second == {
        "deleted": 0,
        "kept_shared": 0,
        "kept": 0,
        "absent": 0,
        "failed": 0,
        "cohort_files_deleted": False,
    }
    manifest = CohortManifest.load(prepared_dir(engine.run_dir))
    assert manifest.images and all(entry.released for entry in manifest.images.values())
    assert (prepared_dir(engine.run_dir) / COHORT_FILE).exists()


def test_a_job_that_prepared_nothing_has_nothing_to_clean(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path, server=False)  # no backend needed either

    assert clean(engine).get_header(FlipHeaders.CLEANUP_SUMMARY) == {}
    assert not prepared_dir(engine.run_dir).exists()


def test_a_damaged_manifest_is_logged_and_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = FakeEngine(tmp_path, server=False)
    folder = prepared_dir(engine.run_dir)
    folder.mkdir(parents=True)
    (folder / MANIFEST_FILE).write_text("{not json")

    with caplog.at_level(logging.ERROR):
        assert clean(engine).get_header(FlipHeaders.CLEANUP_SUMMARY) == {}

    assert any("manifest" in r.getMessage() and "is damaged" in r.getMessage() for r in caplog.records)
    assert (folder / MANIFEST_FILE).read_text() == "{not json"


def test_a_cleanup_that_cannot_get_the_backend_is_reported_locally_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = prepared_dev_trust(tmp_path)
    engine.components.clear()  # the FlipBackend is gone: unreleased claims cannot be released

    with caplog.at_level(logging.ERROR):
        reply = clean(engine)
        ImageCleanup().handle_event(EventType.END_RUN, engine.new_context())

    assert reply.get_header(FlipHeaders.CLEANUP_SUMMARY) == {"failed": -1}
    assert reply.get_header(FlipHeaders.EXCEPTION) is None
    messages = [r.getMessage() for r in caplog.records]
    assert any("Image cleanup failed:" in m for m in messages)
    assert any("Image cleanup at END_RUN failed" in m for m in messages)
    assert (prepared_dir(engine.run_dir) / MANIFEST_FILE).exists()  # kept for a later attempt


@pytest.mark.parametrize("at_end_run", [True, False])
def test_end_run_cleans_what_the_post_task_did_not(tmp_path: Path, at_end_run: bool) -> None:
    engine = prepared_dev_trust(tmp_path)

    ImageCleanup(cleanup_at_end_run=at_end_run).handle_event(EventType.END_RUN, engine.new_context())

    assert (prepared_dir(engine.run_dir) / MANIFEST_FILE).exists() is not at_end_run
    assert (prepared_dir(engine.run_dir) / CLEANUP_RECORD).exists() is at_end_run


def test_prod_downloads_claimed_by_this_job_only_are_deleted(tmp_path: Path) -> None:
    net = tmp_path / "images" / "net-1"
    net.mkdir(parents=True)
    backend = FLIPStandardProd(  # its IMAGES_DIR/NET_ID is the manifest's claims folder; no request is made
        imaging_api_url="http://127.0.0.1:9", trust_key="k", net_id="net-1", images_dir=net.parent, env={}
    )
    engine = FakeEngine(tmp_path, server=False, components={"flip": FixedBackend(backend)})
    ours = ImageClaims(net, make_claim_token(engine.job_id, "site-1"))
    other_job = ImageClaims(net, make_claim_token("another-job", "site-1"))
    for accession in ("ACC1", "ACC2"):
        assert ours.claim(accession) in (Origin.DOWNLOADED, Origin.SHARED)
        (net / accession).mkdir()
        (net / accession / "scan.dcm").write_bytes(b"dicom")
    other_job.claim("ACC2")
    manifest = CohortManifest(
        job_id=engine.job_id,
        site="site-1",
        mode="prod",
        resource_types=["DICOM"],
        accession_column="accession_id",
        rows=2,
        claim_token=ours.token,
        claims_root=str(net),
        images={
            "ACC1": ImageEntry(Status.READY, str(net / "ACC1"), Origin.DOWNLOADED, claimed=True, deletable=True),
            "ACC2": ImageEntry(Status.READY, str(net / "ACC2"), Origin.SHARED, claimed=True, deletable=True),
        },
    )
    manifest.save(prepared_dir(engine.run_dir))

    counts = clean(engine).get_header(FlipHeaders.CLEANUP_SUMMARY)

    assert (counts["deleted"], counts["kept_shared"], counts["failed"]) == (1, 1, 0)
    assert not (net / "ACC1").exists()
    assert (net / "ACC2" / "scan.dcm").exists() and other_job.holders("ACC2") == [other_job.token]
