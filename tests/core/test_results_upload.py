"""The results zip streamed into S3 (moto's server, over real sockets): round trip, aborts, progress.

The zip is written to a non-seekable stream and uploaded in parts while it is written: every test
reads the object back from S3 and checks it member by member, with Python's zipfile and (where
installed) Info-ZIP's ``unzip -t``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.core import results
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.core.results import MultipartStream, compresses, upload_folder_zip, write_zip
from flip_nvflare.errors import FlipResultsUploadError

MODEL_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
MIB = 1024 * 1024
PART = 5 * MIB  # the smallest part S3 (and moto) accepts


@pytest.fixture
def emu(flip_emulator_shared: EmulatorHandle) -> EmulatorHandle:
    return flip_emulator_shared


def _s3(emu: EmulatorHandle) -> Any:
    env = emu.env()
    return boto3.client(
        "s3",
        endpoint_url=emu.s3_endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


def _bucket(s3: Any, name: str) -> str:
    s3.create_bucket(Bucket=name)
    return name


def _run_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A run folder over two parts: weights (random), JSON, an unnamed random file, text, an empty file."""
    folder = tmp_path / "run"
    (folder / "models").mkdir(parents=True)
    (folder / "logs" / "deep").mkdir(parents=True)
    files = {
        "models/FL_global_model.pt": os.urandom(7 * MIB + 123),
        "models/best_FL_global_model.safetensors": os.urandom(3 * MIB),
        "models/weights.dat": os.urandom(MIB),  # no telling suffix: a sample decides
        "cross_site_val.json": json.dumps({f"site-{i}": {"acc": i / 7} for i in range(20000)}).encode(),
        "logs/deep/train.log": b"round 1 loss 0.5\n" * 50000,
        "empty.txt": b"",
        "..dots in name": b"not a traversal",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder, files


def _members(data: bytes) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(BytesIO(data)) as zf:
        assert zf.testzip() is None
        return {info.filename: info for info in zf.infolist()}


def _check_zip(data: bytes, files: dict[str, bytes], tmp_path: Path) -> dict[str, zipfile.ZipInfo]:
    infos = _members(data)
    assert sorted(infos) == sorted(files)
    with zipfile.ZipFile(BytesIO(data)) as zf:
        for name, content in files.items():
            assert zf.read(name) == content, name
    for name in infos:
        assert not name.startswith("/") and ".." not in name.split("/"), name
    if shutil.which("unzip"):
        path = tmp_path / "back.zip"
        path.write_bytes(data)
        tested = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True, check=False)
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert "No errors detected" in tested.stdout
    return infos


def test_round_trip_in_parts_stores_what_does_not_compress(emu: EmulatorHandle, tmp_path: Path) -> None:
    s3 = _s3(emu)
    bucket = _bucket(s3, "results-round-trip")
    folder, files = _run_folder(tmp_path)
    calls: list[tuple[int, int]] = []
    size = upload_folder_zip(s3, folder, bucket, "m/r.zip", part_size=PART, progress=lambda d, t: calls.append((d, t)))
    head = s3.head_object(Bucket=bucket, Key="m/r.zip")
    assert head["ContentLength"] == size
    assert "-" in head["ETag"]  # a multipart object (parts while zipping), not one put
    data = s3.get_object(Bucket=bucket, Key="m/r.zip")["Body"].read()
    infos = _check_zip(data, files, tmp_path)
    kinds = {name: info.compress_type for name, info in infos.items()}
    assert kinds["models/FL_global_model.pt"] == zipfile.ZIP_STORED
    assert kinds["models/best_FL_global_model.safetensors"] == zipfile.ZIP_STORED
    assert kinds["models/weights.dat"] == zipfile.ZIP_STORED
    assert kinds["empty.txt"] == zipfile.ZIP_STORED
    assert kinds["cross_site_val.json"] == zipfile.ZIP_DEFLATED
    assert kinds["logs/deep/train.log"] == zipfile.ZIP_DEFLATED
    assert infos["logs/deep/train.log"].compress_size < len(files["logs/deep/train.log"]) // 10
    # progress: (done, total) never going back, about every percent, ending at (total, total)
    total = sum(len(d) for d in files.values())
    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert 10 <= len(calls) <= 102
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_small_results_are_one_put_and_an_empty_folder_is_an_empty_zip(emu: EmulatorHandle, tmp_path: Path) -> None:
    s3 = _s3(emu)
    bucket = _bucket(s3, "results-small")
    folder = tmp_path / "small"
    folder.mkdir()
    upload_folder_zip(s3, folder, bucket, "empty.zip")
    assert _members(s3.get_object(Bucket=bucket, Key="empty.zip")["Body"].read()) == {}
    (folder / "a.json").write_text('{"a": 1}')
    (folder / "zero.pt").write_bytes(b"")
    calls: list[tuple[int, int]] = []
    upload_folder_zip(s3, folder, bucket, "small.zip", progress=lambda d, t: calls.append((d, t)))
    data = s3.get_object(Bucket=bucket, Key="small.zip")["Body"].read()
    _check_zip(data, {"a.json": b'{"a": 1}', "zero.pt": b""}, tmp_path)
    assert calls[-1] == (8, 8)


def test_links_are_never_followed_into_the_upload(emu: EmulatorHandle, tmp_path: Path) -> None:
    s3 = _s3(emu)
    bucket = _bucket(s3, "results-links")
    secret = b"PATIENT-DATA " * 1000
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(secret)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"w" * 100)
    (folder / "link.pt").symlink_to(outside / "secret.bin")
    (folder / "dir").symlink_to(outside, target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    upload_folder_zip(s3, folder, bucket, "links.zip")
    data = s3.get_object(Bucket=bucket, Key="links.zip")["Body"].read()
    _check_zip(data, {"model.pt": b"w" * 100}, tmp_path)
    assert secret[:20] not in data


class _FailingPart:
    """A real S3 client whose ``fail_at``-th upload_part gets the error a failing server's answer gives."""

    def __init__(self, inner: Any, fail_at: int) -> None:
        self._inner = inner
        self._fail_at = fail_at
        self._count = 0
        self._lock = threading.Lock()

    def upload_part(self, **kwargs: Any) -> Any:
        with self._lock:
            self._count += 1
            failing = self._count == self._fail_at
        if failing:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, "UploadPart")
        return self._inner.upload_part(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_failing_part_aborts_the_upload_and_leaves_nothing(emu: EmulatorHandle, tmp_path: Path, fail_at: int) -> None:
    s3 = _s3(emu)
    bucket = _bucket(s3, f"results-abort-{fail_at}")
    folder, files = _run_folder(tmp_path)
    with pytest.raises(FlipResultsUploadError, match="left intact") as caught:
        upload_folder_zip(_FailingPart(s3, fail_at), folder, bucket, "m/r.zip", part_size=PART)
    assert "InternalError" in str(caught.value)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")  # aborted: no parts kept
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")  # and no partial object
    assert all((folder / name).read_bytes() == data for name, data in files.items())


def test_a_file_that_cannot_be_read_aborts_the_upload(
    emu: EmulatorHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = _s3(emu)
    bucket = _bucket(s3, "results-unreadable")
    folder, _ = _run_folder(tmp_path)
    real_add = results._add_file
    added: list[str] = []

    def add_then_fail(zf: zipfile.ZipFile, path: Path, arcname: str, tally: Any) -> bool:
        if len(added) == 3:
            raise PermissionError(13, "Permission denied")
        added.append(arcname)
        return real_add(zf, path, arcname, tally)

    monkeypatch.setattr(results, "_add_file", add_then_fail)
    with pytest.raises(FlipResultsUploadError, match="Preparing the results upload"):
        upload_folder_zip(s3, folder, bucket, "r.zip", part_size=PART)
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")


def test_prod_backend_streams_with_progress(emu: EmulatorHandle, tmp_path: Path) -> None:
    s3 = _s3(emu)
    bucket = _bucket(s3, "results-prod")
    folder, files = _run_folder(tmp_path)
    calls: list[tuple[int, int]] = []
    backend = FLIPStandardProd(results_bucket=f"s3://{bucket}/runs", env=emu.env())
    uri = backend.upload_results_to_s3(folder, MODEL_ID, progress=lambda d, t: calls.append((d, t)))
    key = uri.removeprefix(f"s3://{bucket}/")
    assert key.startswith(f"runs/{MODEL_ID}/")
    _check_zip(s3.get_object(Bucket=bucket, Key=key)["Body"].read(), files, tmp_path)
    assert calls[-1][0] == calls[-1][1] == sum(len(d) for d in files.values())


def test_zip64_members_are_written_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Members over ZIP64_LIMIT take ZIP64 sizes (in their data descriptors too): shown with a small limit.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    folder = tmp_path / "run"
    folder.mkdir()
    files = {"big.pt": os.urandom(5000), "big.json": b'{"k": 1}' * 1000, "small.txt": b"x"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    sink = _Sink()
    write_zip(folder, sink)
    monkeypatch.undo()
    data = bytes(sink.data)
    infos = _check_zip(data, files, tmp_path)
    for name in ("big.pt", "big.json"):
        assert infos[name].extra.startswith(b"\x01\x00")  # the ZIP64 extra field
        assert infos[name].flag_bits & 0x08  # sizes and CRC after the data: written without seeking


class _Sink:
    """A write-only, non-seekable file object (like the upload stream)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: Any) -> int:
        self.data += chunk
        return len(chunk)

    def flush(self) -> None:
        pass


class _SlowClient:
    """A fake S3 client whose part uploads wait until released; records how many ran at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.parts: dict[int, bytes] = {}
        self.aborted = False
        self.release = threading.Event()
        self._lock = threading.Lock()

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, str]:
        return {"UploadId": "u1"}

    def upload_part(self, *, PartNumber: int, Body: bytes, **kwargs: Any) -> dict[str, str]:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.release.wait(5)
        with self._lock:
            self.running -= 1
            self.parts[PartNumber] = Body
        return {"ETag": f'"{PartNumber}"'}

    def complete_multipart_upload(self, **kwargs: Any) -> None:
        pass

    def abort_multipart_upload(self, **kwargs: Any) -> None:
        self.aborted = True


def test_memory_stays_bounded_by_the_parts_in_flight() -> None:
    client = _SlowClient()
    stream = MultipartStream(client, "b", "k", part_size=1000, in_flight=2)
    timer = threading.Timer(0.2, client.release.set)
    timer.start()
    try:
        for _ in range(50):
            stream.write(b"y" * 330)
            assert len(stream._buffer) < 1000  # never more than one part waits in memory...
            assert client.running <= 2  # ...besides the parts being uploaded
        stream.finish()
    finally:
        timer.cancel()
        client.release.set()
    assert client.most <= 2
    assert b"".join(client.parts[n] for n in sorted(client.parts)) == b"y" * 330 * 50
    assert not client.aborted


@pytest.mark.parametrize(
    ("name", "sample", "expected"),
    [
        ("model.pt", b"a" * 1000, False),
        ("scan.NII.GZ", b"a" * 1000, False),
        ("data.json", b'{"a": 1}' * 100, True),
        ("random.bin2", os.urandom(4096), False),
        ("empty.txt", b"", False),
    ],
)
def test_what_is_deflated(name: str, sample: bytes, expected: bool) -> None:
    assert compresses(name, sample) is expected


class _ErrorBody:
    """The raw body of an S3 error answer, as botocore reads it."""

    def stream(self, **kwargs: Any) -> Any:
        yield b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code><Message>boom</Message></Error>"


def test_a_server_error_mid_multipart_aborts_the_upload(emu: EmulatorHandle, tmp_path: Path) -> None:
    """The S3 endpoint answers HTTP 500 to the second part: botocore's own error path, then the abort."""
    from botocore.awsrequest import AWSResponse
    from botocore.config import Config

    env = emu.env()
    s3 = boto3.client(
        "s3",
        endpoint_url=emu.s3_endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )
    bucket = _bucket(s3, "results-server-error")
    answered: list[int] = []

    def server_error(request: Any, **kwargs: Any) -> Any:
        if "partNumber=2" in request.url:
            answered.append(500)
            return AWSResponse(request.url, 500, {"Content-Type": "application/xml"}, _ErrorBody())
        return None

    s3.meta.events.register("before-send.s3.UploadPart", server_error)
    folder, _ = _run_folder(tmp_path)
    with pytest.raises(FlipResultsUploadError, match="InternalError"):
        upload_folder_zip(s3, folder, bucket, "r.zip", part_size=PART)
    assert answered  # the server did fail the part
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")
