"""Who may use the admin routes, and what ``flip-nvflare emulate --open`` warns about.

Without an admin key, the admin routes answer only loopback clients whose ``Host`` names a loopback
address (or ``localhost``) on the port they connected to, and whose ``Origin`` (if any) is such an
address too: a web page that rebinds its own name to 127.0.0.1, or posts to the emulator from
another origin, gets 403. With an admin key, the key is what counts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from flip_emulator.admin import local_admin_problem
from flip_emulator.config import EmulatorConfig
from flip_emulator.handle import EmulatorHandle
from flip_emulator.server import EmulatorServer

MODEL = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


@pytest.mark.parametrize(
    ("client", "host", "origin", "allowed"),
    [
        ("127.0.0.1", "127.0.0.1:8001", None, True),
        ("127.0.0.1", "localhost:8001", None, True),
        ("127.0.0.1", "LocalHost:8001", "http://localhost:8001", True),
        ("127.0.0.5", "127.0.0.5:8001", None, True),
        ("::1", "[::1]:8001", "http://[::1]:8001", True),
        ("::ffff:127.0.0.1", "127.0.0.1:8001", None, True),
        ("127.0.0.1", "attacker.example:8001", None, False),  # DNS rebinding: the page's own name
        ("127.0.0.1", "attacker.example", None, False),
        ("127.0.0.1", "127.0.0.1:8002", None, False),  # another port
        ("127.0.0.1", "127.0.0.1", None, False),  # port 80
        ("127.0.0.1", "0.0.0.0:8001", None, False),
        ("127.0.0.1", "localhost.:8001", None, False),
        ("127.0.0.1", "127.0.0.1:8001:1", None, False),
        ("127.0.0.1", "[::1:8001", None, False),
        ("127.0.0.1", None, None, False),
        ("127.0.0.1", "127.0.0.1:8001", "https://attacker.example", False),  # a cross-site form post
        ("127.0.0.1", "127.0.0.1:8001", "null", False),
        ("127.0.0.1", "127.0.0.1:8001", "http://localhost:3000", False),
        ("10.1.2.3", "127.0.0.1:8001", None, False),  # another machine
        ("192.168.0.7", "localhost:8001", None, False),
        (None, "127.0.0.1:8001", None, False),
        ("testclient", "127.0.0.1:8001", None, False),
    ],
)
def test_local_admin_rule(client: str | None, host: str | None, origin: str | None, allowed: bool) -> None:
    problem = local_admin_problem(client_host=client, host_header=host, origin=origin, port=8001)
    assert (problem is None) == allowed, problem


def test_foreign_host_or_origin_is_refused_over_http(flip_emulator_shared: EmulatorHandle) -> None:
    emu = flip_emulator_shared
    for base in (emu.hub_base, emu.trust_url):
        port = _port(base)
        url = f"{base}/admin/info"
        rebound = httpx.get(url, headers={"Host": f"attacker.example:{port}"})
        assert rebound.status_code == 403, rebound.text
        assert "X-Emulator-Admin-Key" in rebound.json()["detail"]
        assert httpx.get(url, headers={"Host": f"127.0.0.1:{port + 1}"}).status_code == 403
        assert httpx.post(f"{base}/admin/reset", headers={"Origin": "https://attacker.example"}).status_code == 403
        assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
        assert httpx.get(url, headers={"Origin": f"http://127.0.0.1:{port}"}).status_code == 200
        assert httpx.get(url).status_code == 200
    # The service routes themselves are not bound to a Host (the real ones sit behind ingresses).
    headers = {"Host": "hub.example", "X-Internal-Service-Key": emu.hub_key}
    model = emu.register_model().model_id
    assert httpx.put(f"{emu.hub_url}/model/{model}/status/INITIATED", headers=headers).status_code == 200


def test_the_admin_key_admits_any_host(tmp_path: Path, flip_emulator_synthetic: Path) -> None:
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
        for base in (server.hub.url, server.trust.url):
            url = f"{base}/admin/info"
            foreign = {"Host": "emulator.example:443", "Origin": "https://emulator.example"}
            assert httpx.get(url, headers={**foreign, "X-Emulator-Admin-Key": "admin-secret"}).status_code == 200
            assert httpx.get(url, headers=foreign).status_code == 401
            assert httpx.get(url, headers={**foreign, "X-Emulator-Admin-Key": "wrong"}).status_code == 401
            assert httpx.get(url).status_code == 401  # a configured key is needed from loopback too


def _command() -> list[str]:
    script = shutil.which("flip-nvflare", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script, "emulate"]
    return [sys.executable, "-m", "flip_emulator"]


def test_open_mode_warns_on_stderr_what_it_exposes(tmp_path: Path, flip_emulator_synthetic: Path) -> None:
    ready = tmp_path / "ready.json"
    env = {k: v for k, v in os.environ.items() if k != "FLIP_EMULATOR_ADMIN_KEY"}
    args = [
        *_command(),
        "--open",
        "--hub-port=0",
        "--trust-port=0",
        f"--data-dir={tmp_path / 'data'}",
        f"--synthetic-dir={flip_emulator_synthetic}",
        f"--ready-file={ready}",
    ]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        urls = json.loads(ready.read_text())["urls"]
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    hub_port, trust_port = _port(urls["hub"]), _port(urls["trust"])
    warning = err[err.index("Warning: --open") :]
    for fragment in (
        "any model id",
        "project envelope",
        f"port {hub_port}",
        f"port {trust_port}",
        "/admin",
        "/admin/records",
        "recorded",
        "statuses, metrics and logs",
        "every process on this machine",
        "--admin-key",
    ):
        assert fragment in warning, (fragment, warning)
    assert "Warning: --open" not in out
