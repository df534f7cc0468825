"""The state both emulated services share: settings, keys, registry, records, faults and data."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from flip_emulator.config import DEFAULT_PROJECT_ID, EmulatorConfig, check_model_id, check_trust
from flip_emulator.envelope import EnvelopeError, ProjectEnvelopes
from flip_emulator.faults import Clock, FaultBoard
from flip_emulator.idempotency import IdempotencyLedger
from flip_emulator.imaging import ImageArchive, ImagingError
from flip_emulator.sql import CohortDatabase
from flip_emulator.store import ModelInfo, RecordStore
from flip_emulator.synthetic import SyntheticData, archive_ready, ensure_archive
from flip_nvflare.constants import HubApi

logger = logging.getLogger(__name__)

HUB_KEY_HEADER = "X-Internal-Service-Key"
TRUST_KEY_HEADER = "X-Trust-Internal-Service-Key"
ADMIN_KEY_HEADER = "X-Emulator-Admin-Key"
RECORDS_FILE = "emulator.sqlite"
ENVELOPE_SECRET_FILE = "envelope.secret"


class ServiceControl(Protocol):
    """What the server offers the admin routes to take a service down (connections refused)."""

    def go_down(self, seconds: float) -> None:
        """Stop listening now and listen again after ``seconds``."""

    def bring_up(self) -> None:
        """End a down window now."""


@dataclass
class RuntimeSettings:
    """Settings that may change while the emulator runs (admin route ``PATCH /admin/settings``)."""

    hub_api: HubApi
    open: bool
    threshold: int
    download_concurrency: int
    download_latency: float
    #: Served under this path prefix only (as behind an ingress), e.g. ``/gateway``; "" for none.
    path_prefix: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict."""
        data = asdict(self)
        data["hub_api"] = self.hub_api.value
        return data


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class Emulator:
    """Shared state of one running emulator.

    Args:
        config: A resolved configuration (see :meth:`EmulatorConfig.resolved`).
        synthetic: The population to serve.
        clock: The fault board's clock (down windows); the real clock if None.
    """

    def __init__(self, config: EmulatorConfig, synthetic: SyntheticData, clock: Clock | None = None) -> None:
        assert config.hub_key and config.trust_key and config.images_dir is not None
        # The services keep only digests of the keys: the plain values stay with whoever printed them.
        self.config = replace(config, hub_key=None, trust_key=None, admin_key=None, envelope_secret=None)
        self.synthetic = synthetic
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = RecordStore(config.data_dir / RECORDS_FILE)
        self.faults = FaultBoard(clock)
        for route, spec in config.faults.items():
            self.faults.set(route, spec)
        #: The hub's Idempotency-Key answers (this run only).
        self.idempotency = IdempotencyLedger()
        self.envelopes = ProjectEnvelopes(self._envelope_secret(config.envelope_secret))
        self.cohorts = CohortDatabase(synthetic.omop_path, timeout=config.query_timeout)
        self.images = ImageArchive(synthetic.archive, config.data_dir / "uploads", config.images_dir, config.net_id)
        self.images.upload_root.mkdir(parents=True, exist_ok=True)
        self.settings = RuntimeSettings(
            hub_api=config.hub_api,
            open=config.open,
            threshold=config.threshold,
            download_concurrency=config.download_concurrency,
            download_latency=config.download_latency,
        )
        # Only digests of the keys are kept, and compared in constant time.
        self._hub_key = _digest(config.hub_key)
        self._trust_key = _digest(config.trust_key)
        self._admin_key = _digest(config.admin_key) if config.admin_key else None
        self.controls: dict[str, ServiceControl] = {}
        self.urls: dict[str, str] = {}
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._gates: dict[tuple[int, int], tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}
        self._images_ready = threading.Event()
        self._images_failed = False
        if archive_ready(synthetic):
            self._images_ready.set()
        self.default_project_id = DEFAULT_PROJECT_ID
        self.default_envelope = self.envelopes.seal(DEFAULT_PROJECT_ID)
        for model_id, trusts in config.models.items():
            self.store.register_model(model_id, trusts, project_id=DEFAULT_PROJECT_ID, registered_by="start")

    def _envelope_secret(self, given: str | None) -> bytes:
        if given:
            return given.encode("utf-8")
        path = self.config.data_dir / ENVELOPE_SECRET_FILE
        try:
            return bytes.fromhex(path.read_text().strip())
        except (OSError, ValueError):
            secret = secrets.token_bytes(32)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secret.hex() + "\n")
            return secret

    # ------------------------------------------------------------------ keys

    @staticmethod
    def _key_problem(expected: bytes | None, presented: str | None, header: str) -> str | None:
        if expected is None:
            return f"{header} is not configured on this service."
        if presented is None or presented == "":
            return f"Missing {header} header."
        if not hmac.compare_digest(_digest(presented), expected):
            return f"Invalid {header}."
        return None

    def hub_key_problem(self, presented: str | None) -> str | None:
        """Why the hub refuses ``presented`` (``None`` if it is the hub key)."""
        return self._key_problem(self._hub_key, presented, HUB_KEY_HEADER)

    def trust_key_problem(self, presented: str | None) -> str | None:
        """Why the trust refuses ``presented`` (``None`` if it is the trust key)."""
        return self._key_problem(self._trust_key, presented, TRUST_KEY_HEADER)

    def admin_key_problem(self, presented: str | None) -> str | None:
        """Why admin routes refuse ``presented`` (``None`` if no admin key is set or it matches)."""
        if self._admin_key is None:
            return None
        return self._key_problem(self._admin_key, presented, ADMIN_KEY_HEADER)

    # ------------------------------------------------------------------ registry and envelopes

    def register_model(
        self, model_id: str, trusts: list[str], *, project_id: str | None = None, registered_by: str = "admin"
    ) -> ModelInfo:
        """Register ``model_id`` with ``trusts`` (adds to the trusts of a known model).

        Raises:
            ValueError: The model id is not a UUID or a trust name is not valid.
        """
        model_id = check_model_id(model_id)
        names = [check_trust(t) for t in trusts]
        return self.store.register_model(
            model_id, names, project_id=project_id or self.default_project_id, registered_by=registered_by
        )

    def seal(self, project_id: str) -> str:
        """A new envelope for ``project_id``."""
        return self.envelopes.seal(project_id)

    def open_envelope(self, envelope: str) -> str | None:
        """The project id in ``envelope`` (``None`` for a foreign envelope accepted in open mode).

        Raises:
            EnvelopeError: The envelope fails authentication (and the emulator is not open).
        """
        if not isinstance(envelope, str) or not envelope.strip():
            raise EnvelopeError("encrypted_project_id is empty")
        try:
            return self.envelopes.open(envelope)
        except EnvelopeError:
            if self.settings.open:
                return None
            raise

    # ------------------------------------------------------------------ images

    def prepare_images_in_background(self) -> None:
        """Generate the synthetic image archive in a thread, if it does not exist yet."""
        if self._images_ready.is_set():
            return

        def prepare() -> None:
            try:
                ensure_archive(self.synthetic)
            except Exception:
                logger.exception("The synthetic image archive could not be generated.")
                self._images_failed = True
            finally:
                self._images_ready.set()

        threading.Thread(target=prepare, name="flip-emulator-images", daemon=True).start()

    def wait_for_images(self, timeout: float = 60.0) -> None:
        """Wait until the image archive exists.

        Raises:
            ImagingError: 503 if it is still being generated after ``timeout``; 500 if that failed.
        """
        if not self._images_ready.wait(timeout):
            raise ImagingError(503, "The imaging archive is still being prepared; try again shortly.")
        if self._images_failed:
            raise ImagingError(500, "Download failed: the imaging archive could not be prepared.")

    # ------------------------------------------------------------------ downloads

    def download_gate(self) -> asyncio.Semaphore | None:
        """The semaphore limiting concurrent downloads in the running loop (``None`` = no limit)."""
        limit = self.settings.download_concurrency
        if limit <= 0:
            return None
        loop = asyncio.get_running_loop()
        key = (id(loop), limit)
        with self._lock:
            entry = self._gates.get(key)
            if entry is None or entry[0] is not loop:
                self._gates = {k: v for k, v in self._gates.items() if not v[0].is_closed()}
                entry = (loop, asyncio.Semaphore(limit))
                self._gates[key] = entry
            return entry[1]

    # ------------------------------------------------------------------ reset

    def clear_faults(self, route: str | None = None) -> None:
        """Clear one route's fault, or every fault and down window (services listen again)."""
        self.faults.clear(route)
        if route is None:
            for control in self.controls.values():
                control.bring_up()

    def reset(self, *, images: bool = True) -> None:
        """Forget records, idempotency keys, run-time models, faults and (if ``images``) downloaded images."""
        self.clear_faults()
        self.idempotency.clear()
        self.store.reset(models=True)
        for model_id, trusts in self.config.models.items():
            self.store.register_model(model_id, trusts, project_id=DEFAULT_PROJECT_ID, registered_by="start")
        self.settings = RuntimeSettings(
            hub_api=self.config.hub_api,
            open=self.config.open,
            threshold=self.config.threshold,
            download_concurrency=self.config.download_concurrency,
            download_latency=self.config.download_latency,
        )
        if images:
            net_dir = self.images.net_dir
            if net_dir.is_dir():
                for child in net_dir.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            self.images.upload_root.mkdir(parents=True, exist_ok=True)
            uploads = self.images.uploads
            if uploads.is_dir():
                shutil.rmtree(uploads, ignore_errors=True)
