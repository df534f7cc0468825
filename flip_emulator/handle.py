"""A running FLIP services emulator: :func:`start_emulator` and the :class:`EmulatorHandle` it yields.

The emulator runs in a subprocess (``python -m flip_emulator``) on free loopback ports, with
moto's S3 server beside it, so NVFlare simulator client processes can reach it and it does not
share the GIL of the caller. Use :func:`start_emulator` as a context manager; in pytest, the
fixtures of :mod:`flip_emulator.pytest_plugin` do it for you.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from flip_emulator.server import job_env
from flip_emulator.state import ADMIN_KEY_HEADER
from flip_emulator.store import (
    CohortRecord,
    DownloadRecord,
    DuplicateRecord,
    ModelRecords,
    RequestRecord,
    UploadRecord,
)

if TYPE_CHECKING:
    import pytest

    from flip_nvflare.core.prod import FLIPStandardProd

DEFAULT_TRUSTS = ("Trust_1", "Trust_2")


class EmulatorFailed(RuntimeError):
    """The emulator did not start, stopped unexpectedly, or refused an admin request."""


class EmulatorUnreachable(EmulatorFailed):
    """Neither emulated service accepted a connection (both down, or the emulator is gone)."""


@dataclass(frozen=True)
class RegisteredModel:
    """A model registered with the emulator, and the envelope of its project for job configs."""

    model_id: str
    trusts: tuple[str, ...]
    project_id: str
    encrypted_project_id: str


class EmulatorHandle:
    """A running emulator, seen from a test.

    Attributes:
        hub_url: ``FLIP_API_INTERNAL_URL`` (the hub with ``/api``).
        hub_base: The hub's root URL (``/health``, ``/admin``).
        trust_url: The trust's root URL (data-access-api and imaging-api).
        hub_key: The hub key.
        trust_key: The trust key.
        net_id: The trust's ``NET_ID``.
        images_dir: The shared images volume (``IMAGES_DIR``).
        data_dir: The emulator's data folder (records database, uploads, log).
        bucket: ``s3://bucket[/prefix]`` for results, or ``None`` without S3.
        s3_endpoint: The S3 endpoint URL, or ``None`` without S3.
        project_id: The default project.
        encrypted_project_id: An envelope of the default project, for ``config_fed_client.json``.
    """

    def __init__(
        self,
        info: dict[str, Any],
        *,
        hub_key: str,
        trust_key: str,
        admin_key: str | None = None,
        process: subprocess.Popen[bytes] | None = None,
        log_path: Path | None = None,
    ) -> None:
        urls = info["urls"]
        self.hub_base: str = urls["hub"]
        self.hub_url = f"{self.hub_base}/api"
        self.trust_url: str = urls["trust"]
        self.s3_endpoint: str | None = urls.get("s3")
        self.hub_key = hub_key
        self.trust_key = trust_key
        self.net_id: str = info["net_id"]
        self.images_dir = Path(info["images_dir"])
        self.data_dir = Path(info["data_dir"])
        self.bucket: str | None = info.get("bucket")
        self.project_id: str = info["project_id"]
        self.encrypted_project_id: str = info["encrypted_project_id"]
        self._hub_api: str = info["settings"]["hub_api"]
        self._process = process
        self._log_path = log_path
        headers = {ADMIN_KEY_HEADER: admin_key} if admin_key else {}
        self._http = httpx.Client(headers=headers, timeout=30)

    # ------------------------------------------------------------------ URLs and environment

    @property
    def data_access_url(self) -> str:
        """``DATA_ACCESS_API_URL``."""
        return self.trust_url

    @property
    def imaging_url(self) -> str:
        """``IMAGING_API_URL``."""
        return self.trust_url

    @property
    def hub_api(self) -> str:
        """The hub generation currently emulated (``h1`` or ``h2``)."""
        return self._hub_api

    def env(self, **overrides: str) -> dict[str, str]:
        """Every environment variable a prod-mode job needs (plus ``overrides``)."""
        env = job_env(
            hub_url=self.hub_base,
            trust_url=self.trust_url,
            hub_key=self.hub_key,
            trust_key=self.trust_key,
            net_id=self.net_id,
            images_dir=str(self.images_dir),
            hub_api=self._hub_api,
            bucket=self.bucket,
            s3_url=self.s3_endpoint,
        )
        env.update(overrides)
        return env

    def export_to(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Set :meth:`env` in ``os.environ`` for the test (undone by ``monkeypatch``)."""
        for name, value in self.env().items():
            monkeypatch.setenv(name, value)

    def prod_backend(self, **overrides: Any) -> FLIPStandardProd:
        """A :class:`~flip_nvflare.core.prod.FLIPStandardProd` talking to this emulator.

        Keyword arguments are passed to the constructor; ``env`` is merged over :meth:`env`.
        """
        from flip_nvflare.core.prod import FLIPStandardProd

        env = {**self.env(), **dict(overrides.pop("env", None) or {})}
        return FLIPStandardProd(env=env, **overrides)

    # ------------------------------------------------------------------ admin calls

    def _admin(self, method: str, path: str, *, via: str | None = None, **kwargs: Any) -> Any:
        bases = [self.trust_url, self.hub_base] if via == "trust" else [self.hub_base, self.trust_url]
        last: Exception | None = None
        for base in bases:
            try:
                response = self._http.request(method, f"{base}/admin{path}", **kwargs)
            except httpx.TransportError as exc:  # that service is down: ask the other one
                last = exc
                continue
            if response.is_error:
                raise EmulatorFailed(f"admin {method} {path} failed: HTTP {response.status_code} {response.text[:500]}")
            return response.json() if response.content else None
        raise EmulatorUnreachable(f"admin {method} {path}: no emulator service answered ({last}). {self.log_tail()}")

    def info(self) -> dict[str, Any]:
        """The emulator's own description (URLs, folders, settings; no keys)."""
        result: dict[str, Any] = self._admin("GET", "/info")
        return result

    def register_model(
        self, model_id: str | None = None, trusts: Sequence[str] = DEFAULT_TRUSTS, *, project_id: str | None = None
    ) -> RegisteredModel:
        """Register a model (a new random id if ``model_id`` is ``None``) with the trusts linked to it."""
        body = {"model_id": model_id or str(uuid.uuid4()), "trusts": list(trusts), "project_id": project_id}
        answer = self._admin("POST", "/models", json=body)
        model = answer["model"]
        return RegisteredModel(
            model_id=model["model_id"],
            trusts=tuple(model["trusts"]),
            project_id=model["project_id"],
            encrypted_project_id=answer["encrypted_project_id"],
        )

    def encrypt_project_id(self, project_id: str) -> str:
        """A new envelope for ``project_id`` that the trust accepts."""
        answer = self._admin("POST", "/projects", json={"project_id": project_id})
        return str(answer["encrypted_project_id"])

    def set_fault(self, route: str, **spec: Any) -> None:
        """Inject a fault on ``route`` (see :class:`~flip_emulator.faults.FaultSpec` for ``spec``)."""
        self._admin("PUT", f"/faults/{route}", json=spec)

    def clear_faults(self, route: str | None = None) -> None:
        """Clear one route's fault, or every fault and down window (releasing hung requests)."""
        self._admin("DELETE", "/faults" if route is None else f"/faults/{route}")

    def faults(self) -> dict[str, Any]:
        """The faults set, with how many requests each has seen."""
        result: dict[str, Any] = self._admin("GET", "/faults")
        return result

    def stop_hub(self, seconds: float, *, mode: str = "refuse") -> None:
        """Take the hub down for ``seconds``: connections refused (``refuse``) or HTTP 503 (``503``).

        Asked of the trust's admin routes (of the hub's only if the trust does not answer).
        """
        self._admin("POST", "/down", via="trust", json={"service": "hub", "seconds": seconds, "mode": mode})

    def stop_trust(self, seconds: float, *, mode: str = "refuse") -> None:
        """Take the trust down for ``seconds``: connections refused (``refuse``) or HTTP 503 (``503``)."""
        self._admin("POST", "/down", via="hub", json={"service": "trust", "seconds": seconds, "mode": mode})

    def wait_up(self, timeout: float = 10.0) -> None:
        """Wait until both services answer ``/health``."""
        deadline = time.monotonic() + timeout
        while True:
            if self.health():
                return
            if time.monotonic() > deadline:
                raise EmulatorFailed(f"the emulator did not answer /health within {timeout:g} s. {self.log_tail()}")
            time.sleep(0.05)

    def health(self) -> bool:
        """Whether both services answer ``/health`` with 200."""
        try:
            return all(
                self._http.get(f"{base}/health", timeout=2).status_code == 200
                for base in (self.hub_base, self.trust_url)
            )
        except httpx.TransportError:
            return False

    def set_settings(self, **settings: Any) -> dict[str, Any]:
        """Change run-time settings and return them all.

        Settings: ``hub_api``, ``open``, ``threshold``, ``download_concurrency``, ``download_latency``,
        ``path_prefix`` (serve only under that prefix, as behind an ingress).
        """
        result: dict[str, Any] = self._admin("PATCH", "/settings", json=settings)
        self._hub_api = result["hub_api"]
        return result

    def set_hub_api(self, hub_api: str) -> None:
        """Switch the hub generation (``h1`` or ``h2``); :meth:`env` follows."""
        self.set_settings(hub_api=hub_api)

    def reset(self, *, images: bool = True) -> None:
        """Forget records, faults, models registered at run time, setting changes and (``images``) downloads."""
        self._admin("POST", "/reset", json={"images": images})
        self._hub_api = self.info()["settings"]["hub_api"]

    # ------------------------------------------------------------------ what was received

    def records(self, model_id: str) -> ModelRecords:
        """What the hub received for ``model_id``: statuses in order, metrics, logs, repeated keys."""
        return ModelRecords.from_json(self._admin("GET", f"/records/{model_id}"))

    def duplicates(self, model_id: str) -> list[DuplicateRecord]:
        """The hub writes for ``model_id`` repeated with an ``Idempotency-Key`` already seen (not recorded again).

        One entry per route and key, in the order of their first repeat: ``count`` repeats, of which
        ``conflicts`` were a different request (answered 422). Forgotten by :meth:`reset`.
        """
        return self.records(model_id).duplicates

    def downloads(self) -> list[DownloadRecord]:
        """Every image download, with start and end times."""
        return [DownloadRecord(**d) for d in self._admin("GET", "/downloads")]

    def uploads(self) -> list[UploadRecord]:
        """Every image upload request."""
        return [UploadRecord(**u) for u in self._admin("GET", "/uploads")]

    def cohort_queries(self) -> list[CohortRecord]:
        """Every cohort request (SQL as SHA-256 only)."""
        return [CohortRecord(**c) for c in self._admin("GET", "/cohort-queries")]

    def requests(self, service: str | None = None) -> list[RequestRecord]:
        """Every request to a service route (``hub`` or ``trust`` only, if given)."""
        params = {"service": service} if service else None
        return [RequestRecord(**r) for r in self._admin("GET", "/requests", params=params)]

    def results(self, model_id: str) -> list[str]:
        """Keys of the result zips uploaded to S3 for ``model_id``."""
        return list(self._admin("GET", f"/results/{model_id}"))

    # ------------------------------------------------------------------ lifecycle

    def log_tail(self, lines: int = 30) -> str:
        """The end of the emulator's output (for failure messages)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(errors="replace").splitlines()[-lines:]
        return "Emulator output:\n" + "\n".join(text)

    def stop(self) -> None:
        """Stop the emulator process (if this handle started it) and close connections."""
        self._http.close()
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def start_emulator(
    data_dir: Path,
    *,
    hub_api: str = "h1",
    models: dict[str, Sequence[str]] | None = None,
    open: bool = False,
    s3: bool = True,
    synthetic_dir: Path | None = None,
    download_concurrency: int | None = None,
    download_latency: float | None = None,
    threshold: int | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 30.0,
) -> Iterator[EmulatorHandle]:
    """Start the emulator in a subprocess on free loopback ports; stop it on exit.

    Args:
        data_dir: The emulator's data folder (its output goes to ``emulator.log`` there).
        hub_api: ``h1`` or ``h2``.
        models: Models to register at start, with their trusts.
        open: Accept any model id, trust name and envelope.
        s3: Also start moto's S3 server (about 1 s more).
        synthetic_dir: Where the synthetic population is (generated there if missing); share it
            between emulators to start faster.
        download_concurrency: Downloads served at once (default 1, as the real service).
        download_latency: Seconds each non-cached download takes.
        threshold: Disclosure threshold.
        extra_args: More command-line arguments.
        startup_timeout: Seconds to wait for the emulator to answer.

    Raises:
        EmulatorFailed: It did not start; the message ends with its output.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    ready = data_dir / "ready.json"
    ready.unlink(missing_ok=True)
    log_path = data_dir / "emulator.log"
    hub_key, trust_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    args = [
        sys.executable,
        "-m",
        "flip_emulator",
        "--hub-port=0",
        "--trust-port=0",
        f"--data-dir={data_dir}",
        f"--ready-file={ready}",
        f"--hub-api={hub_api}",
        "--watch-parent",
    ]
    for model_id, trusts in (models or {}).items():
        args.append(f"--model={model_id}={','.join(trusts)}")
    if open:
        args.append("--open")
    if s3:
        args.append("--s3")
    if synthetic_dir is not None:
        args.append(f"--synthetic-dir={Path(synthetic_dir).resolve()}")
    if download_concurrency is not None:
        args.append(f"--download-concurrency={download_concurrency}")
    if download_latency is not None:
        args.append(f"--download-latency={download_latency}")
    if threshold is not None:
        args.append(f"--threshold={threshold}")
    args.extend(extra_args)
    env = {**os.environ, "FLIP_EMULATOR_HUB_KEY": hub_key, "FLIP_EMULATOR_TRUST_KEY": trust_key}
    env.pop("FLIP_EMULATOR_ADMIN_KEY", None)
    with log_path.open("ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    handle: EmulatorHandle | None = None
    try:
        deadline = time.monotonic() + startup_timeout
        while not ready.exists():
            if process.poll() is not None:
                raise EmulatorFailed(f"the emulator exited with code {process.returncode}. {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise EmulatorFailed(f"the emulator did not start within {startup_timeout:g} s. {_tail(log_path)}")
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        handle = EmulatorHandle(info, hub_key=hub_key, trust_key=trust_key, process=process, log_path=log_path)
        yield handle
    finally:
        if handle is not None:
            handle.stop()
        elif process.poll() is None:
            process.kill()
            process.wait(timeout=5)


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "Emulator output:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
