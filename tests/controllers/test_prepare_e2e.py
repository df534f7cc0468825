"""InitTraining in a real simulator run where every client's preparation fails (dev mode, missing cohort CSV)."""

from __future__ import annotations

import pytest

from tests.executors.simjob import FLIP_STYLE_TRAINER, SimJob, standard_executors

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimJob, int]:
    root = tmp_path_factory.mktemp("prep_fail")
    images = root / "dev_images"
    images.mkdir()
    job = SimJob(
        root=root,
        mode="dev",
        client_executors=standard_executors(),
        custom_files={"trainer.py": FLIP_STYLE_TRAINER},
        # The cohort CSV does not exist: get_dataframe fails with a message naming its path.
        flip_args={
            "dev_dataframe": str(root / "restricted" / "ACC000001_cohort.csv"),
            "dev_images_dir": str(images),
            "dev_output_dir": str(root / "out"),
        },
    )
    return job, job.run()


def test_failed_preparation_stops_the_run_before_training(failed_run: tuple[SimJob, int]) -> None:
    job, rc = failed_run
    assert rc != 0
    assert job.results("train") == []
    assert len(job.events("_flip_training_initiated")) == 1
    assert job.events("_flip_preparation_done") == []
    failed = job.events("_flip_preparation_failed")
    assert failed, "PREPARATION_FAILED was not fired"
    assert failed[0]["props"]["flip.preparation.failed_client"] in ("site-1", "site-2")
    assert failed[0]["props"]["flip.preparation.failure"] == "EXECUTION_EXCEPTION"
    client = failed[0]["props"]["flip.preparation.failed_client"]
    assert failed[0]["data"] == f"Data preparation failed at {client}: EXECUTION_EXCEPTION"


def test_panic_names_the_client_but_not_the_error_text(failed_run: tuple[SimJob, int]) -> None:
    job, _ = failed_run
    reasons = [r["reason"] for r in job.records() if r["kind"] == "panic"]
    assert reasons
    assert "Data preparation failed at site-" in reasons[0]
    assert "ACC000001" not in reasons[0] and "restricted" not in reasons[0]


def test_preparer_reply_is_short_and_sanitized(failed_run: tuple[SimJob, int]) -> None:
    job, _ = failed_run
    results = job.results("init_training")
    assert results and all(r["rc"] == "EXECUTION_EXCEPTION" for r in results)
    header = results[0]["exception"]
    assert header.startswith("CohortPreparer could not prepare the cohort: FlipMissingData: Dev cohort CSV")
    assert "DEV_DATAFRAME" in header and "/" not in header.split("FlipMissingData", 1)[1]
    assert "ACC000001" not in header and "restricted" not in header
