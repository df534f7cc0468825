"""``flip-nvflare demo --tracking mlflow``: the store it picks, the tracker it adds to the job, its arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flip_nvflare_demo.cli import main
from flip_nvflare_demo.tracking import TRACKER_ID, TRACKER_PATH, DemoTracking


def job_with_server_config(root: Path) -> Path:
    config_dir = root / "job" / "app" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "config_fed_server.json").write_text(json.dumps({"components": [{"id": "flip"}]}))
    return root / "job"


def server_components(job: Path) -> list[dict[str, object]]:
    config = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    components: list[dict[str, object]] = config["components"]
    return components


def test_without_a_tracking_uri_the_demo_keeps_a_sqlite_store_in_its_workdir(tmp_path: Path) -> None:
    tracking = DemoTracking.for_workdir(tmp_path / "demo", environ={})
    store = (tmp_path / "demo" / "mlflow").resolve()
    assert tracking.local and tracking.tracking_uri == f"sqlite:///{store / 'mlflow.db'}"
    assert tracking.ui_command() == f"mlflow ui --backend-store-uri sqlite:///{store / 'mlflow.db'}"
    job = job_with_server_config(tmp_path)
    tracking.add_to_job(job)
    tracking.add_to_job(job)  # once, whatever happens
    components = server_components(job)
    assert [c["id"] for c in components] == ["flip", TRACKER_ID]  # last: it finishes after the hub is drained
    assert components[-1] == {
        "id": TRACKER_ID,
        "path": TRACKER_PATH,
        "args": {"tracking_uri": tracking.tracking_uri, "artifact_location": (store / "artifacts").as_uri()},
    }


def test_a_tracking_uri_from_the_environment_stays_out_of_the_job(tmp_path: Path) -> None:
    tracking = DemoTracking.for_workdir(tmp_path, environ={"MLFLOW_TRACKING_URI": "https://u:pw@mlflow.example"})
    job = job_with_server_config(tmp_path)
    tracking.add_to_job(job)
    assert server_components(job)[-1]["args"] == {}
    assert "pw" not in tracking.shown_uri() and "pw" not in tracking.ui_command()
    assert not (tmp_path / "mlflow").exists()


def test_tracking_is_for_the_dev_demo(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--prod", "--tracking", "mlflow"])
    assert "--tracking applies to the dev demo" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--tracking", "wandb"])
