"""remove_inside never deletes through a symlink: a link is unlinked, whatever it points to is untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from flip_nvflare.core.base import remove_inside
from flip_nvflare.errors import FlipInvalidArgument


def _folder(path: Path) -> Path:
    (path / "scans").mkdir(parents=True)
    (path / "scans" / "img.nii").write_bytes(b"voxels")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    net = tmp_path / "images" / "net-1"
    net.mkdir(parents=True)
    return net


def test_a_link_to_another_folder_inside_the_root_is_unlinked_not_followed(root: Path) -> None:
    other = _folder(root / "ACC2")
    (root / "ACC1").symlink_to(other, target_is_directory=True)

    assert remove_inside(root / "ACC1", [root]) is True

    assert not (root / "ACC1").is_symlink() and not (root / "ACC1").exists()
    assert (other / "scans" / "img.nii").read_bytes() == b"voxels"


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_link_to_something_outside_the_root_is_unlinked_and_its_target_kept(
    root: Path, tmp_path: Path, kind: str
) -> None:
    if kind == "folder":
        target = _folder(tmp_path / "precious")
        kept = target / "scans" / "img.nii"
    else:
        target = kept = tmp_path / "precious.txt"
        target.write_text("keep")
    (root / "ACC1").symlink_to(target, target_is_directory=kind == "folder")

    assert remove_inside(root / "ACC1", [root]) is True

    assert not (root / "ACC1").is_symlink()
    assert kept.exists() and target.exists()


def test_a_dangling_link_is_unlinked(root: Path, tmp_path: Path) -> None:
    (root / "ACC1").symlink_to(tmp_path / "never-there")
    assert remove_inside(root / "ACC1", [root]) is True
    assert not (root / "ACC1").is_symlink() and not (tmp_path / "never-there").exists()


def test_a_link_to_the_root_itself_is_unlinked_and_the_root_kept(root: Path) -> None:
    kept = _folder(root / "ACC2")
    (root / "ACC1").symlink_to(root, target_is_directory=True)
    assert remove_inside(root / "ACC1", [root]) is True
    assert root.is_dir() and (kept / "scans" / "img.nii").exists()


def test_a_path_through_a_linked_folder_is_refused(root: Path, tmp_path: Path) -> None:
    outside = _folder(tmp_path / "elsewhere" / "ACC1")
    (root / "linked").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(FlipInvalidArgument):
        remove_inside(root / "linked" / "ACC1", [root])
    assert (outside / "scans" / "img.nii").exists()


def test_links_inside_a_deleted_folder_are_unlinked_not_followed(root: Path, tmp_path: Path) -> None:
    outside = _folder(tmp_path / "elsewhere")
    folder = _folder(root / "ACC1")
    (folder / "scans" / "more").symlink_to(outside, target_is_directory=True)
    (folder / "file-link").symlink_to(outside / "scans" / "img.nii")

    assert remove_inside(folder, [root]) is True

    assert not folder.exists()
    assert (outside / "scans" / "img.nii").read_bytes() == b"voxels"


def test_a_path_ending_in_dotdot_is_refused(root: Path) -> None:
    _folder(root / "ACC1" / "sub")
    with pytest.raises(FlipInvalidArgument):
        remove_inside(f"{root}/ACC1/sub/..", [root])
    assert (root / "ACC1" / "sub" / "scans" / "img.nii").exists()
