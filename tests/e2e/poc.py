"""A real multi-process NVFlare deployment on this machine: ``nvflare poc`` with a server and 2 clients.

Each participant is started by its own ``nvflare poc start -p NAME`` in a new process group, with
only the environment its role needs: the server gets the hub and S3 settings, the clients the
trust settings (a client process never holds the hub key). HOME and NVFLARE_POC_WORKSPACE point
into the test's folder, so the user's NVFlare configuration is never read or written. ``stop()``
asks NVFlare to stop, then kills whatever is left of every process group this object started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SERVER_ENV = (
    "FLIP_API_INTERNAL_URL",
    "INTERNAL_SERVICE_KEY",
    "FLIP_HUB_API",
    "UPLOADED_FEDERATED_DATA_BUCKET",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)
CLIENT_ENV = ("DATA_ACCESS_API_URL", "IMAGING_API_URL", "TRUST_INTERNAL_SERVICE_KEY", "NET_ID", "IMAGES_DIR")
ADMIN = "admin@nvidia.com"
#: NVFlare's POC project (``nvflare poc prepare -n 2``), with the server's port left open.
PROJECT_YML = """\
api_version: 3
name: example_project
description: flip-nvflare end-to-end test deployment
participants:
  - name: server
    type: server
    org: nvidia
    default_host: localhost
    fed_learn_port: {port}
    admin_port: {admin_port}
  - {{name: admin@nvidia.com, type: admin, org: nvidia, role: project_admin}}
  - {{name: site-1, type: client, org: nvidia}}
  - {{name: site-2, type: client, org: nvidia}}
builders:
  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder
    args: {{template_file: [master_template.yml]}}
  - path: nvflare.lighter.impl.static_file.StaticFileBuilder
    args: {{config_folder: config}}
  - path: nvflare.lighter.impl.cert.CertBuilder
  - path: nvflare.lighter.impl.signature.SignatureBuilder
"""


class PocDeployment:
    """One POC deployment (server, site-1, site-2) under ``root``."""

    def __init__(self, root: Path, flip_env: dict[str, str]) -> None:
        self.root = root
        self.workspace = root / "poc"
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self._flip_env = flip_env
        self._groups: list[int] = []
        self.log = root / "poc_commands.log"

    @property
    def kit_root(self) -> Path:
        return self.workspace / "example_project" / "prod_00"

    def site_dir(self, name: str) -> Path:
        return self.kit_root / name

    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV + CLIENT_ENV}
        bin_dir = str(Path(sys.executable).parent)
        env.update(HOME=str(self.home), NVFLARE_POC_WORKSPACE=str(self.workspace))
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env.update(extra or {})
        return env

    def _nvflare(self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 120) -> None:
        command = [str(Path(sys.executable).with_name("nvflare")), "poc", *args]
        with open(self.log, "ab") as out:
            out.write(f"\n$ {' '.join(command)}\n".encode())
            out.flush()
            process = subprocess.Popen(
                command,
                env=self._env(extra_env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._groups.append(process.pid)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"nvflare poc {' '.join(args)} did not finish in {timeout:g} s; see {self.log}"
            ) from None
        assert code == 0, f"nvflare poc {' '.join(args)} exited with {code}; see {self.log}"

    def prepare(self) -> None:
        """Provision the deployment on free ports (other POCs on this machine use NVFlare's 8002 and 8003)."""
        project = self.root / "project.yml"
        project.write_text(PROJECT_YML.format(port=_free_port(), admin_port=_free_port()))
        self._nvflare("prepare", "-i", str(project))

    def install_job_watcher(self, heart_beat_timeout: float) -> None:
        """Configure FLIP's JobWatcher in the server's ``local/resources.json`` (as docs/deployment.md says),
        and the server's client heartbeat timeout (how long a silent site stays registered)."""
        import json

        local = self.site_dir("server") / "local"
        path = local / "resources.json"
        if not path.is_file():
            path.write_text((local / "resources.json.default").read_text())
        config = json.loads(path.read_text())
        config["components"].append(
            {"id": "flip_job_watcher", "path": "flip_nvflare.components.job_watch.JobWatcher", "args": {}}
        )
        allowed = config.get("class_allow_list")
        if isinstance(allowed, list):
            allowed.append("flip_nvflare.components.job_watch.JobWatcher")
        for server in config.get("servers", []):
            server["heart_beat_timeout"] = heart_beat_timeout
        path.write_text(json.dumps(config, indent=4))

    def start(self) -> None:
        server_env = {k: self._flip_env[k] for k in SERVER_ENV if k in self._flip_env}
        client_env = {k: self._flip_env[k] for k in CLIENT_ENV if k in self._flip_env}
        self._nvflare("start", "-p", "server", extra_env=server_env)
        self._nvflare("start", "-p", "site-1", "-p", "site-2", extra_env=client_env)

    def session(self) -> Any:
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        return new_secure_session(ADMIN, str(self.kit_root / ADMIN), timeout=60)

    def run_job(self, job: Path, timeout: float = 240) -> dict[str, Any]:
        """Submit a job through the admin API and wait for it to end; return its final meta."""
        session = self.session()
        try:
            job_id = session.submit_job(str(job))
            meta: dict[str, Any] = session.wait_for_job(job_id, timeout=timeout, poll_interval=1.0)
            meta["job_id"] = job_id
            return meta
        finally:
            session.close()

    def stop(self) -> None:
        """Stop the deployment, then make sure no process this object started is left."""
        try:
            if self.kit_root.is_dir():
                self._nvflare("stop", timeout=90)
        except AssertionError:
            pass
        finally:
            self._kill_groups()

    def _kill_groups(self) -> None:
        deadline = time.monotonic() + 10
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in self._groups:
                try:
                    os.killpg(group, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            while time.monotonic() < deadline and any(_group_alive(g) for g in self._groups):
                time.sleep(0.2)
            if not any(_group_alive(g) for g in self._groups):
                return
            deadline = time.monotonic() + 5

    def alive_groups(self) -> list[int]:
        return [g for g in self._groups if _group_alive(g)]

    # ------------------------------------------------------------------ failing a site on purpose

    def site_pids(self, name: str, *, worker: bool) -> list[int]:
        """The running processes of site ``name``: its job processes (``worker``) or its client process."""
        site = str(self.site_dir(name))
        module = f"nvflare.private.fed.app.client.{'worker_process' if worker else 'client_train'}"
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            words = [a.decode(errors="replace") for a in args]
            if module in words and any(w.rstrip("/") == site for w in words):
                found.append(int(entry.name))
        return found

    def kill_job_processes(self, name: str) -> list[int]:
        """SIGKILL the site's job processes only (what an out-of-memory kill does)."""
        pids = self.site_pids(name, worker=True)
        for pid in pids:
            _kill(pid)
        return pids

    def kill_site(self, name: str, *, for_good: bool = False) -> list[int]:
        """SIGKILL every process of the site; the kit's restart loop brings its client back unless ``for_good``."""
        pids = []
        if for_good:
            daemon = self.site_dir(name) / "daemon_pid.fl"
            if daemon.is_file():
                pids.append(int(daemon.read_text().strip()))
        pids += self.site_pids(name, worker=False) + self.site_pids(name, worker=True)
        for pid in pids:
            _kill(pid)
        return pids

    def start_site(self, name: str) -> None:
        """Start a site again (after ``kill_site(for_good=True)``), in a new process group."""
        for stale in ("daemon_pid.fl", "pid.fl", "shutdown.fl", "restart.fl"):
            (self.site_dir(name) / stale).unlink(missing_ok=True)
        client_env = {k: self._flip_env[k] for k in CLIENT_ENV if k in self._flip_env}
        self._nvflare("start", "-p", name, extra_env=client_env)

    def client_names(self) -> list[str]:
        """The clients the server has registered now (admin API)."""
        session = self.session()
        try:
            return sorted(c.name for c in session.get_system_info().client_info)
        finally:
            session.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` is still running (killed ones may linger as zombies until reaped)."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state, _, pgid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgid) == group and state != "Z":
            return True
    return False
