"""A job's model id and flip-nvflare version: resolved when the job starts, refused when unusable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nvflare.apis.event_type import EventType

from flip_nvflare.backend import FlipBackend, get_hub_session
from flip_nvflare.constants import FlipMode
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.jobs.identity import (
    DEV_MODEL_ID,
    check_job_version,
    compatible,
    installed_version,
    resolve_model_id,
)
from tests.engine import FakeEngine

HUB_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
META_ID = "11111111-2222-4333-8444-555555555555"
CONFIG_ID = "99999999-8888-4777-8666-555555555555"


def _custom(tmp_path: Path, config: object) -> Path:
    custom = tmp_path / "custom"
    custom.mkdir(exist_ok=True)
    (custom / "config.json").write_text(json.dumps(config))
    return custom


def test_the_app_config_comes_before_meta_json(tmp_path: Path) -> None:
    custom = _custom(tmp_path, {"FLIP_MODEL_ID": CONFIG_ID})
    meta = {"custom_props": {"model_id": META_ID}}
    assert resolve_model_id(custom_dir=custom, job_meta=meta, mode=FlipMode.PROD) == CONFIG_ID
    assert resolve_model_id(custom_dir=_custom(tmp_path, {}), job_meta=meta, mode=FlipMode.PROD) == META_ID
    assert resolve_model_id(custom_dir=None, job_meta=meta, mode=FlipMode.PROD) == META_ID


def test_dev_falls_back_to_the_all_zero_id_and_prod_refuses(tmp_path: Path) -> None:
    assert resolve_model_id(custom_dir=None, job_meta=None, mode=FlipMode.DEV) == DEV_MODEL_ID
    with pytest.raises(FlipConfigError, match="names no model id"):
        resolve_model_id(custom_dir=_custom(tmp_path, {"FLIP_MODEL_ID": ""}), job_meta={}, mode=FlipMode.PROD)


@pytest.mark.parametrize(
    "bad", ["not-a-uuid", "3fa85f64-5717-4562-b3fc-2c963f66afa6\nDROP", 7, True, {"id": HUB_ID}, "../../etc"]
)
def test_an_id_that_is_not_a_uuid_is_refused_wherever_it_is(tmp_path: Path, bad: object) -> None:
    with pytest.raises(FlipConfigError, match=r"custom/config\.json FLIP_MODEL_ID is not usable"):
        resolve_model_id(custom_dir=_custom(tmp_path, {"FLIP_MODEL_ID": bad}), job_meta=None, mode=FlipMode.DEV)
    with pytest.raises(FlipConfigError, match=r"meta\.json custom_props\.model_id is not usable"):
        resolve_model_id(custom_dir=None, job_meta={"custom_props": {"model_id": bad}}, mode=FlipMode.DEV)


def test_an_unreadable_app_config_is_named(tmp_path: Path) -> None:
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text("{not json")
    with pytest.raises(FlipConfigError, match="cannot be read as JSON"):
        resolve_model_id(custom_dir=custom, job_meta=None, mode=FlipMode.PROD)


def test_the_server_backend_resolves_the_id_at_start_when_the_config_has_none(tmp_path: Path) -> None:
    engine = FakeEngine(
        tmp_path,
        components={"flip": FlipBackend(mode="dev", model_id="{model_id}")},
        job_meta={"custom_props": {"model_id": META_ID}},
    )
    session = get_hub_session(engine.new_context())
    assert session.model_id == META_ID
    session.release("FlipBackend")


@pytest.mark.parametrize(
    ("built", "installed", "ok"),
    [
        ("0.1.0", "0.1.7", True),
        ("0.1.9", "0.1.0", True),
        ("0.1.0", "0.2.0", False),
        ("1.2.0", "1.9.3", True),
        ("1.2.0", "2.0.0", False),
        ("garbage", "0.1.0", False),
    ],
)
def test_compatibility_follows_semantic_versioning(built: str, installed: str, ok: bool) -> None:
    assert compatible(built, installed) is ok


def test_a_job_built_with_an_incompatible_version_is_refused_with_both_versions_named() -> None:
    check_job_version({"custom_props": {"flip_nvflare_version": "0.1.0"}}, installed="0.1.3")
    check_job_version({}, installed="0.1.3")  # a hand-made job records none: accepted
    with pytest.raises(FlipConfigError, match=r"built with flip-nvflare 0\.2\.0.*runs flip-nvflare 0\.1\.3"):
        check_job_version({"custom_props": {"flip_nvflare_version": "0.2.0"}}, installed="0.1.3")
    with pytest.raises(FlipConfigError, match="must be a version"):
        check_job_version({"custom_props": {"flip_nvflare_version": "0.1\n"}}, installed="0.1.3")


def test_a_site_refuses_an_incompatible_job_at_start_run(tmp_path: Path) -> None:
    backend = FlipBackend(mode="dev")
    engine = FakeEngine(
        tmp_path,
        server=False,
        components={"flip": backend},
        job_meta={"custom_props": {"flip_nvflare_version": "99.0.0"}},
    )
    engine.start_run()
    panics = [str(event.data) for event in engine.fired(EventType.FATAL_SYSTEM_ERROR)]
    assert len(panics) == 1 and "cannot run it" in panics[0] and installed_version() in panics[0]
