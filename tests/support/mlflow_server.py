"""A real MLflow tracking server for tests: ``mlflow server`` in a subprocess, SQLite store, local artifacts.

It can be stopped and started again on the same port and store, to take MLflow down for part of a
run. Every process it starts is in its own process group and is stopped by :meth:`MlflowServer.stop`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

#: Real seconds allowed for the server to answer /health (the first start migrates the database).
START_TIMEOUT = 90.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend store and served artifacts under ``root``.

    Args:
        root: Folder for the store, the artifacts and the server's log.
        port: The port (a free one if None).
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        root.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def start(self) -> MlflowServer:
        """Start the server (returns at once; :meth:`wait_ready` waits for it)."""
        mlflow = Path(sys.executable).with_name("mlflow")
        self._log = open(self.root / "server.log", "ab")  # closed in stop()
        self._process = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--backend-store-uri",
                self.store_uri,
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            cwd=self.root,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def healthy(self) -> bool:
        """Whether the server answers /health now."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until /health answers.

        Raises:
            RuntimeError: The server exited or did not answer within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if self._process is not None and self._process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"mlflow server did not start; its log: {self.root / 'server.log'}")

    def stop(self) -> None:
        """Stop the server and every process it started (its process group)."""
        process, self._process = self._process, None
        if process is not None:
            for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 15.0)):
                try:
                    os.killpg(process.pid, sig)  # the group: the server, its workers and job runner
                except ProcessLookupError:
                    break
                try:
                    process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:
                os.killpg(process.pid, signal.SIGKILL)  # what the group leader left behind
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MlflowServer:
        self.start().wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
