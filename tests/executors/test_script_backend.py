"""What an external-process Client API script's FLIP() builds from its app's config: the job decides, not the env."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flip_nvflare.core.dev import FLIPStandardDev
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.errors import FlipConfigError, FlipError
from flip_nvflare.executors.script_backend import backend_from_client_config, find_client_config


def _app(tmp_path: Path, mode: str | None, **args: Any) -> Path:
    app = tmp_path / "run" / "app_site-1"
    (app / "config").mkdir(parents=True)
    (app / "custom").mkdir()
    config: dict[str, Any] = {
        "format_version": 2,
        "components": [
            {"id": "flip", "path": "flip_nvflare.backend.FlipBackend", "args": {"mode": "{flip_mode}", **args}}
        ],
    }
    if mode is not None:
        config["flip_mode"] = mode
    (app / "config" / "config_fed_client.json").write_text(json.dumps(config))
    return app / "config" / "config_fed_client.json"


def test_dev_config_builds_a_dev_backend_whatever_the_environment_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLIP_MODE", "prod")
    monkeypatch.setenv("LOCAL_DEV", "false")
    assert isinstance(backend_from_client_config(_app(tmp_path, "dev")), FLIPStandardDev)


def test_prod_config_builds_prod_even_with_dev_data_variables_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEV_DATAFRAME", str(tmp_path / "cohort.csv"))
    monkeypatch.setenv("DEV_IMAGES_DIR", str(tmp_path))
    backend = backend_from_client_config(_app(tmp_path, "prod", check_settings=False))
    assert isinstance(backend, FLIPStandardProd)


def test_a_config_without_a_mode_or_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FlipConfigError, match="sets no flip_mode"):
        backend_from_client_config(_app(tmp_path, None))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"components": []}))
    with pytest.raises(FlipConfigError, match=r"has no flip_nvflare\.backend\.FlipBackend component"):
        backend_from_client_config(broken)
    broken.write_text("{nope")
    with pytest.raises(FlipConfigError, match="cannot be read"):
        backend_from_client_config(broken)


def test_dev_is_refused_when_nvflares_bootstrap_says_the_site_is_secure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap = tmp_path / "bootstrap.json"
    bootstrap.write_text(json.dumps({"secure_mode": True, "site_name": "site-1"}))
    monkeypatch.setenv("NVFLARE_CLIENT_API_BOOTSTRAP", str(bootstrap))
    with pytest.raises(FlipConfigError, match="provisioned \\(secure\\) deployment"):
        backend_from_client_config(_app(tmp_path, "dev"))
    bootstrap.write_text("not json")  # unreadable: the strict case
    with pytest.raises(FlipConfigError, match="secure"):
        backend_from_client_config(_app(tmp_path / "again", "dev"))


def test_site_name_in_dev_paths_comes_from_the_bootstrap_and_cannot_climb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data" / "site-1"
    (data / "images").mkdir(parents=True)
    (data / "cohort.csv").write_text("accession_id,label\nA1,1\n")
    bootstrap = tmp_path / "bootstrap.json"
    monkeypatch.setenv("NVFLARE_CLIENT_API_BOOTSTRAP", str(bootstrap))
    args = {
        "dev_dataframe": f"{tmp_path}/data/{{SITE_NAME}}/cohort.csv",
        "dev_images_dir": f"{tmp_path}/data/{{SITE_NAME}}/images",
    }
    bootstrap.write_text(json.dumps({"secure_mode": False, "site_name": "site-1"}))
    backend = backend_from_client_config(_app(tmp_path, "dev", **args))
    assert list(backend.get_dataframe("p", "q")["accession_id"]) == ["A1"]
    bootstrap.write_text(json.dumps({"secure_mode": False, "site_name": "../site-1"}))
    backend = backend_from_client_config(_app(tmp_path / "climb", "dev", **args))
    with pytest.raises(FlipError):  # the placeholder stays unresolved: no such file
        backend.get_dataframe("p", "q")


def test_the_config_is_found_from_the_script_or_the_app_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _app(tmp_path, "dev")
    app = config.parent.parent
    monkeypatch.setattr("sys.argv", [str(app / "custom" / "trainer.py")])
    assert find_client_config() == config
    monkeypatch.setattr("sys.argv", ["-c"])
    monkeypatch.chdir(app)
    assert find_client_config() == config
    monkeypatch.chdir(tmp_path)
    assert find_client_config() is None
