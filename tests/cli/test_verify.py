"""``flip-nvflare verify-results``: a good zip verifies; every kind of tampering is reported, nothing extracted."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest

from flip_nvflare.cli import main as flip_main
from flip_nvflare.cli.verify import main
from flip_nvflare.components.provenance import (
    PROVENANCE_FILE,
    app_code_hash,
    build_provenance,
    job_settings,
    verify_results_zip,
    write_provenance,
)
from flip_nvflare.core.results import zip_folder

MODEL_ID = "6b0f2d4e-1c3a-4e5f-8a7b-9c0d1e2f3a4b"
MODEL = b"weights " * 4096


@pytest.fixture
def good_zip(tmp_path: Path) -> Path:
    """A results zip as the ResultsUploader and the backends write it."""
    folder = tmp_path / "flip_results"
    (folder / "sub").mkdir(parents=True)
    (folder / "FL_global_model.pt").write_bytes(MODEL)
    (folder / "cross_val_results.json").write_text('{"site-1": {"SRV_FL_global_model.pt": {"acc": 0.9}}}')
    (folder / "sub" / "notes.txt").write_text("nested")
    summary = {"model_id": MODEL_ID, "flip_mode": "dev", "outcome": "completed", "trusts": {"site-1": "Trust_1"}}
    (folder / "run_summary.json").write_text(json.dumps(summary))
    app = tmp_path / "job" / "app"
    (app / "config").mkdir(parents=True)
    (app / "custom").mkdir()
    (app / "config" / "config_fed_server.json").write_text('{"workflows": []}')
    (app / "custom" / "trainer.py").write_text("x = 1\n")
    provenance = build_provenance(
        summary,
        results_folder=folder,
        job_id="job-1",
        job_type="standard",
        rounds_completed=3,
        settings=job_settings({"workflows": []}, None),
        app_code=app_code_hash(app),
    )
    write_provenance(folder, provenance)
    zip_folder(folder, tmp_path / "results.zip")
    return tmp_path / "results.zip"


def rewrite(source: Path, target: Path, *, drop: str = "", change: dict[str, bytes] | None = None) -> Path:
    """A copy of a zip with a member dropped or members replaced or added (``change``)."""
    change = dict(change or {})
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename == drop:
                continue
            zout.writestr(info.filename, change.pop(info.filename, zin.read(info)))
        for name, data in change.items():
            zout.writestr(name, data)
    return target


def set_declared_size(path: Path, member: str, size: int) -> None:
    """Patch the uncompressed size the central directory declares for ``member`` (a zip bomb's lie)."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46 : at + 46 + name_length]) == name:
            struct.pack_into("<I", data, at + 24, size)
            path.write_bytes(bytes(data))
            return
        at += 4
    raise AssertionError(f"{member} not in the central directory")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_good_zip_verifies_and_its_provenance_is_printed(good_zip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, str(good_zip), "--app", str(good_zip.parent / "job" / "app"))
    assert code == 0, out
    assert f"model_id: {MODEL_ID}" in out and "rounds_completed: 3" in out and "trusts: Trust_1" in out
    assert "Files: 4 verified" in out and "OK: every file matches the provenance." in out
    for name in ("FL_global_model.pt", "cross_val_results.json", "run_summary.json", "sub/notes.txt"):
        assert f"  ok        {name}" in out
    assert flip_main(["verify-results", str(good_zip)]) == 0  # registered in the dispatcher


def test_json_output_and_the_expected_digest(good_zip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, str(good_zip), "--json")
    data = json.loads(out)
    assert code == 0 and data["ok"] and len(data["verified"]) == 4
    digest = data["provenance"]["digest"]["sha256"]
    assert run(capsys, str(good_zip), "--expect-digest", digest.upper())[0] == 0
    code, out = run(capsys, str(good_zip), "--expect-digest", "0" * 64)
    assert code == 1 and "not the expected one" in out


def test_a_tampered_member_is_reported(good_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = rewrite(good_zip, tmp_path / "bad.zip", change={"FL_global_model.pt": MODEL.replace(b"w", b"W", 1)})
    code, out = run(capsys, str(bad))
    assert code == 1
    assert "TAMPERED  FL_global_model.pt: SHA-256 differs" in out and "FAILED: 1 tampered" in out
    assert "  ok        cross_val_results.json" in out


def test_a_resized_member_is_reported(good_zip: Path, tmp_path: Path) -> None:
    bad = rewrite(good_zip, tmp_path / "bad.zip", change={"run_summary.json": b"{}"})
    result = verify_results_zip(bad)
    assert [name for name, _ in result.tampered] == ["run_summary.json"]
    assert "recorded" in result.tampered[0][1]


def test_an_added_member_is_reported(good_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = rewrite(good_zip, tmp_path / "bad.zip", change={"backdoor.py": b"import os"})
    code, out = run(capsys, str(bad))
    assert code == 1 and "EXTRA     backdoor.py" in out and "Files: 4 verified" in out


def test_a_removed_member_is_reported(good_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = rewrite(good_zip, tmp_path / "bad.zip", drop="sub/notes.txt")
    code, out = run(capsys, str(bad))
    assert code == 1 and "MISSING   sub/notes.txt" in out


def test_a_zip_without_provenance_fails(good_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = rewrite(good_zip, tmp_path / "bad.zip", drop=PROVENANCE_FILE)
    code, out = run(capsys, str(bad))
    assert code == 1 and f"the zip holds no {PROVENANCE_FILE}" in out


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p.update(model_id="11111111-1111-1111-1111-111111111111"),
        lambda p: p.update(rounds_completed=30),
        lambda p: p["files"]["FL_global_model.pt"].update(sha256="0" * 64),
    ],
    ids=["model_id", "rounds", "a hash"],
)
def test_an_edited_provenance_is_reported(good_zip: Path, tmp_path: Path, edit: Any) -> None:
    with zipfile.ZipFile(good_zip) as zf:
        provenance = json.loads(zf.read(PROVENANCE_FILE))
    edit(provenance)
    bad = rewrite(good_zip, tmp_path / "bad.zip", change={PROVENANCE_FILE: json.dumps(provenance).encode()})
    result = verify_results_zip(bad)
    assert not result.ok
    assert any("was edited" in p for p in result.problems)


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"files": 3}'])
def test_an_unreadable_provenance_is_reported(good_zip: Path, tmp_path: Path, content: bytes) -> None:
    bad = rewrite(good_zip, tmp_path / "bad.zip", change={PROVENANCE_FILE: content})
    result = verify_results_zip(bad)
    assert not result.ok and result.provenance is None and result.problems


def test_a_member_named_to_escape_is_reported_and_never_written(
    good_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    bad = rewrite(good_zip, work / "bad.zip", change={"../x": b"escaped", "/etc/evil": b"abs"})
    code, out = run(capsys, str(bad))
    assert code == 1
    assert "unsafe member name '../x'" in out and "unsafe member name '/etc/evil'" in out and "EXTRA     ../x" in out
    assert not (tmp_path / "x").exists() and sorted(p.name for p in work.iterdir()) == ["bad.zip"]


def test_a_repeated_member_is_reported(good_zip: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(good_zip.read_bytes())
    with pytest.warns(UserWarning), zipfile.ZipFile(bad, "a") as zf:
        zf.writestr("FL_global_model.pt", b"second copy")
    result = verify_results_zip(bad)
    assert any("appears more than once" in p for p in result.problems)


def test_a_huge_declared_size_is_reported_without_reading_it(
    good_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bomb.zip"
    bad.write_bytes(good_zip.read_bytes())
    set_declared_size(bad, "FL_global_model.pt", 0xFFFFFFF0)
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    result = verify_results_zip(bad)
    assert result.tampered == [("FL_global_model.pt", f"size {0xFFFFFFF0} bytes, recorded {len(MODEL)}")]
    assert "FL_global_model.pt" not in opened


def test_a_member_that_inflates_past_its_declared_size_is_cut_off(good_zip: Path, tmp_path: Path) -> None:
    """Sizes and provenance both lie (small); the member's data is far bigger: reading stops at the lie."""
    with zipfile.ZipFile(good_zip) as zf:
        provenance = json.loads(zf.read(PROVENANCE_FILE))
    provenance["files"]["zeros.bin"] = {"sha256": "0" * 64, "size": 10}
    bad = rewrite(
        good_zip,
        tmp_path / "bad.zip",
        change={"zeros.bin": bytes(20 * 1024 * 1024), PROVENANCE_FILE: json.dumps(provenance).encode()},
    )
    set_declared_size(bad, "zeros.bin", 10)
    result = verify_results_zip(bad)
    assert [name for name, _ in result.tampered] == ["zeros.bin"]


def test_the_byte_limit_bounds_what_is_hashed(good_zip: Path) -> None:
    result = verify_results_zip(good_zip, max_bytes=1024)
    assert not result.ok and "FL_global_model.pt" not in result.verified
    assert any("FL_global_model.pt" in p and "--max-bytes" in p for p in result.problems)


def test_an_app_that_differs_is_reported(good_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = good_zip.parent / "job" / "app"
    (app / "custom" / "trainer.py").write_text("x = 2\n")
    code, out = run(capsys, str(good_zip), "--app", str(app))
    assert code == 1 and "code hash differs" in out


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"plain text, not a zip"])
def test_a_file_that_is_not_a_zip_exits_2(tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.zip"
    path.write_bytes(content)
    code, out = run(capsys, str(path))
    assert code == 2 and "not a readable zip file" in out
    assert run(capsys, str(tmp_path / "missing.zip"))[0] == 2
