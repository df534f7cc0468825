"""Running the emulator: one uvicorn server per service in its own thread, and moto's S3 server.

Each service owns its listening socket. A "refuse" down window shuts the service's server
(closing the socket, so connections are refused) and starts a new one on the same port when the
window ends. The whole emulator starts in well under the 5 s budget on a small machine.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from flip_emulator.config import EmulatorConfig, parse_bucket
from flip_emulator.state import Emulator

logger = logging.getLogger(__name__)

S3_ACCESS_KEY = "testing"
S3_SECRET_KEY = "testing"
S3_REGION = "us-east-1"


class EmulatorStartError(RuntimeError):
    """The emulator could not start (e.g. a port is in use); the message says how to fix it."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # every keep-alive response waits 40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


class ServiceRunner:
    """Serves one ASGI app on one port, in a thread, with stop and down-window control.

    Args:
        name: ``hub`` or ``trust``.
        app: The ASGI app.
        host: Address to listen on.
        port: Port (0 picks a free one; after start, :attr:`port` is the real one).
        access_log: Print a line per request.
    """

    def __init__(self, name: str, app: Any, host: str, port: int, *, access_log: bool = False) -> None:
        import uvicorn

        from flip_emulator.asgi import ClosableH11Protocol

        self.name = name
        self.host = host
        self.port = port
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=access_log,
            timeout_graceful_shutdown=1,
            loop="asyncio",
            http=ClosableH11Protocol,  # h11, able to drop a connection unanswered (fault drop_connection)
            ws="none",
        )
        self._server: Any = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._serving = threading.Event()
        self._lock = threading.Lock()
        self._down_until = 0.0

    @property
    def url(self) -> str:
        """``http://host:port`` of the service (on loopback when it listens on every address).

        Loopback, not ``0.0.0.0``, because the admin routes answer only a ``Host`` that names a
        loopback address (unless an admin key is set).
        """
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Bind the port and start serving; return once the service accepts connections.

        Raises:
            EmulatorStartError: The port is in use or the server did not come up.
        """
        try:
            self._socket = _bind(self.host, self.port)
        except OSError as exc:
            raise EmulatorStartError(
                f"The {self.name} cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                f"choose another port with --{self.name}-port, or 0 for any free port."
            ) from None
        self.port = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name=f"flip-emulator-{self.name}", daemon=True)
        self._thread.start()
        if not self._wait_serving(timeout):
            raise EmulatorStartError(f"The {self.name} did not start within {timeout:g} s.")

    def _wait_serving(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self._server
            if server is not None and server.started and self._serving.is_set():
                return True
            if self._thread is not None and not self._thread.is_alive():
                return False
            time.sleep(0.01)
        return False

    def _run(self) -> None:
        import uvicorn

        while not self._stop.is_set():
            sock = self._socket
            if sock is None:
                sock = self._rebind()
                if sock is None:
                    return
            server = uvicorn.Server(self._config)
            with self._lock:
                self._server = server
                self._socket = None
            self._serving.set()
            try:
                server.run(sockets=[sock])
            except BaseException:  # pragma: no cover - logged, then the runner ends
                logger.exception("The %s server failed.", self.name)
                return
            finally:
                self._serving.clear()
            # Down window: wait until it ends (it may be extended meanwhile) or is ended early.
            while not self._stop.is_set():
                remaining = self._down_until - time.monotonic()
                if remaining <= 0 or self._wake.wait(remaining):
                    break
            self._wake.clear()

    def _rebind(self) -> socket.socket | None:
        for _ in range(100):
            if self._stop.is_set():
                return None
            try:
                return _bind(self.host, self.port)
            except OSError:
                time.sleep(0.05)
        logger.error("The %s could not listen on port %d again after a down window.", self.name, self.port)
        return None

    def go_down(self, seconds: float) -> None:
        """Stop listening (connections are refused) and listen again after ``seconds``.

        Returns once the listening socket is closed.
        """
        with self._lock:
            server = self._server
            self._down_until = time.monotonic() + seconds
            self._wake.clear()
        if server is None:
            return
        server.should_exit = True
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            listeners = getattr(server, "servers", [])
            if self._stop.is_set() or not any(s.is_serving() for s in listeners):
                return
            time.sleep(0.01)

    def bring_up(self) -> None:
        """End a down window now (the service listens again shortly)."""
        with self._lock:
            self._down_until = 0.0
        self._wake.set()

    def wait_up(self, timeout: float) -> bool:
        """Wait until the service accepts connections again (after a down window)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and wait for the thread to end (safe to call more than once)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            server = self._server
        if server is not None:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class S3Server:
    """moto's S3 server in a thread, with the results bucket created.

    Args:
        host: Address to listen on.
        port: Port (0 picks a free one).
        bucket: ``s3://bucket[/prefix]`` to create.
    """

    def __init__(self, host: str, port: int, bucket: str) -> None:
        self.host = host
        self.port = port
        self.bucket, _ = parse_bucket(bucket)
        self._server: Any = None

    @property
    def url(self) -> str:
        """The endpoint URL."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start the server and create the bucket.

        Raises:
            EmulatorStartError: moto is not installed or the server did not start.
        """
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise EmulatorStartError(
                "--s3 needs moto's server: pip install 'moto[server]' (it is part of flip-nvflare[dev])."
            ) from None
        import httpx

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        try:
            self._server.start()
        except OSError as exc:
            raise EmulatorStartError(f"The S3 server cannot listen on port {self.port}: {exc}") from None
        self.port = int(self._server.get_host_and_port()[1])
        # moto accepts unsigned requests; creating the bucket also loads its S3 backend now.
        response = httpx.put(f"{self.url}/{self.bucket}", timeout=30)
        if response.status_code not in (200, 409):
            raise EmulatorStartError(f"Creating the bucket {self.bucket} failed: HTTP {response.status_code}.")

    def stop(self) -> None:
        """Stop the server."""
        if self._server is not None:
            self._server.stop()
            self._server = None


class EmulatorServer:
    """Both services (and optionally S3) for one configuration.

    Args:
        config: The configuration; it is resolved (keys, folders) on :meth:`start`.
        env: Environment for keys given by variables (default ``os.environ``).
    """

    def __init__(self, config: EmulatorConfig, env: dict[str, str] | None = None) -> None:
        self.config = config.resolved(os.environ if env is None else env)
        self.emulator: Emulator | None = None
        self.hub: ServiceRunner | None = None
        self.trust: ServiceRunner | None = None
        self.s3: S3Server | None = None
        self.started_in: float | None = None

    def start(self) -> None:
        """Prepare the data, start the services and write the ready file.

        Raises:
            EmulatorStartError: Something could not start; nothing is left running.
        """
        from flip_emulator.hub import create_hub_app
        from flip_emulator.synthetic import ensure_synthetic
        from flip_emulator.trust import create_trust_app

        t0 = time.monotonic()
        config = self.config
        assert config.synthetic_dir is not None
        try:
            # The database now; the image archive (slower) in the background once the services answer.
            synthetic = ensure_synthetic(config.synthetic_dir, seed=config.seed, subjects=config.subjects, images=False)
        except (OSError, ValueError) as exc:
            raise EmulatorStartError(f"The synthetic population could not be prepared: {exc}") from None
        try:
            emulator = Emulator(config, synthetic)
        except OSError as exc:
            raise EmulatorStartError(f"The data folder {config.data_dir} cannot be used: {exc}") from None
        self.emulator = emulator
        try:
            self.hub = ServiceRunner(
                "hub", create_hub_app(emulator), config.host, config.hub_port, access_log=config.access_log
            )
            self.trust = ServiceRunner(
                "trust", create_trust_app(emulator), config.host, config.trust_port, access_log=config.access_log
            )
            self.hub.start()
            self.trust.start()
            emulator.urls.update(hub=self.hub.url, trust=self.trust.url)
            emulator.controls.update(hub=self.hub, trust=self.trust)
            emulator.prepare_images_in_background()
            if config.s3:
                self.s3 = S3Server(config.host, config.s3_port, config.bucket)
                self.s3.start()
                emulator.urls["s3"] = self.s3.url
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        if config.ready_file is not None:
            self._write_ready_file(config.ready_file)

    def _write_ready_file(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps({"pid": os.getpid(), **self.describe()}, indent=2))
        os.replace(partial, path)

    def describe(self) -> dict[str, Any]:
        """URLs, folders and settings of the running emulator (no keys)."""
        from flip_emulator.admin import describe

        assert self.emulator is not None
        return describe(self.emulator)

    def env(self) -> dict[str, str]:
        """The environment variables a prod-mode job needs to use this emulator (keys included)."""
        assert self.emulator is not None and self.hub is not None and self.trust is not None
        return job_env(
            hub_url=self.hub.url,
            trust_url=self.trust.url,
            hub_key=self.config.hub_key or "",
            trust_key=self.config.trust_key or "",
            net_id=self.config.net_id,
            images_dir=str(self.config.images_dir),
            hub_api=self.emulator.settings.hub_api.value,
            bucket=self.config.bucket if self.s3 is not None else None,
            s3_url=self.s3.url if self.s3 is not None else None,
        )

    def stop(self) -> None:
        """Stop everything that was started (safe to call more than once)."""
        if self.emulator is not None:
            self.emulator.stopping.set()
        # Stop everything at once: each part takes a few hundred milliseconds to wind down.
        stoppers = [threading.Thread(target=part.stop) for part in (self.hub, self.trust, self.s3) if part is not None]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        self.s3 = None
        if self.emulator is not None:
            self.emulator.store.close()
            self.emulator = None

    def __enter__(self) -> EmulatorServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def job_env(
    *,
    hub_url: str,
    trust_url: str,
    hub_key: str,
    trust_key: str,
    net_id: str,
    images_dir: str,
    hub_api: str,
    bucket: str | None,
    s3_url: str | None,
) -> dict[str, str]:
    """The environment of a prod-mode job that talks to an emulator."""
    env = {
        "FLIP_API_INTERNAL_URL": f"{hub_url}/api",
        "INTERNAL_SERVICE_KEY": hub_key,
        "FLIP_HUB_API": hub_api,
        "DATA_ACCESS_API_URL": trust_url,
        "IMAGING_API_URL": trust_url,
        "TRUST_INTERNAL_SERVICE_KEY": trust_key,
        "NET_ID": net_id,
        "IMAGES_DIR": images_dir,
    }
    if bucket is not None and s3_url is not None:
        env.update(
            {
                "UPLOADED_FEDERATED_DATA_BUCKET": bucket,
                "AWS_ENDPOINT_URL_S3": s3_url,
                "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
                "AWS_DEFAULT_REGION": S3_REGION,
            }
        )
    return env
