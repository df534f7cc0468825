from __future__ import annotations

from pathlib import Path

import pytest

from flip_nvflare.constants import HubApi, ModelStatus, ResourceType, default_trust_name
from flip_nvflare.core.base import (
    as_model_status,
    as_resource_types,
    check_accession_id,
    check_model_id,
    check_round,
    finite_float,
    remove_inside,
)
from flip_nvflare.errors import FlipConfigError, FlipInvalidArgument


@pytest.mark.parametrize("value", ["ACC-001", "a.b_c~d-1", "X" * 64])
def test_safe_accession_ids_pass(value: str) -> None:
    assert check_accession_id(value) == value


@pytest.mark.parametrize("value", ["", ".", "..", "../etc", "a/b", "a\\b", "a b", "é", "a%2Fb", None, 12])
def test_unsafe_accession_ids_are_refused_without_echo(value: object) -> None:
    with pytest.raises(FlipInvalidArgument) as err:
        check_accession_id(value)
    if isinstance(value, str) and len(value) > 2:
        assert value not in str(err.value)


def test_model_id_must_be_a_uuid() -> None:
    assert check_model_id("3FA85F64-5717-4562-B3FC-2C963F66AFA6") == "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    with pytest.raises(FlipInvalidArgument, match="UUID"):
        check_model_id("model-1")


@pytest.mark.parametrize("value", [-1, 1.0, True, "2"])
def test_round_must_be_a_non_negative_int(value: object) -> None:
    with pytest.raises(FlipInvalidArgument):
        check_round(value)


def test_resource_types_normalised() -> None:
    assert as_resource_types(ResourceType.SEG) == [ResourceType.SEG]
    assert as_resource_types(["nifti", ResourceType.SEG, "NIFTI"]) == [ResourceType.NIFTI, ResourceType.SEG]
    with pytest.raises(FlipInvalidArgument):
        as_resource_types("JPEG")
    with pytest.raises(FlipInvalidArgument):
        as_resource_types([])
    assert ResourceType.SEG.assessor_type == "assessor"
    assert ResourceType.NIFTI.assessor_type == "scan"


def test_status_names_per_hub_generation() -> None:
    assert as_model_status("PREPARED") is ModelStatus.PREPARED
    with pytest.raises(FlipInvalidArgument):
        as_model_status("DONE")
    assert HubApi.H1.status_name(ModelStatus.TRAINING_STARTED) == "TRAINING_STARTED"
    assert HubApi.H2.status_name(ModelStatus.TRAINING_STARTED) == "RUNNING"
    assert HubApi.H1.status_name(ModelStatus.RESULTS_UPLOAD_FAILED) == "ERROR"
    assert HubApi.H2.status_name(ModelStatus.RESULTS_UPLOAD_FAILED) == "RESULTS_UPLOAD_FAILED"


def test_finite_float_and_trust_names() -> None:
    assert finite_float("1.5") == 1.5
    assert finite_float(float("nan")) is None
    assert finite_float(float("-inf")) is None
    assert finite_float("x") is None
    assert default_trust_name("site-12") == "Trust_12"
    assert default_trust_name("Trust_3") == "Trust_3"
    assert default_trust_name("hospital-a") == "hospital-a"


def test_remove_inside_refuses_outside_and_root(tmp_path: Path) -> None:
    root = tmp_path / "net"
    inside = root / "job1" / "acc"
    inside.mkdir(parents=True)
    (inside / "f.nii").write_bytes(b"x")
    outside = tmp_path / "other"
    outside.mkdir()
    with pytest.raises(FlipInvalidArgument):
        remove_inside(outside, [root])
    with pytest.raises(FlipInvalidArgument):
        remove_inside(root, [root])
    with pytest.raises(FlipInvalidArgument):
        remove_inside(root / ".." / "other", [root])
    with pytest.raises(FlipConfigError):
        remove_inside(inside, [])
    assert remove_inside(inside, [root]) is True
    assert not inside.exists() and root.exists() and outside.exists()
    assert remove_inside(inside, [root]) is False


def test_remove_inside_does_not_follow_a_symlink_out(tmp_path: Path) -> None:
    root = tmp_path / "net"
    root.mkdir()
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    (root / "link").symlink_to(target)
    assert remove_inside(root / "link", [root]) is True  # the link is unlinked, never followed
    assert not (root / "link").is_symlink()
    assert (target / "keep.txt").exists()
