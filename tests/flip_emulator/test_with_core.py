"""A job's traffic through the core backend (FLIPStandardProd) lands in the emulator's record exactly."""

from __future__ import annotations

import sqlite3
import threading
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from flip_emulator.handle import EmulatorHandle
from flip_emulator.synthetic import SyntheticData
from flip_nvflare.constants import ModelStatus, ResourceType
from flip_nvflare.errors import FlipAuthenticationError, FlipNotFoundError, FlipRequestRejected


@pytest.fixture
def emu(flip_emulator_shared: EmulatorHandle) -> EmulatorHandle:
    return flip_emulator_shared


@pytest.mark.parametrize("hub_api", ["h1", "h2"])
def test_a_clean_run_is_recorded_exactly(emu: EmulatorHandle, hub_api: str) -> None:
    emu.set_hub_api(hub_api)
    model = emu.register_model(trusts=["Trust_1", "Trust_2"]).model_id
    backend = emu.prod_backend()
    statuses = [ModelStatus.INITIATED, ModelStatus.PREPARED, ModelStatus.TRAINING_STARTED]
    for status in statuses:
        backend.update_status(model, status)
    sent = {
        (site, label, round_number, float(round_number * 10 + index))
        for index, site in enumerate(["site-1", "site-2"])
        for label in ("LOSS_FUNCTION", "DL_RESULT")
        for round_number in range(4)
    }

    def client(site: str) -> None:  # each trust's metrics arrive concurrently
        for name, label, round_number, value in sorted(sent):
            if name == site:
                backend.send_metrics(site, model, label, value, round_number)

    threads = [threading.Thread(target=client, args=(site,)) for site in ("site-1", "site-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backend.send_handled_exception("Traceback (most recent call last):\n  ValueError: bad batch", "site-2", model)
    backend.update_status(model, ModelStatus.RESULTS_UPLOADED)
    backend.close()

    records = emu.records(model)
    running = "TRAINING_STARTED" if hub_api == "h1" else "RUNNING"
    assert records.status_names() == ["INITIATED", "PREPARED", running, "RESULTS_UPLOADED"]
    received = [(m.trust, m.label, m.global_round, m.result) for m in records.metrics]
    assert len(received) == len(sent)  # no duplicates
    assert set(received) == {(s.replace("site-", "Trust_"), lbl, r, v) for s, lbl, r, v in sent}  # no loss
    assert [(lg.trust, lg.success) for lg in records.logs] == [("Trust_2", False)]
    assert "ValueError: bad batch" in (records.logs[0].log or "")
    assert {s.hub_api for s in records.statuses} == {hub_api}


def test_core_failures_map_to_the_emulator_answers(emu: EmulatorHandle) -> None:
    known = emu.register_model(trusts=["Trust_1"]).model_id
    with pytest.raises(FlipNotFoundError):
        emu.prod_backend().update_status("3fa85f64-5717-4562-b3fc-2c963f66afa6", ModelStatus.INITIATED)
    with pytest.raises(FlipRequestRejected) as err:
        emu.prod_backend().send_metrics("site-4", known, "LOSS_FUNCTION", 1.0, 0)
    assert err.value.status_code == 400
    with pytest.raises(FlipAuthenticationError):
        emu.prod_backend(hub_key=emu.trust_key).update_status(known, ModelStatus.INITIATED)
    with pytest.raises(FlipAuthenticationError):
        emu.prod_backend(trust_key=emu.hub_key).get_dataframe(
            emu.encrypted_project_id, "SELECT person_id FROM omop.person"
        )


def test_trust_side_through_the_core(emu: EmulatorHandle, population: SyntheticData, tmp_path: Path) -> None:
    backend = emu.prod_backend()
    sql = "SELECT io.person_id, io.accession_id, io.modality_concept_id FROM omop.image_occurrence io ORDER BY io.image_occurrence_id"  # noqa: E501
    frame = backend.get_dataframe(emu.encrypted_project_id, sql)
    conn = sqlite3.connect(population.omop_path)
    expected = conn.execute(sql.replace("omop.", "")).fetchall()
    conn.close()
    assert [tuple(row) for row in frame.itertuples(index=False)] == expected
    accession = next(
        str(a) for a in frame["accession_id"] if (population.archive / str(a) / "scans/1/resources/SEG").is_dir()
    )
    folder = backend.get_by_accession_number(
        emu.encrypted_project_id, accession, [ResourceType.NIFTI, ResourceType.SEG]
    )
    assert folder == emu.images_dir / emu.net_id / accession
    assert {p.parent.parent.name for p in folder.glob("scans/*/resources/*/files/*")} == {"NIFTI", "SEG"}
    prediction = tmp_path / "prediction.nii.gz"
    prediction.write_bytes(b"segmentation")
    urls = backend.add_resource(emu.encrypted_project_id, accession, "1", "PREDICTION", [prediction])
    assert len(urls) == 1 and urls[0].endswith("/resources/PREDICTION/files/prediction.nii.gz")
    assert [(u.accession_id, u.resource_id, u.status_code) for u in emu.uploads()] == [(accession, "PREDICTION", 200)]
    assert backend.cleanup(folder) is True and not folder.exists()


def test_results_upload_to_the_emulators_s3(
    emu: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert emu.bucket is not None and emu.s3_endpoint is not None
    emu.export_to(monkeypatch)  # as a prod job's environment: boto3 reads its credentials there
    model = emu.register_model().model_id
    results = tmp_path / "results"
    (results / "models").mkdir(parents=True)
    (results / "models" / "FL_global_model.pt").write_bytes(b"weights")
    from flip_nvflare.core.prod import FLIPStandardProd

    uri = FLIPStandardProd().upload_results_to_s3(results, model)
    (key,) = emu.results(model)
    assert uri.endswith(key) and key.startswith(f"{model}/") and key.endswith(".zip")
    import boto3

    bucket = emu.bucket.removeprefix("s3://").split("/")[0]
    body = boto3.client("s3", endpoint_url=emu.s3_endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    assert zipfile.ZipFile(BytesIO(body)).read("models/FL_global_model.pt") == b"weights"
