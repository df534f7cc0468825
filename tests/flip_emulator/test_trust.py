"""The emulated trust over real HTTP: data-access-api and imaging-api."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flip_emulator.handle import EmulatorHandle
from flip_emulator.synthetic import SyntheticData

BELOW = "Cohort is too small for row-level data to be released."


@pytest.fixture
def emu(flip_emulator_shared: EmulatorHandle) -> EmulatorHandle:
    return flip_emulator_shared


@pytest.fixture
def trust(emu: EmulatorHandle) -> Iterator[httpx.Client]:
    headers = {"X-Trust-Internal-Service-Key": emu.trust_key}
    with httpx.Client(base_url=emu.trust_url, headers=headers, timeout=30) as client:
        yield client


def direct(population: SyntheticData, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(population.omop_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def cohort(client: httpx.Client, emu: EmulatorHandle, query: str, envelope: str | None = None) -> httpx.Response:
    body = {"encrypted_project_id": envelope or emu.encrypted_project_id, "query": query}
    return client.post("/cohort/dataframe", json=body)


def download(
    client: httpx.Client, emu: EmulatorHandle, accession: str, resource: str = "NIFTI", net_id: str | None = None
) -> httpx.Response:
    return client.post(
        f"/download/images/{net_id or emu.net_id}",
        params={"assessor_type": "assessor" if resource == "SEG" else "scan", "resource_type": resource},
        json={"encrypted_central_hub_project_id": emu.encrypted_project_id, "accession_id": accession},
    )


def accessions(population: SyntheticData, where: str = "1 = 1") -> list[str]:
    return [str(r[0]) for r in direct(population, f"SELECT accession_id FROM image_occurrence WHERE {where}")]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/cohort/dataframe", {"encrypted_project_id": "x", "query": "SELECT 1"}),
        ("POST", "/download/images/net-1?assessor_type=scan&resource_type=NIFTI", {"accession_id": "A"}),
        ("PUT", "/upload/images/net-1", {"accession_id": "A"}),
    ],
)
def test_every_trust_route_needs_the_trust_key(emu: EmulatorHandle, method: str, path: str, body: object) -> None:
    url = emu.trust_url + path
    answers = {
        "missing": httpx.request(method, url, json=body),
        "wrong": httpx.request(method, url, json=body, headers={"X-Trust-Internal-Service-Key": "nope"}),
        "hub key": httpx.request(method, url, json=body, headers={"X-Trust-Internal-Service-Key": emu.hub_key}),
        "hub header": httpx.request(method, url, json=body, headers={"X-Internal-Service-Key": emu.trust_key}),
    }
    assert {k: r.status_code for k, r in answers.items()} == dict.fromkeys(answers, 401)
    assert all(emu.hub_key not in r.text and emu.trust_key not in r.text for r in answers.values())
    assert emu.cohort_queries() == [] and emu.downloads() == [] and emu.uploads() == []
    assert httpx.get(f"{emu.trust_url}/health").json()["status"] == "ok"


def test_cohort_is_column_oriented_and_exact(
    emu: EmulatorHandle, trust: httpx.Client, population: SyntheticData
) -> None:
    sql = "SELECT io.person_id, io.accession_id, p.year_of_birth FROM omop.image_occurrence io JOIN omop.person p ON p.person_id = io.person_id ORDER BY io.image_occurrence_id"  # noqa: E501
    answer = cohort(trust, emu, sql)
    assert answer.status_code == 200
    body = answer.json()
    expected = direct(population, sql.replace("omop.", ""))
    assert list(body) == ["person_id", "accession_id", "year_of_birth"]
    assert list(zip(*body.values(), strict=True)) == expected
    (record,) = emu.cohort_queries()
    assert record.status_code == 200 and record.rows == len(expected)
    assert record.query_sha256 == hashlib.sha256(sql.encode()).hexdigest()
    assert record.project_id == emu.project_id


def test_narrow_cohort_is_refused_like_an_empty_one(
    emu: EmulatorHandle, trust: httpx.Client, population: SyntheticData
) -> None:
    narrow = "SELECT person_id FROM omop.condition_occurrence WHERE condition_concept_id = 2000000203"
    subjects = len({r[0] for r in direct(population, narrow.replace("omop.", ""))})
    assert 0 < subjects < 10
    small = cohort(trust, emu, narrow)
    empty = cohort(trust, emu, "SELECT person_id FROM omop.person WHERE person_id < 0")
    assert small.status_code == empty.status_code == 403
    assert small.content == empty.content
    assert small.json()["detail"] == BELOW
    # Rows are not subjects: many rows of the same few people are still too few.
    few_people = "SELECT io.person_id, io.accession_id FROM omop.image_occurrence io WHERE io.person_id <= 6"
    assert len(direct(population, few_people.replace("omop.", ""))) >= 10
    assert cohort(trust, emu, few_people).status_code == 403
    # A query that does not expose its subjects cannot be released either.
    assert cohort(trust, emu, "SELECT year_of_birth FROM omop.person").status_code == 403


def test_threshold_is_a_setting(emu: EmulatorHandle, trust: httpx.Client, population: SyntheticData) -> None:
    narrow = "SELECT person_id FROM omop.condition_occurrence WHERE condition_concept_id = 2000000203"
    subjects = len({r[0] for r in direct(population, narrow.replace("omop.", ""))})
    emu.set_settings(threshold=subjects)
    assert cohort(trust, emu, narrow).status_code == 200
    emu.set_settings(threshold=subjects + 1)
    assert cohort(trust, emu, narrow).status_code == 403


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT person_id FROM omop.person; DROP TABLE person", "one statement"),
        ("DELETE FROM omop.person", "Only SELECT"),
        ("SELECT person_id FROM main.person", "omop schema"),
        ("SELECT person_id FROM omop.person LIMIT (SELECT 5)", "LIMIT"),
        ("SELECT person_id FROM omop.patients", "Unknown table"),
        ("SELECT height FROM omop.person", "Unknown column"),
        ("SELECT person_id FROM omop.person --" + "x" * 10_240, "10,240"),
    ],
)
def test_sql_rules_over_http(emu: EmulatorHandle, trust: httpx.Client, sql: str, fragment: str) -> None:
    answer = cohort(trust, emu, sql)
    assert answer.status_code == 400
    assert fragment in answer.json()["detail"]
    assert [r.status_code for r in emu.cohort_queries()] == [400]


def test_envelopes_are_authenticated(emu: EmulatorHandle, trust: httpx.Client) -> None:
    sql = "SELECT person_id FROM omop.person"
    other_project = emu.encrypt_project_id("another-project")
    assert cohort(trust, emu, sql, other_project).status_code == 200
    tampered = emu.encrypted_project_id[:-2] + ("AA" if not emu.encrypted_project_id.endswith("AA") else "BB")
    for bad in (tampered, "not-an-envelope", " "):
        answer = cohort(trust, emu, sql, bad)
        assert answer.status_code == 400, bad
        assert "encrypted_project_id" in answer.json()["detail"]
    emu.set_settings(open=True)
    assert cohort(trust, emu, sql, "anything-goes-in-open-mode").status_code == 200
    assert [r.project_id for r in emu.cohort_queries() if r.status_code == 200] == ["another-project", None]


def test_download_copies_the_xnat_layout_and_caches(
    emu: EmulatorHandle, trust: httpx.Client, population: SyntheticData
) -> None:
    accession = next(a for a in accessions(population) if (population.archive / a / "scans/1/resources/SEG").is_dir())
    first = download(trust, emu, accession, "NIFTI")
    assert first.status_code == 200
    folder = Path(first.json()["path"])
    assert folder == emu.images_dir / emu.net_id / accession
    source = population.archive / accession
    (nifti,) = (source / "scans/1/resources/NIFTI/files").iterdir()
    copied = folder / "scans/1/resources/NIFTI/files" / nifti.name
    assert copied.read_bytes() == nifti.read_bytes()
    assert not (folder / "scans/1/resources/SEG").exists()
    assert download(trust, emu, accession, "SEG").json()["path"] == str(folder)  # same folder for every type
    assert (folder / "scans/1/resources/SEG/files").is_dir()
    assert download(trust, emu, accession, "NIFTI").status_code == 200
    assert [(d.resource_type, d.cached, d.status_code) for d in emu.downloads()] == [
        ("NIFTI", False, 200),
        ("SEG", False, 200),
        ("NIFTI", True, 200),
    ]
    copied.unlink()  # a client cleaned up: the next call downloads again
    assert download(trust, emu, accession, "ALL").status_code == 200
    assert copied.exists() and emu.downloads()[-1].cached is False


def test_download_refusals(emu: EmulatorHandle, trust: httpx.Client, population: SyntheticData) -> None:
    accession = accessions(population)[0]
    no_seg = next(
        (a for a in accessions(population) if not (population.archive / a / "scans/1/resources/SEG").exists()), None
    )
    checks = {
        "dot-dot": (download(trust, emu, ".."), 422),
        "slash": (download(trust, emu, "a/b"), 422),
        "space": (download(trust, emu, "a b"), 422),
        "unknown accession": (download(trust, emu, "ACC000000"), 404),
        "no DICOM": (download(trust, emu, accession, "DICOM"), 404),
        "other net": (download(trust, emu, accession, net_id="net-9"), 404),
        "bad type": (download(trust, emu, accession, "JPEG"), 422),
    }
    if no_seg is not None:
        checks["no SEG"] = (download(trust, emu, no_seg, "SEG"), 404)
    assert {k: r.status_code for k, (r, _) in checks.items()} == {k: code for k, (_, code) in checks.items()}
    assert all(accession not in r.text for r, _ in checks.values() if r.status_code == 404)
    assert "a/b" not in checks["slash"][0].text
    assert download(trust, emu, accession, "NIFTI").status_code == 200


@pytest.mark.parametrize("concurrency", [1, 3])
def test_downloads_are_served_one_at_a_time_unless_configured(
    emu: EmulatorHandle, population: SyntheticData, concurrency: int
) -> None:
    emu.set_settings(download_concurrency=concurrency, download_latency=0.3)
    chosen = accessions(population)[:3]
    answers: list[int] = []

    def fetch(accession: str) -> None:
        headers = {"X-Trust-Internal-Service-Key": emu.trust_key}
        with httpx.Client(base_url=emu.trust_url, headers=headers, timeout=30) as client:
            answers.append(download(client, emu, accession).status_code)

    threads = [threading.Thread(target=fetch, args=(a,)) for a in chosen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [200, 200, 200]
    spans = sorted((d.started_at, d.ended_at) for d in emu.downloads())
    assert len(spans) == 3 and all(end - start >= 0.3 for start, end in spans)
    overlapping = any(spans[i + 1][0] < spans[i][1] for i in range(2))
    assert overlapping is (concurrency > 1)


def test_upload_rules(emu: EmulatorHandle, trust: httpx.Client, population: SyntheticData) -> None:
    accession = accessions(population)[1]
    staged = emu.images_dir / emu.net_id / "upload" / "job-1" / "prediction.nii.gz"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"prediction")
    body = {
        "encrypted_central_hub_project_id": emu.encrypted_project_id,
        "accession_id": accession,
        "scan_id": "1",
        "resource_id": "PREDICTION",
        "files": ["job-1/prediction.nii.gz"],
    }
    first = trust.put(f"/upload/images/{emu.net_id}", json=body)
    assert first.status_code == 200
    (url,) = first.json()
    assert url.endswith(f"/experiments/{accession}/scans/1/resources/PREDICTION/files/prediction.nii.gz")
    assert trust.put(f"/upload/images/{emu.net_id}", json=body).status_code == 500
    assert trust.put(f"/upload/images/{emu.net_id}", json={**body, "exist_ok": True}).status_code == 200
    assert trust.put(f"/upload/images/{emu.net_id}", json={**body, "files": ["../../secret"]}).status_code == 400
    assert trust.put(f"/upload/images/{emu.net_id}", json={**body, "files": ["/etc/passwd"]}).status_code == 400
    assert trust.put(f"/upload/images/{emu.net_id}", json={**body, "files": ["job-1/missing"]}).status_code == 404
    assert trust.put(f"/upload/images/{emu.net_id}", json={**body, "accession_id": "ACC000000"}).status_code == 404
    assert trust.put(f"/upload/images/{emu.net_id}", json={**body, "scan_id": ".."}).status_code == 422
    assert [u.status_code for u in emu.uploads()] == [200, 500, 200, 400, 400, 404, 404]
    # The uploaded resource is served by later downloads.
    folder = Path(download(trust, emu, accession, "ALL").json()["path"])
    assert (folder / "scans/1/resources/PREDICTION/files/prediction.nii.gz").read_bytes() == b"prediction"
