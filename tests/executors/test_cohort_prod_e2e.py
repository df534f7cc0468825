"""The FLIP-style job in prod mode against the FLIP emulator, with a flaky imaging service.

Each simulated site gets its own half of the synthetic population (the query depends on
``{SITE_NAME}``), so the emulator's download records can be attributed to a site. 20% of image
requests fail with 503. Before the run, the net holds an unrelated folder, a folder of a cohort
accession that nobody claimed (pre-existing data), and a folder another running job has claimed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from flip_emulator.handle import EmulatorHandle, start_emulator
from flip_emulator.store import DownloadRecord
from flip_nvflare.executors.claims import CLAIMS_DIR
from tests.executors.simjob import FLIP_STYLE_TRAINER, SimJob, standard_executors

pytestmark = pytest.mark.e2e

CONCURRENCY = 4
QUERY = "SELECT person_id, accession_id FROM omop.image_occurrence WHERE ('site-' || (person_id % 2 + 1)) = '{site}'"
OTHER_JOB_MARKER = "other-job__site-1__0123456789ab"


class Run:
    def __init__(self, job: SimJob, rc: int, emulator: EmulatorHandle, cohorts: dict[str, list[str]]) -> None:
        self.job = job
        self.rc = rc
        self.net = emulator.images_dir / emulator.net_id
        self.cohorts = cohorts
        self.downloads: list[DownloadRecord] = emulator.downloads()
        self.download_requests = [r for r in emulator.requests("trust") if r.route == "trust.download"]

    @property
    def preexisting(self) -> str:
        return self.cohorts["site-1"][0]

    @property
    def shared(self) -> str:
        return self.cohorts["site-1"][1]


@pytest.fixture(scope="module")
def prod_run(tmp_path_factory: pytest.TempPathFactory, flip_emulator_synthetic: Path) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("prod_run")
    with (
        start_emulator(
            root / "emulator",
            s3=False,
            download_concurrency=0,  # the emulator serves every request at once: the client's limit is what shows
            download_latency=0.1,
            synthetic_dir=flip_emulator_synthetic,
        ) as emulator,
        pytest.MonkeyPatch.context() as env,
    ):
        for name, value in emulator.env().items():
            env.setenv(name, value)
        backend = emulator.prod_backend()
        cohorts = {
            site: sorted(backend.get_dataframe(emulator.encrypted_project_id, QUERY.format(site=site))["accession_id"])
            for site in ("site-1", "site-2")
        }
        net = emulator.images_dir / emulator.net_id
        (net / "OTHER_DATA").mkdir(parents=True)
        (net / "OTHER_DATA" / "keep.txt").write_text("unrelated")
        (net / cohorts["site-1"][0]).mkdir()
        (net / cohorts["site-1"][0] / "mine.txt").write_text("was here before")
        (net / cohorts["site-1"][1]).mkdir()
        (net / CLAIMS_DIR / cohorts["site-1"][1]).mkdir(parents=True)
        (net / CLAIMS_DIR / cohorts["site-1"][1] / OTHER_JOB_MARKER).touch()

        emulator.set_fault("trust.download", error_rate=0.2, seed=11)
        job = SimJob(
            root=root,
            mode="prod",
            client_executors=standard_executors(concurrency=CONCURRENCY, retry_delay=0.2),
            client_vars={"project_id": emulator.encrypted_project_id, "query": QUERY.format(site="{SITE_NAME}")},
            custom_files={"trainer.py": FLIP_STYLE_TRAINER},
            flip_args={"check_settings": False},
        )
        rc = job.run()
        yield Run(job, rc, emulator, cohorts)


def _max_overlap(records: list[DownloadRecord]) -> int:
    edges = sorted([(r.started_at, 1) for r in records] + [(r.ended_at, -1) for r in records])
    current = peak = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def test_run_succeeds_with_every_image_present(prod_run: Run) -> None:
    assert prod_run.rc == 0
    for site in ("site-1", "site-2"):
        evidence = [
            json.loads(line)
            for line in (prod_run.job.run_dir(site) / "trainer_evidence.jsonl").read_text().splitlines()
        ]
        assert len(evidence) == 2  # two rounds
        assert evidence[0]["backend"] == "FLIPStandardProd"
        total = len(prod_run.cohorts[site])
        assert (evidence[0]["rows"], evidence[0]["ready"], evidence[0]["missing"]) == (total, total, 0)
        assert evidence[0]["files"] >= total


def test_images_were_downloaded_with_the_configured_concurrency(prod_run: Run) -> None:
    for site in ("site-1", "site-2"):
        mine = set(prod_run.cohorts[site])
        records = [r for r in prod_run.downloads if r.accession_id in mine and r.status_code == 200]
        assert {r.accession_id for r in records} == mine
        assert _max_overlap(records) == CONCURRENCY


def test_flaky_imaging_service_was_flaky_and_retries_made_up_for_it(prod_run: Run) -> None:
    injected = [r for r in prod_run.download_requests if r.fault == "error=503"]
    total = len(prod_run.cohorts["site-1"]) + len(prod_run.cohorts["site-2"])
    assert len(injected) >= total // 10  # about 20% of the requests were refused...
    assert all(r.status_code == 503 for r in injected)
    prepared = prod_run.job.results("init_training")
    assert {r["client"] for r in prepared} == {"site-1", "site-2"}
    for result in prepared:  # ...and no accession ended up missing
        assert result["rc"] == "OK"
        assert result["headers"]["flip_preparation"]["missing"] == 0


def test_cleanup_deleted_only_what_this_job_downloaded(prod_run: Run) -> None:
    net = prod_run.net
    special = {prod_run.preexisting, prod_run.shared}
    for site in ("site-1", "site-2"):
        assert prod_run.cohorts[site], site
        for accession in prod_run.cohorts[site]:
            assert (net / accession).exists() == (accession in special), accession
    assert (net / "OTHER_DATA" / "keep.txt").read_text() == "unrelated"
    assert (net / prod_run.preexisting / "mine.txt").read_text() == "was here before"
    assert (net / prod_run.shared).is_dir()
    claims = sorted(p.relative_to(net / CLAIMS_DIR).as_posix() for p in (net / CLAIMS_DIR).rglob("*") if p.is_file())
    assert [c for c in claims if not c.startswith(".")] == [f"{prod_run.shared}/{OTHER_JOB_MARKER}"]
    cleanup = prod_run.job.results("post_validation")
    assert {r["client"] for r in cleanup} == {"site-1", "site-2"}
    counts = {r["client"]: r["headers"]["flip_cleanup"] for r in cleanup}
    assert counts["site-1"]["deleted"] == len(prod_run.cohorts["site-1"]) - 2
    assert counts["site-1"]["kept_shared"] == 1 and counts["site-1"]["kept"] == 1
    assert counts["site-2"]["deleted"] == len(prod_run.cohorts["site-2"])
