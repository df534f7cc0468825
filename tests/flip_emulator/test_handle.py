"""The test helpers: the handle, the fixtures, start/stop, and the in-process server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from flip_emulator.config import EmulatorConfig
from flip_emulator.handle import EmulatorFailed, EmulatorHandle, start_emulator
from flip_emulator.server import EmulatorServer

JOB_VARIABLES = {
    "FLIP_API_INTERNAL_URL",
    "INTERNAL_SERVICE_KEY",
    "FLIP_HUB_API",
    "DATA_ACCESS_API_URL",
    "IMAGING_API_URL",
    "TRUST_INTERNAL_SERVICE_KEY",
    "NET_ID",
    "IMAGES_DIR",
}
S3_VARIABLES = {
    "UPLOADED_FEDERATED_DATA_BUCKET",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
}


def test_session_handle_offers_the_whole_job_environment(flip_emulator_shared: EmulatorHandle) -> None:
    emu = flip_emulator_shared
    env = emu.env(FLIP_HTTP_TIMEOUT="5")
    assert set(env) == JOB_VARIABLES | S3_VARIABLES | {"FLIP_HTTP_TIMEOUT"}
    assert env["FLIP_API_INTERNAL_URL"] == emu.hub_url == f"{emu.hub_base}/api"
    assert env["INTERNAL_SERVICE_KEY"] == emu.hub_key != emu.trust_key == env["TRUST_INTERNAL_SERVICE_KEY"]
    assert httpx.get(f"{env['AWS_ENDPOINT_URL_S3']}/").status_code < 500
    info = emu.info()
    assert "hub_key" not in json.dumps(info) and emu.hub_key not in json.dumps(info)
    assert info["population"]["subjects"] == 60


def test_reset_forgets_everything_of_the_previous_test(flip_emulator_shared: EmulatorHandle) -> None:
    emu = flip_emulator_shared
    model = emu.register_model().model_id
    emu.set_fault("hub.status", error_every=1)
    emu.set_hub_api("h2")
    stray = emu.images_dir / emu.net_id / "ACC-left-over"
    stray.mkdir(parents=True)
    headers = {"X-Internal-Service-Key": emu.hub_key}
    assert httpx.put(f"{emu.hub_url}/model/{model}/status/RUNNING", headers=headers).status_code == 503
    emu.reset()
    assert emu.hub_api == "h1" and emu.env()["FLIP_HUB_API"] == "h1"
    assert emu.faults() == {} and emu.requests() == [] and not stray.exists()
    assert emu.records(model).model is None
    assert (emu.images_dir / emu.net_id / "upload").is_dir()


@pytest.mark.flip_emulator(hub_api="h2", open=True, s3=False, download_concurrency=4, threshold=3)
def test_function_fixture_takes_marker_options(flip_emulator: EmulatorHandle) -> None:
    settings = flip_emulator.info()["settings"]
    assert settings == {
        "hub_api": "h2",
        "open": True,
        "threshold": 3,
        "download_concurrency": 4,
        "download_latency": 0.0,
        "path_prefix": "",
    }
    env = flip_emulator.env()
    assert set(env) == JOB_VARIABLES and env["FLIP_HUB_API"] == "h2"
    assert flip_emulator.bucket is None and flip_emulator.s3_endpoint is None
    flip_emulator.stop()  # what the fixture does at teardown (stopping twice is harmless)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{flip_emulator.hub_base}/health", timeout=1)


def test_start_failure_shows_the_emulators_output(tmp_path: Path) -> None:
    with pytest.raises(EmulatorFailed, match="exited with code 2") as err:
        with start_emulator(tmp_path / "emu", s3=False, extra_args=["--subjects=3"]):
            pass
    assert "subjects must be at least 10" in str(err.value)


def test_emulator_exits_when_the_process_that_started_it_dies(tmp_path: Path, flip_emulator_synthetic: Path) -> None:
    ready = tmp_path / "ready.json"
    launcher = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-m", "flip_emulator", "--hub-port=0", "--trust-port=0",
                          "--data-dir={tmp_path / "data"}", "--synthetic-dir={flip_emulator_synthetic}",
                          "--ready-file={ready}", "--watch-parent"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not os.path.exists({str(ready)!r}):
            time.sleep(0.02)
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", launcher], check=True, timeout=30)
    pid = json.loads(ready.read_text())["pid"]
    for _ in range(100):  # it looks for its parent every so often: give it up to 10 s
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid), "the orphaned emulator kept running"


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_in_process_server_and_admin_key(tmp_path: Path, flip_emulator_synthetic: Path) -> None:
    config = EmulatorConfig(
        hub_port=0,
        trust_port=0,
        data_dir=tmp_path,
        synthetic_dir=flip_emulator_synthetic,
        admin_key="admin-secret",
        hub_key="hub-secret",
        trust_key="trust-secret",
    )
    with EmulatorServer(config, env={}) as server:
        assert server.hub is not None and server.trust is not None
        info = f"{server.hub.url}/admin/info"
        assert httpx.get(info).status_code == 401
        assert httpx.get(info, headers={"X-Emulator-Admin-Key": "wrong"}).status_code == 401
        assert httpx.get(info, headers={"X-Emulator-Admin-Key": "admin-secret"}).status_code == 200
        assert server.env()["INTERNAL_SERVICE_KEY"] == "hub-secret"
        # A refused-connections window on the trust, controlled from the hub's admin routes.
        answer = httpx.post(
            f"{server.hub.url}/admin/down",
            json={"service": "trust", "seconds": 0.5},
            headers={"X-Emulator-Admin-Key": "admin-secret"},
        )
        assert answer.status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.trust.url}/health")
        assert server.trust.wait_up(5)
        assert httpx.get(f"{server.trust.url}/health").status_code == 200
        # Only the hashes of the keys are kept in memory.
        assert server.emulator is not None
        assert "hub-secret" not in repr(vars(server.emulator))
