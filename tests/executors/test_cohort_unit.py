"""CohortPreparer on a mock client engine with the dev backend (a CSV and image folders in a temporary folder)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from flip_nvflare.backend import FlipBackend
from flip_nvflare.client import prepared_cohort
from flip_nvflare.constants import FlipHeaders
from flip_nvflare.errors import FlipConfigError, FlipError, FlipKeyError
from flip_nvflare.executors.cohort import CohortPreparer
from flip_nvflare.executors.manifest import COHORT_FILE, MANIFEST_FILE, CohortManifest, Origin, Status, prepared_dir
from tests.engine import FakeEngine

PROJECT_ID = "enc-project-7f3a"
QUERY = "SELECT accession_id, age FROM cohort WHERE site = 'north'"


def dev_trust(tmp_path: Path, rows: list[dict[str, Any]], with_images: list[str]) -> FakeEngine:
    """A client engine whose FlipBackend is in dev mode over ``rows`` (a CSV) and image folders."""
    csv = tmp_path / "cohort.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    images = tmp_path / "images"
    for accession in with_images:
        (images / accession).mkdir(parents=True)
        (images / accession / "scan.nii.gz").write_bytes(b"nifti")
    images.mkdir(exist_ok=True)
    flip = FlipBackend(
        mode="dev", dev_dataframe=str(csv), dev_images_dir=str(images), dev_output_dir=str(tmp_path / "ledger")
    )
    return FakeEngine(tmp_path, server=False, identity="site-1", components={"flip": flip})


def preparer(**kwargs: Any) -> CohortPreparer:
    return CohortPreparer(**{"project_id": PROJECT_ID, "query": QUERY, "retry_delay": 0, **kwargs})


def run(engine: FakeEngine, executor: CohortPreparer, abort_signal: Signal | None = None) -> Shareable:
    return executor.execute("init_training", Shareable(), engine.new_context(), abort_signal or Signal())


def failure_text(reply: Shareable) -> str:
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    text = reply.get_header(FlipHeaders.EXCEPTION)
    assert isinstance(text, str) and text
    return text


ROWS = [
    {"accession_id": "ACC001", "age": 61},
    {"accession_id": "ACC002", "age": 48},
    {"accession_id": "ACC003", "age": 70},
    {"accession_id": "ACC001", "age": 61},  # a second row of the same accession
    {"accession_id": None, "age": 55},  # a row without images
]


def test_the_cohort_is_prepared_and_readable_by_user_code(tmp_path: Path) -> None:
    engine = dev_trust(tmp_path, ROWS, with_images=["ACC001", "ACC002", "ACC003"])

    reply = run(engine, preparer())

    assert reply.get_return_code() == ReturnCode.OK
    summary = reply.get_header(FlipHeaders.PREPARATION_SUMMARY)
    assert {k: summary[k] for k in ("rows", "accessions", "ready", "missing", "mode", "stopped")} == {
        "rows": 5,
        "accessions": 3,
        "ready": 3,
        "missing": 0,
        "mode": "dev",
        "stopped": False,
    }
    cohort = prepared_cohort(engine.new_context())
    assert cohort.folders == {a: tmp_path / "images" / a for a in ("ACC001", "ACC002", "ACC003")}
    assert cohort.missing == {}
    assert list(cohort.dataframe["age"]) == [61, 48, 70, 61, 55]
    manifest = CohortManifest.load(prepared_dir(engine.run_dir))
    assert (manifest.site, manifest.job_id, manifest.resource_types) == ("site-1", engine.job_id, ["NIFTI"])
    assert sorted(manifest.images) == ["ACC001", "ACC002", "ACC003"]
    assert all(e.origin == Origin.DEV and not e.claimed and not e.deletable for e in manifest.images.values())
    assert manifest.summary == summary


def test_a_few_missing_images_are_recorded_with_the_reason(tmp_path: Path) -> None:
    engine = dev_trust(tmp_path, ROWS, with_images=["ACC001", "ACC003"])

    reply = run(engine, preparer(max_missing_fraction=0.5, concurrency=1))

    assert reply.get_return_code() == ReturnCode.OK
    summary = reply.get_header(FlipHeaders.PREPARATION_SUMMARY)
    assert (summary["ready"], summary["missing"]) == (2, 1)
    assert summary["reasons"] == {"no image folder for this accession in the dev images folder": 1}
    cohort = prepared_cohort(engine.new_context())
    assert cohort.missing == {"ACC002": "no image folder for this accession in the dev images folder"}
    with pytest.raises(FlipKeyError, match="This accession's images are missing: no image folder"):
        cohort.folder_of("ACC002")
    assert list(cohort.ready_dataframe()["accession_id"]) == ["ACC001", "ACC003", "ACC001"]


def test_too_many_missing_images_fail_without_naming_any_accession(tmp_path: Path) -> None:
    engine = dev_trust(tmp_path, ROWS, with_images=["ACC003"])

    text = failure_text(run(engine, preparer()))

    assert "2 of 3 accessions have no images, more than the allowed 20% (max_missing_fraction)" in text
    assert "2 no image folder for this accession in the dev images folder" in text
    assert not any(accession in text for accession in ("ACC001", "ACC002", "ACC003"))
    manifest = CohortManifest.load(prepared_dir(engine.run_dir))  # kept, so cleanup still knows what was fetched
    assert sorted(k for k, e in manifest.images.items() if e.status == Status.MISSING) == ["ACC001", "ACC002"]


def test_an_empty_cohort_fails_unless_allowed(tmp_path: Path) -> None:
    engine = dev_trust(tmp_path, [], with_images=[])
    (tmp_path / "cohort.csv").write_text("accession_id,age\n")  # the header only

    text = failure_text(run(engine, preparer()))
    assert text.startswith("The cohort is empty: the query returned no rows at this trust.")

    reply = run(engine, preparer(allow_empty_cohort=True))
    assert reply.get_return_code() == ReturnCode.OK
    assert reply.get_header(FlipHeaders.PREPARATION_SUMMARY)["rows"] == 0


def test_a_cohort_without_the_accession_column_says_how_to_fix_it(tmp_path: Path) -> None:
    engine = dev_trust(tmp_path, ROWS, with_images=[])

    text = failure_text(run(engine, preparer(accession_column="study_uid")))

    assert "The cohort has no 'study_uid' column" in text
    assert "(columns: accession_id, age)" in text


def test_only_the_dataframe_when_images_are_not_wanted(tmp_path: Path) -> None:
    engine = dev_trust(tmp_path, ROWS, with_images=[])

    reply = run(engine, preparer(download_images=False, resource_types=["SEG", "NIFTI"]))

    assert reply.get_return_code() == ReturnCode.OK
    assert reply.get_header(FlipHeaders.PREPARATION_SUMMARY)["accessions"] == 0
    folder = prepared_dir(engine.run_dir)
    assert (folder / COHORT_FILE).is_file() and (folder / MANIFEST_FILE).is_file()
    assert CohortManifest.load(folder).resource_types == ["SEG", "NIFTI"]


def test_a_missing_project_id_is_named_at_start_run_and_in_the_reply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = dev_trust(tmp_path, ROWS, with_images=[])
    executor = CohortPreparer(project_id="{project_id}", query=QUERY)

    with caplog.at_level(logging.ERROR):
        executor.handle_event(EventType.START_RUN, engine.new_context())
    text = failure_text(run(engine, executor))

    assert any("CohortPreparer needs 'project_id'" in r.getMessage() for r in caplog.records)
    assert "CohortPreparer needs 'project_id': add the top-level key 'project_id'" in text
    assert not prepared_dir(engine.run_dir).exists()


def test_an_unexpected_error_is_reported_with_its_type_and_no_secrets(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path, server=False)  # no FlipBackend component

    text = failure_text(run(engine, preparer()))

    assert text.startswith("CohortPreparer could not prepare the cohort: FlipConfigError:")
    assert "no component with id 'flip'" in text
    assert PROJECT_ID not in text and QUERY not in text


def test_a_stopped_run_answers_task_aborted(tmp_path: Path) -> None:
    engine = dev_trust(tmp_path, ROWS, with_images=["ACC001", "ACC002", "ACC003"])
    stopped = Signal()
    stopped.trigger("the run is ending")

    reply = run(engine, preparer(), abort_signal=stopped)

    assert reply.get_return_code() == ReturnCode.TASK_ABORTED
    manifest = CohortManifest.load(prepared_dir(engine.run_dir))
    assert manifest.summary["stopped"] is True
    assert {e.reason for e in manifest.images.values()} == {"not attempted: preparation was stopped"}


def test_preparing_again_releases_the_earlier_attempt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = dev_trust(tmp_path, ROWS, with_images=["ACC001", "ACC002", "ACC003"])
    assert run(engine, preparer()).get_return_code() == ReturnCode.OK

    with caplog.at_level(logging.INFO):
        reply = run(engine, preparer())

    assert reply.get_return_code() == ReturnCode.OK
    assert any(
        "Released an earlier preparation of this job: 0 folder(s) deleted" in r.getMessage() for r in caplog.records
    )
    assert all((tmp_path / "images" / a).is_dir() for a in ("ACC001", "ACC002", "ACC003"))  # dev data is kept
    manifest = CohortManifest.load(prepared_dir(engine.run_dir))
    assert len(manifest.images) == 3 and not any(e.released for e in manifest.images.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency must be an integer >= 1"),
        ({"concurrency": True}, "concurrency must be an integer >= 1"),
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retry_delay": -1}, "retry_delay must be a number of seconds >= 0"),
        ({"max_missing_fraction": 1.5}, "max_missing_fraction must be between 0 and 1"),
        ({"accession_column": ""}, "accession_column must name a dataframe column"),
        ({"progress_interval": 0}, "progress_interval must be > 0"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(FlipConfigError, match=message):
        CohortPreparer(**kwargs)


def test_an_unknown_resource_type_is_refused() -> None:
    with pytest.raises(FlipError, match="Unknown resource type 'PNG'; use one of DICOM, NIFTI, SEG, ALL"):
        CohortPreparer(resource_types=["NIFTI", "PNG"])


def test_an_empty_project_id_is_named_as_empty_not_missing() -> None:
    from flip_nvflare.errors import FlipConfigError
    from flip_nvflare.executors.context import config_text

    with pytest.raises(FlipConfigError, match="top-level 'project_id' is empty"):
        config_text("project_id", "  ", "CohortPreparer")
    with pytest.raises(FlipConfigError, match="add the top-level key 'project_id'"):
        config_text("project_id", None, "CohortPreparer")
