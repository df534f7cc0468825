"""ResultsUploader never follows a symlink out of the run folder: what the results zip really holds.

A real dev-mode FlipBackend writes the zip the prod backend would upload; each test opens it and
checks the bytes of every member. Symlinks (to files or folders, inside or outside the run folder)
are skipped, never followed, and counted in the run summary's ``skipped_links``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.backend import FlipBackend
from flip_nvflare.components.provenance import PROVENANCE_FILE
from flip_nvflare.components.results import SKIPPED_LINKS, SUMMARY_FILE, ResultsUploader
from flip_nvflare.constants import FlipEvents
from tests.engine import FakeEngine

MODEL_ID = "6b0f2d4e-1c3a-4e5f-8a7b-9c0d1e2f3a4b"
SECRETS = {name: f"PATIENT-DATA-{name}-must-not-leave".encode() * 50 for name in "ABCDEFG"}


def _outside(tmp_path: Path, name: str, *, folder: bool = False) -> Path:
    """A file (or a folder holding one) outside the run folder, with a secret only it holds."""
    base = tmp_path / "outside"
    base.mkdir(exist_ok=True)
    if folder:
        (base / name).mkdir()
        (base / name / "inside.pth").write_bytes(SECRETS[name])
        return base / name
    (base / f"{name}.bin").write_bytes(SECRETS[name])
    return base / f"{name}.bin"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _run(tmp_path: Path, engine: FakeEngine) -> Path | None:
    """Run the job to its end; return the results zip the dev backend wrote, if any."""
    engine.start_run()
    engine.fire(AppEventType.AFTER_AGGREGATION)
    engine.end_run()
    zips = sorted((tmp_path / "dev_out" / "results" / MODEL_ID).glob("*.zip"))
    assert len(zips) <= 1
    return zips[0] if zips else None


def _engine(tmp_path: Path) -> FakeEngine:
    flip = FlipBackend(mode="dev", model_id=MODEL_ID, dev_output_dir=str(tmp_path / "dev_out"))
    return FakeEngine(tmp_path, components={"flip": flip}, listeners=[ResultsUploader()])


def _members(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _assert_no_secret(members: dict[str, bytes], *names: str) -> None:
    for name in names:
        marker = f"PATIENT-DATA-{name}".encode()
        assert not any(marker in data for data in members.values()), f"secret {name} is in the zip"


def test_links_to_outside_files_as_the_model_and_in_the_results_folder_never_reach_the_zip(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    run_dir = engine.run_dir
    (run_dir / "app_server").mkdir(parents=True)
    (run_dir / "app_server" / "FL_global_model.pt").symlink_to(_outside(tmp_path, "A"))
    _write(run_dir / "app_server" / "best_FL_global_model.pt", b"best weights")
    _write(run_dir / "flip_results" / "cross_val_results.json", b"{}")
    (run_dir / "flip_results" / "notes.txt").symlink_to(_outside(tmp_path, "B"))

    zip_path = _run(tmp_path, engine)

    assert zip_path is not None
    members = _members(zip_path)
    _assert_no_secret(members, "A", "B")
    assert sorted(members) == ["best_FL_global_model.pt", "cross_val_results.json", PROVENANCE_FILE, SUMMARY_FILE]
    assert members["best_FL_global_model.pt"] == b"best weights"
    summary = json.loads(members[SUMMARY_FILE])
    assert summary[SKIPPED_LINKS] == 2
    assert summary["files"] == sorted(members)
    assert [Path(p).name for p in summary["gathered_from"]] == ["best_FL_global_model.pt"]
    assert (tmp_path / "outside" / "A.bin").read_bytes() == SECRETS["A"]
    assert (tmp_path / "outside" / "B.bin").read_bytes() == SECRETS["B"]
    assert engine.fired(FlipEvents.RESULTS_UPLOADED)


def test_a_link_squatting_the_models_name_in_the_results_folder_is_never_zipped(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    run_dir = engine.run_dir
    _write(run_dir / "app_server" / "FL_global_model.pt", b"final weights")
    (run_dir / "flip_results").mkdir()
    (run_dir / "flip_results" / "FL_global_model.pt").symlink_to(_outside(tmp_path, "C"))

    zip_path = _run(tmp_path, engine)

    assert zip_path is not None
    members = _members(zip_path)
    _assert_no_secret(members, "C")
    assert json.loads(members[SUMMARY_FILE])[SKIPPED_LINKS] == 1
    assert (tmp_path / "outside" / "C.bin").read_bytes() == SECRETS["C"]


def test_a_dangling_link_in_the_results_folder_is_never_written_through(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    run_dir = engine.run_dir
    _write(run_dir / "app_server" / "FL_global_model.pt", b"final weights")
    planted = tmp_path / "outside" / "planted.pt"
    planted.parent.mkdir()
    (run_dir / "flip_results").mkdir()
    (run_dir / "flip_results" / "FL_global_model.pt").symlink_to(planted)
    (run_dir / "flip_results" / SUMMARY_FILE).symlink_to(tmp_path / "outside" / "summary.json")

    zip_path = _run(tmp_path, engine)

    assert not planted.exists() and not (tmp_path / "outside" / "summary.json").exists()
    assert zip_path is not None
    members = _members(zip_path)
    assert b"final weights" not in members.values()  # the model's name was taken by the link: not zipped
    assert json.loads(members[SUMMARY_FILE])[SKIPPED_LINKS] == 1  # the summary replaced its link


def test_directory_links_are_neither_gathered_from_nor_zipped(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    run_dir = engine.run_dir
    _write(run_dir / "app_server" / "FL_global_model.pt", b"final weights")
    (run_dir / "models").symlink_to(_outside(tmp_path, "D", folder=True), target_is_directory=True)
    _write(run_dir / "flip_results" / "sub" / "kept.json", b"[]")
    (run_dir / "flip_results" / "linked").symlink_to(_outside(tmp_path, "E", folder=True), target_is_directory=True)
    (run_dir / "flip_results" / "sub" / "loop").symlink_to(run_dir / "flip_results", target_is_directory=True)
    (run_dir / "flip_results" / "run_dir").symlink_to(run_dir, target_is_directory=True)

    zip_path = _run(tmp_path, engine)

    assert zip_path is not None
    members = _members(zip_path)
    _assert_no_secret(members, "D", "E")
    assert sorted(members) == ["FL_global_model.pt", PROVENANCE_FILE, SUMMARY_FILE, "sub/kept.json"]
    assert members["FL_global_model.pt"] == b"final weights"
    assert json.loads(members[SUMMARY_FILE])[SKIPPED_LINKS] == 4  # models, linked, sub/loop, run_dir
    assert (tmp_path / "outside" / "D" / "inside.pth").read_bytes() == SECRETS["D"]
    assert (tmp_path / "outside" / "E" / "inside.pth").read_bytes() == SECRETS["E"]


def test_a_results_folder_that_is_a_link_is_refused_and_nothing_is_written_through_it(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    run_dir = engine.run_dir
    _write(run_dir / "app_server" / "FL_global_model.pt", b"final weights")
    target = _outside(tmp_path, "F", folder=True)
    (run_dir / "flip_results").symlink_to(target, target_is_directory=True)

    zip_path = _run(tmp_path, engine)

    assert zip_path is None
    assert sorted(p.name for p in target.iterdir()) == ["inside.pth"]
    assert engine.fired(FlipEvents.RESULTS_UPLOAD_FAILED) and not engine.fired(FlipEvents.RESULTS_UPLOADED)
    assert (run_dir / "app_server" / "FL_global_model.pt").exists()  # nothing deleted after a failed upload
