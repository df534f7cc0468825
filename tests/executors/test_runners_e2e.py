"""A FLIP-style job in dev mode, run in NVFlare's simulator (2 clients, 2 rounds).

site-1 trains normally; site-2's trainer raises in round 2 with an accession id, a data path and
the query in its message. One run checks the runner (backend, prepared cohort, helpers), the
sanitized exception header, the end of the run, and that dev data survives cleanup.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.executors.simjob import FLIP_STYLE_TRAINER, SimJob, standard_executors

pytestmark = pytest.mark.e2e

ACCESSIONS = [f"ACC{i:06d}" for i in range(1, 7)]

FAILING_ON_SITE_2 = (
    FLIP_STYLE_TRAINER
    + """

_real_execute = FLIP_TRAINER.execute


def read_volume(path, query):
    raise FileNotFoundError(f"cannot read {path} selected by {query!r}")


def _execute(self, task_name, shareable, fl_ctx, abort_signal):
    self.calls = getattr(self, "calls", 0) + 1
    if fl_ctx.get_identity_name() == "site-2" and self.calls == 2:
        accession, folder = sorted(prepared_cohort(fl_ctx).folders.items())[0]
        read_volume(folder / f"{accession}_t1.nii.gz", self.query)
    return _real_execute(self, task_name, shareable, fl_ctx, abort_signal)


FLIP_TRAINER.execute = _execute
"""
)


@pytest.fixture(scope="module")
def dev_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimJob, int, Path]:
    root = tmp_path_factory.mktemp("dev_run")
    images = root / "dev_images"
    for accession in ACCESSIONS[:5]:  # the 6th has no folder: recorded as missing, below the 20% limit
        (images / accession).mkdir(parents=True)
        (images / accession / "image.nii").write_bytes(b"\0" * 64)
    (images / "OTHER_PROJECT").mkdir()
    (images / "OTHER_PROJECT" / "keep.txt").write_text("not this job's")
    csv = root / "cohort.csv"
    csv.write_text("accession_id,age\n" + "".join(f"{a},{40 + i}\n" for i, a in enumerate(ACCESSIONS)))
    job = SimJob(
        root=root,
        mode="dev",
        client_executors=standard_executors(concurrency=2),
        custom_files={"trainer.py": FAILING_ON_SITE_2},
        flip_args={"dev_dataframe": str(csv), "dev_images_dir": str(images), "dev_output_dir": str(root / "out")},
    )
    rc = job.run()
    return job, rc, images


def _evidence(job: SimJob, site: str) -> list[dict[str, object]]:
    path = job.run_dir(site) / "trainer_evidence.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_preparation_ran_before_training(dev_run: tuple[SimJob, int, Path]) -> None:
    job, _, _ = dev_run
    prepared = job.results("init_training")
    assert {r["client"] for r in prepared} == {"site-1", "site-2"}
    for result in prepared:
        assert result["rc"] == "OK"
        summary = result["headers"]["flip_preparation"]
        assert (summary["accessions"], summary["ready"], summary["missing"], summary["mode"]) == (6, 5, 1, "dev")
    assert len(job.events("_flip_training_initiated")) == 1
    done = job.events("_flip_preparation_done")
    assert len(done) == 1 and set(done[0]["props"]["flip.preparation.summary"]) == {"site-1", "site-2"}


def test_flip_style_trainer_gets_the_backend_and_the_prepared_cohort(dev_run: tuple[SimJob, int, Path]) -> None:
    job, _, _ = dev_run
    evidence = _evidence(job, "site-1")
    assert evidence, "site-1's trainer never ran"
    first = evidence[0]
    assert first["backend"] == "FLIPStandardDev"
    assert first["flip_arg_is_backend"] is True  # FLIP() and the 'flip' argument are the same backend
    assert first["project_id"] == "encrypted-project-envelope-0001"
    assert (first["rows_at_init"], first["rows"], first["ready"], first["missing"]) == (6, 6, 5, 1)
    assert first["ready_rows"] == 5 and first["files"] == 5


def test_failure_reply_carries_a_sanitized_traceback(dev_run: tuple[SimJob, int, Path]) -> None:
    job, _, images = dev_run
    failed = [r for r in job.results("train") if r["rc"] == "EXECUTION_EXCEPTION"]
    assert [r["client"] for r in failed] == ["site-2"]
    header = failed[0]["exception"]
    assert header, "the failure reply has no exception header"
    assert not re.search(r"ACC\d{6}", header)
    assert str(images) not in header and "dev_images" not in header
    assert "omop.person" not in header and "year_of_birth" not in header
    assert "FileNotFoundError: cannot read [path] selected by '[query]'" in header
    assert 'File "flip_nvflare/executors/runners.py"' in header
    assert re.search(r'File "custom/trainer.py", line \d+, in read_volume', header)
    assert len(header) <= 8000
    # The full traceback stays in site-2's own log.
    assert re.search(r"ACC\d{6}_t1\.nii\.gz", job.log("site-2"))


def test_run_ends_and_cleanup_keeps_dev_data(dev_run: tuple[SimJob, int, Path]) -> None:
    job, rc, images = dev_run
    assert rc in (0, 2)  # ScatterAndGather stops the run on the failed round; the simulator returns
    assert any(r["kind"] == "panic" for r in job.records())
    assert sorted(p.name for p in images.iterdir()) == [*ACCESSIONS[:5], "OTHER_PROJECT"]
    assert all((images / a / "image.nii").stat().st_size == 64 for a in ACCESSIONS[:5])
    assert (images / "OTHER_PROJECT" / "keep.txt").read_text() == "not this job's"
    for site in ("site-1", "site-2"):
        # ImageCleanup ran at END_RUN (no post task after the failure): cohort files are gone.
        prepared = job.run_dir(site) / "flip_cohort"
        assert not (prepared / "cohort.pkl").exists()
        assert json.loads((prepared / "cleanup.json").read_text())["accessions"] == 6
