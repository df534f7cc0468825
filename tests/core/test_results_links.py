"""Zipping a results folder never follows a symlink: what the zip (dev file, or S3 object over real sockets) holds."""

from __future__ import annotations

import logging
import zipfile
from io import BytesIO
from pathlib import Path

import boto3
import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.core.dev import FLIPStandardDev
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.core.results import check_results_folder, count_links, zip_folder
from flip_nvflare.errors import FlipInvalidArgument

MODEL_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
SECRET = b"PATIENT-DATA-outside-the-run-folder " * 100


def _results(tmp_path: Path) -> Path:
    """A results folder with real files and links of every kind; the links' targets hold SECRET."""
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "file.bin").write_bytes(SECRET)
    (outside / "folder" / "inside.pth").write_bytes(SECRET)
    folder = tmp_path / "run" / "flip_results"
    (folder / "sub").mkdir(parents=True)
    (folder / "FL_global_model.pt").write_bytes(b"weights" * 1000)
    (folder / "sub" / "metrics.json").write_text('{"auc": 0.9}')
    (folder / "notes.txt").symlink_to(outside / "file.bin")  # a file outside
    (folder / "best_FL_global_model.pt").symlink_to(outside / "file.bin")  # ... under a model's name
    (folder / "copy.pt").symlink_to(folder / "FL_global_model.pt")  # a file inside
    (folder / "linked").symlink_to(outside / "folder", target_is_directory=True)  # a folder outside
    (folder / "sub" / "up").symlink_to(folder, target_is_directory=True)  # a folder inside (a loop)
    (folder / "dangling").symlink_to(outside / "never-there")
    return folder


EXPECTED = {"FL_global_model.pt": b"weights" * 1000, "sub/metrics.json": b'{"auc": 0.9}'}
LINKS = 6


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_zip_folder_skips_and_counts_every_link(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _results(tmp_path)
    caplog.set_level(logging.WARNING, logger="flip_nvflare")

    zip_folder(folder, tmp_path / "out.zip")

    assert _members((tmp_path / "out.zip").read_bytes()) == EXPECTED
    assert count_links(folder) == LINKS
    assert f"{LINKS} symlink" in caplog.text and "outside" not in caplog.text
    assert (tmp_path / "outside" / "file.bin").read_bytes() == SECRET


def test_a_folder_without_links_counts_none(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "x.json").write_text("{}")
    assert count_links(folder) == 0


def test_the_dev_backends_zip_holds_no_linked_content(tmp_path: Path) -> None:
    folder = _results(tmp_path)
    where = FLIPStandardDev(output_dir=tmp_path / "dev_out", env={}).upload_results_to_s3(folder, MODEL_ID)
    assert _members(Path(where).read_bytes()) == EXPECTED


def test_a_results_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "x.txt").write_text("x")
    (tmp_path / "results").symlink_to(real, target_is_directory=True)
    with pytest.raises(FlipInvalidArgument):
        check_results_folder(tmp_path / "results")
    with pytest.raises(FlipInvalidArgument):
        FLIPStandardDev(output_dir=tmp_path / "dev_out", env={}).upload_results_to_s3(tmp_path / "results", MODEL_ID)
    assert not (tmp_path / "dev_out" / "results").exists()


def test_the_object_put_in_s3_holds_no_linked_content(flip_emulator_shared: EmulatorHandle, tmp_path: Path) -> None:
    emu = flip_emulator_shared
    env = emu.env()
    s3 = boto3.client(
        "s3",
        endpoint_url=emu.s3_endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    s3.create_bucket(Bucket="results-links")
    backend = FLIPStandardProd(results_bucket="s3://results-links", env=env)
    folder = _results(tmp_path)

    stored = backend.upload_results_to_s3(folder, MODEL_ID)

    key = stored.removeprefix("s3://results-links/")
    assert _members(s3.get_object(Bucket="results-links", Key=key)["Body"].read()) == EXPECTED
