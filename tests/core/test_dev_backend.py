from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from flip_nvflare.constants import ModelStatus, ResourceType
from flip_nvflare.core.dev import FLIPStandardDev
from flip_nvflare.errors import FlipConfigError, FlipInvalidArgument, FlipInvalidResponse, FlipMissingData

MODEL = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


@pytest.fixture
def dev(tmp_path: Path) -> FLIPStandardDev:
    csv = tmp_path / "cohort.csv"
    pd.DataFrame({"accession_id": ["ACC1", "ACC2"], "age": [40, 50]}).to_csv(csv, index=False)
    images = tmp_path / "images"
    (images / "ACC1").mkdir(parents=True)
    return FLIPStandardDev(dataframe_csv=csv, images_dir=images, output_dir=tmp_path / "out", env={})


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dataframe_from_csv(dev: FLIPStandardDev) -> None:
    frame = dev.get_dataframe("project", "SELECT * FROM omop.person")
    assert list(frame["accession_id"]) == ["ACC1", "ACC2"]
    assert list(frame["age"]) == [40, 50]


def test_csv_without_accession_id_is_a_clear_error(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("id,age\n1,2\n")
    backend = FLIPStandardDev(dataframe_csv=csv, env={})
    with pytest.raises(FlipInvalidResponse, match="accession_id"):
        backend.get_dataframe("p", "q")


def test_missing_settings_name_the_variable(tmp_path: Path) -> None:
    backend = FLIPStandardDev(env={})
    with pytest.raises(FlipConfigError, match="DEV_DATAFRAME"):
        backend.get_dataframe("p", "q")
    with pytest.raises(FlipConfigError, match="DEV_IMAGES_DIR"):
        backend.get_by_accession_number("p", "ACC1")
    with pytest.raises(FlipConfigError, match="DEV_OUTPUT_DIR"):
        backend.update_status(MODEL, ModelStatus.INITIATED)


def test_settings_from_environment(tmp_path: Path) -> None:
    (tmp_path / "img" / "A").mkdir(parents=True)
    backend = FLIPStandardDev(env={"DEV_IMAGES_DIR": str(tmp_path / "img")})
    assert backend.get_by_accession_number("p", "A") == tmp_path / "img" / "A"


def test_accession_folder(dev: FLIPStandardDev, tmp_path: Path) -> None:
    assert dev.get_by_accession_number("p", "ACC1") == tmp_path / "images" / "ACC1"
    assert dev.get_by_accession_number("p", "ACC1", [ResourceType.NIFTI, ResourceType.SEG]).name == "ACC1"
    with pytest.raises(FlipMissingData) as err:
        dev.get_by_accession_number("p", "ACC2")
    assert "ACC2" not in str(err.value) and str(tmp_path) not in str(err.value)
    assert not (tmp_path / "images" / "ACC2").exists()
    with pytest.raises(FlipInvalidArgument):
        dev.get_by_accession_number("p", "../ACC1")


def test_hub_methods_write_the_ledger(dev: FLIPStandardDev, tmp_path: Path) -> None:
    dev.update_status(MODEL, ModelStatus.INITIATED)
    dev.update_status(MODEL, "PREPARED")
    assert dev.send_metrics("site-1", MODEL, "LOSS", 0.5, 1) is True
    assert dev.send_metrics("site-2", MODEL, "LOSS", float("nan"), 1) is False
    dev.send_handled_exception("Traceback ...", "site-2", MODEL)
    out = tmp_path / "out"
    assert [r["status"] for r in _lines(out / "status.jsonl")] == ["INITIATED", "PREPARED"]
    metrics = _lines(out / "metrics.jsonl")
    assert len(metrics) == 1
    assert metrics[0]["trust"] == "Trust_1" and metrics[0]["global_round"] == 1 and metrics[0]["result"] == 0.5
    logs = _lines(out / "logs.jsonl")
    assert logs[0]["trust"] == "Trust_2" and logs[0]["log"] == "Traceback ..." and logs[0]["success"] is False


def test_invalid_model_id_and_status(dev: FLIPStandardDev) -> None:
    with pytest.raises(FlipInvalidArgument):
        dev.update_status("nope", ModelStatus.INITIATED)
    with pytest.raises(FlipInvalidArgument):
        dev.update_status(MODEL, "FINISHED")
    with pytest.raises(FlipInvalidArgument):
        dev.send_metrics("site-1", MODEL, "LOSS", 1.0, -1)


def test_results_zip_in_output_folder(dev: FLIPStandardDev, tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / "models").mkdir(parents=True)
    (results / "models" / "FL_global_model.pt").write_bytes(b"weights")
    (results / "summary.json").write_text("{}")
    where = Path(dev.upload_results_to_s3(results, MODEL))
    assert where.parent == tmp_path / "out" / "results" / MODEL
    with zipfile.ZipFile(where) as zf:
        assert sorted(zf.namelist()) == ["models/FL_global_model.pt", "summary.json"]
    assert (results / "models" / "FL_global_model.pt").read_bytes() == b"weights"


def test_add_resource_copies_files(dev: FLIPStandardDev, tmp_path: Path) -> None:
    seg = tmp_path / "seg.nii.gz"
    seg.write_bytes(b"seg")
    uris = dev.add_resource("p", "ACC1", "1", "SEG_AI", [seg])
    copied = tmp_path / "out" / "resources" / "ACC1" / "1" / "SEG_AI" / "seg.nii.gz"
    assert copied.read_bytes() == b"seg" and uris == [copied.as_uri()]


def test_cleanup_is_off_by_default_and_limited(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "A").mkdir(parents=True)
    with pytest.raises(FlipConfigError):
        FLIPStandardDev(images_dir=images, env={}).cleanup(images / "A")
    scratch = tmp_path / "scratch"
    (scratch / "x").mkdir(parents=True)
    backend = FLIPStandardDev(cleanable_dirs=[scratch], env={})
    with pytest.raises(FlipInvalidArgument):
        backend.cleanup(images / "A")
    assert backend.cleanup(scratch / "x") is True
    assert (images / "A").exists()


def test_dev_errors_name_no_accession_id_and_no_data_path(tmp_path: Path) -> None:
    """Dev errors follow prod's rule: they say what to create in general terms, never the id or the path."""
    data = tmp_path / "trust data" / "Jane Doe 1980-02-03"
    images = data / "images"
    (images / "ACC1").mkdir(parents=True)
    missing_csv = FLIPStandardDev(dataframe_csv=data / "cohort.csv", images_dir=images, env={})
    no_column_csv = data / "no_column.csv"
    no_column_csv.write_text("id,age\nACC1,2\n")
    no_column = FLIPStandardDev(dataframe_csv=no_column_csv, env={})

    messages = []
    with pytest.raises(FlipMissingData) as err:
        missing_csv.get_dataframe("p", "q")
    messages.append(str(err.value))
    with pytest.raises(FlipInvalidResponse) as err2:
        no_column.get_dataframe("p", "q")
    messages.append(str(err2.value))
    with pytest.raises(FlipMissingData) as err3:
        missing_csv.get_by_accession_number("p", "ACC2")
    messages.append(str(err3.value))

    for message in messages:
        for leaked in ("ACC2", "ACC1", str(tmp_path), "trust data", "Jane", "1980", "cohort.csv", "no_column", "/"):
            assert leaked not in message, message
    assert "DEV_DATAFRAME" in messages[0] and "DEV_DATAFRAME" in messages[1] and "accession_id" in messages[1]
    assert "no image folder for this accession" in messages[2] and "DEV_IMAGES_DIR" in messages[2]
