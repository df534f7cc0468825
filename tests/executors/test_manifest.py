from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from flip_nvflare.executors.manifest import (
    COHORT_FILE,
    CohortManifest,
    ImageEntry,
    Origin,
    PreparedCohort,
    PreparedCohortError,
    Status,
    cohort_identifiers,
    prepared_dir,
)


def _prepare(run_dir: Path) -> CohortManifest:
    folder = prepared_dir(run_dir)
    folder.mkdir(parents=True)
    frame = pd.DataFrame(
        {
            "accession_id": ["00123", "ACC2", "ACC3", None],
            "age": pd.array([40, None, 60, 70], dtype="Int64"),
            "when": pd.to_datetime(["2020-01-01", "2021-02-03", "2022-03-04", "2023-04-05"]),
        }
    )
    frame.to_pickle(folder / COHORT_FILE)
    manifest = CohortManifest(
        job_id="job-1",
        site="site-1",
        mode="prod",
        resource_types=["NIFTI"],
        accession_column="accession_id",
        rows=4,
        images={
            "00123": ImageEntry(Status.READY, "/images/net-1/00123", Origin.DOWNLOADED, claimed=True, deletable=True),
            "ACC2": ImageEntry(Status.READY, "/images/net-1/ACC2", Origin.PREEXISTING),
            "ACC3": ImageEntry(Status.MISSING, reason="not found at the imaging service (HTTP 404)", claimed=True),
        },
        claim_token="tok",
        claims_root="/images/net-1",
        summary={"ready": 2, "missing": 1},
    )
    manifest.save(folder)
    return manifest


def test_manifest_round_trip(tmp_path: Path) -> None:
    written = _prepare(tmp_path)
    loaded = CohortManifest.load(prepared_dir(tmp_path))
    assert loaded == written
    assert json.loads((prepared_dir(tmp_path) / "manifest.json").read_text())["version"] == 1


def test_prepared_cohort_view(tmp_path: Path) -> None:
    _prepare(tmp_path)
    cohort = PreparedCohort.open(tmp_path)
    assert cohort.dataframe["accession_id"].iloc[0] == "00123"  # a string id stays a string
    assert str(cohort.dataframe["age"].dtype) == "Int64"
    assert cohort.folders == {"00123": Path("/images/net-1/00123"), "ACC2": Path("/images/net-1/ACC2")}
    assert cohort.missing == {"ACC3": "not found at the imaging service (HTTP 404)"}
    assert cohort.folder_of("ACC2") == Path("/images/net-1/ACC2")
    assert len(cohort) == 2 and dict(iter(cohort)) == cohort.folders
    ready = cohort.ready_dataframe()
    assert list(ready["accession_id"]) == ["00123", "ACC2"]
    assert list(ready["image_folder"]) == ["/images/net-1/00123", "/images/net-1/ACC2"]
    assert "rows=4" in repr(cohort) and "00123" not in repr(cohort)


def test_folder_of_explains_without_naming_the_accession(tmp_path: Path) -> None:
    _prepare(tmp_path)
    cohort = PreparedCohort.open(tmp_path)
    with pytest.raises(KeyError, match="HTTP 404") as missing:
        cohort.folder_of("ACC3")
    assert "ACC3" not in str(missing.value)
    with pytest.raises(KeyError, match="not part of the prepared cohort"):
        cohort.folder_of("ACC9")


def test_nothing_prepared_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PreparedCohortError, match="CohortPreparer"):
        PreparedCohort.open(tmp_path)


def test_damaged_manifest_and_deleted_dataframe(tmp_path: Path) -> None:
    _prepare(tmp_path)
    (prepared_dir(tmp_path) / COHORT_FILE).unlink()
    with pytest.raises(PreparedCohortError, match="ImageCleanup"):
        _ = PreparedCohort.open(tmp_path).dataframe
    (prepared_dir(tmp_path) / "manifest.json").write_text("{not json")
    with pytest.raises(PreparedCohortError, match="damaged"):
        PreparedCohort.open(tmp_path)


def test_identifiers_to_redact_come_from_manifest_and_dataframe(tmp_path: Path) -> None:
    _prepare(tmp_path)
    assert set(cohort_identifiers(tmp_path)) == {"00123", "ACC2", "ACC3"}
    assert set(cohort_identifiers(tmp_path, ["age", "no_such_column"])) == {"00123", "ACC2", "ACC3", "40", "60", "70"}
    assert cohort_identifiers(tmp_path / "elsewhere") == []
