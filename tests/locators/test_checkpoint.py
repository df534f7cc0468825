from pathlib import Path

import numpy as np
import pytest
import torch

from flip_nvflare.errors import FlipConfigError
from flip_nvflare.locators.checkpoint import load_checkpoint_dxo, resolve_checkpoints


def _state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}


def test_checkpoints_resolve_inside_the_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.pt").write_bytes(b"x")
    (tmp_path / "sub" / "b.pt").write_bytes(b"x")
    found = resolve_checkpoints({"a": {"checkpoint": "a.pt"}, "b.v2": {"checkpoint": "sub/b.pt"}}, tmp_path)
    assert found == {"a": (tmp_path / "a.pt").resolve(), "b.v2": (tmp_path / "sub" / "b.pt").resolve()}


def test_every_bad_checkpoint_is_reported_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (tmp_path / "outside.pt").write_bytes(b"x")
    (folder / "link.pt").symlink_to(tmp_path / "outside.pt")
    models = {
        "up": {"checkpoint": "../outside.pt"},
        "abs": {"checkpoint": str(tmp_path / "outside.pt")},
        "link": {"checkpoint": "link.pt"},
        "gone": {"checkpoint": "gone.pt"},
        "no file": {"checkpoint": "x.pt"},
        "empty": {},
    }
    with pytest.raises(FlipConfigError) as info:
        resolve_checkpoints(models, folder)
    text = str(info.value)
    for expected in (
        "model 'up': checkpoint '../outside.pt' is outside the checkpoints folder",
        "model 'abs': checkpoint",
        "model 'link': checkpoint 'link.pt' is outside the checkpoints folder",
        "model 'gone': checkpoint 'gone.pt' not found",
        "model name 'no file' is not",
        "model 'empty' names no checkpoint",
    ):
        assert expected in text
    with pytest.raises(FlipConfigError, match="does not exist on the server"):
        resolve_checkpoints({"a": {"checkpoint": "a.pt"}}, tmp_path / "nowhere")


@pytest.mark.parametrize("wrap", [False, True])
def test_checkpoint_becomes_a_weights_dxo(tmp_path: Path, wrap: bool) -> None:
    path = tmp_path / "model.pt"
    torch.save({"model": _state(), "train_conf": {"x": 1}} if wrap else _state(), path)
    dxo = load_checkpoint_dxo(path)
    assert dxo.data_kind == "WEIGHTS"
    assert sorted(dxo.data) == ["b", "w"]
    np.testing.assert_array_equal(np.asarray(dxo.data["w"]), np.arange(6).reshape(2, 3))
