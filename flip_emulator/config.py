"""Settings of the FLIP services emulator, and parsers for the values people type on the command line."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flip_emulator.faults import FaultSpec, check_pattern
from flip_nvflare.constants import HubApi

#: Environment variables the emulator reads for its keys when no flag gives them.
HUB_KEY_ENV = "FLIP_EMULATOR_HUB_KEY"
TRUST_KEY_ENV = "FLIP_EMULATOR_TRUST_KEY"
ADMIN_KEY_ENV = "FLIP_EMULATOR_ADMIN_KEY"
ENVELOPE_SECRET_ENV = "FLIP_EMULATOR_ENVELOPE_SECRET"

DEFAULT_HUB_PORT = 8000
DEFAULT_TRUST_PORT = 8001
DEFAULT_NET_ID = "net-1"
DEFAULT_BUCKET = "s3://flip-results"
DEFAULT_DATA_DIR = Path(".work") / "emulator"
#: Project whose envelope is printed at start (and used by the test fixtures).
DEFAULT_PROJECT_ID = "5b1e5f3a-7c2d-4e8f-9a10-0f1ee7e0a001"

_TRUST_NAME = re.compile(r"[A-Za-z0-9._~ -]{1,128}")
_NET_ID = re.compile(r"[A-Za-z0-9._~-]{1,64}")


class EmulatorConfigError(ValueError):
    """A setting of the emulator is malformed; the message says which and how to fix it."""


@dataclass
class EmulatorConfig:
    """Everything the emulator needs to start.

    Attributes:
        host: Address both services listen on (loopback by default).
        hub_port: Port of the hub (flip-api); 0 picks a free port.
        trust_port: Port of the trust (data-access-api and imaging-api); 0 picks a free port.
        data_dir: Folder for the record database, downloaded images and uploads.
        synthetic_dir: Folder of the synthetic population (OMOP database and XNAT archive);
            default ``<data_dir>/synthetic``. Generated on first use, then only read.
        images_dir: The shared images volume (``IMAGES_DIR``); default ``<data_dir>/images``.
        hub_api: Hub generation to emulate (``h1`` or ``h2``).
        models: Models known at start, each with the trusts linked to it.
        open: Accept any model id, trust name and encrypted project id (for demos).
        s3: Also start moto's S3 server with the results bucket.
        s3_port: Port of the S3 server; 0 picks a free port.
        bucket: ``s3://bucket[/prefix]`` for results.
        net_id: The trust's imaging network id (``NET_ID``).
        seed: Seed of the synthetic population.
        subjects: Number of synthetic people.
        threshold: Disclosure threshold: a cohort with fewer distinct subjects gets 403.
        download_concurrency: Image downloads served at once per trust; 0 means no limit.
        download_latency: Seconds each non-cached download takes (inside the concurrency limit).
        query_timeout: Seconds a cohort query may run before it is aborted (answer 500).
        hub_key: The hub key; random when ``None``.
        trust_key: The trust key; random when ``None``.
        admin_key: If set, admin routes need it in ``X-Emulator-Admin-Key``.
        envelope_secret: Secret that seals project envelopes; kept in the data folder when ``None``.
        faults: Faults to inject from the start, by route name.
        ready_file: If set, a JSON description of the running emulator is written there when ready.
        access_log: Print one line per HTTP request.
    """

    host: str = "127.0.0.1"
    hub_port: int = DEFAULT_HUB_PORT
    trust_port: int = DEFAULT_TRUST_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    synthetic_dir: Path | None = None
    images_dir: Path | None = None
    hub_api: HubApi = HubApi.H1
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)
    open: bool = False
    s3: bool = False
    s3_port: int = 0
    bucket: str = DEFAULT_BUCKET
    net_id: str = DEFAULT_NET_ID
    seed: int = 0
    subjects: int = 60
    threshold: int = 10
    download_concurrency: int = 1
    download_latency: float = 0.0
    query_timeout: float = 10.0
    hub_key: str | None = None
    trust_key: str | None = None
    admin_key: str | None = None
    envelope_secret: str | None = None
    faults: dict[str, FaultSpec] = field(default_factory=dict)
    ready_file: Path | None = None
    access_log: bool = False

    def resolved(self, env: Mapping[str, str]) -> EmulatorConfig:
        """Return a checked copy with absolute folders and keys filled in (from ``env`` or random).

        Raises:
            EmulatorConfigError: A value is out of range or malformed.
        """
        for name in ("hub_port", "trust_port", "s3_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise EmulatorConfigError(f"{name.replace('_', '-')} must be 0..65535 (0 = any free port).")
        if not _NET_ID.fullmatch(self.net_id) or self.net_id in (".", ".."):
            raise EmulatorConfigError("net-id must be 1-64 characters of letters, digits, '.', '_', '~' or '-'.")
        if self.subjects < 10:
            raise EmulatorConfigError("subjects must be at least 10.")
        if self.threshold < 1:
            raise EmulatorConfigError("threshold must be at least 1.")
        if self.download_concurrency < 0:
            raise EmulatorConfigError("download-concurrency must be >= 0 (0 = no limit).")
        if self.download_latency < 0 or self.query_timeout <= 0:
            raise EmulatorConfigError("download-latency must be >= 0 and query-timeout > 0 seconds.")
        parse_bucket(self.bucket)
        for route in self.faults:
            try:
                check_pattern(route)
            except ValueError as exc:
                raise EmulatorConfigError(str(exc)) from None
        data_dir = Path(self.data_dir).expanduser().resolve()
        return EmulatorConfig(
            host=self.host,
            hub_port=self.hub_port,
            trust_port=self.trust_port,
            data_dir=data_dir,
            synthetic_dir=Path(self.synthetic_dir).expanduser().resolve()
            if self.synthetic_dir
            else data_dir / "synthetic",
            images_dir=Path(self.images_dir).expanduser().resolve() if self.images_dir else data_dir / "images",
            hub_api=HubApi(self.hub_api),
            models={check_model_id(k): tuple(check_trust(t) for t in v) for k, v in self.models.items()},
            open=self.open,
            s3=self.s3,
            s3_port=self.s3_port,
            bucket=self.bucket,
            net_id=self.net_id,
            seed=self.seed,
            subjects=self.subjects,
            threshold=self.threshold,
            download_concurrency=self.download_concurrency,
            download_latency=self.download_latency,
            query_timeout=self.query_timeout,
            hub_key=self.hub_key or env.get(HUB_KEY_ENV) or secrets.token_urlsafe(24),
            trust_key=self.trust_key or env.get(TRUST_KEY_ENV) or secrets.token_urlsafe(24),
            admin_key=self.admin_key or env.get(ADMIN_KEY_ENV) or None,
            envelope_secret=self.envelope_secret or env.get(ENVELOPE_SECRET_ENV) or None,
            faults=dict(self.faults),
            ready_file=Path(self.ready_file).resolve() if self.ready_file else None,
            access_log=self.access_log,
        )


def check_model_id(value: str) -> str:
    """Return ``value`` as a canonical UUID string, or raise naming the problem."""
    try:
        return str(uuid.UUID(str(value).strip()))
    except ValueError:
        raise EmulatorConfigError(
            f"model id {value!r} is not a UUID; FLIP model ids look like 3fa85f64-5717-4562-b3fc-2c963f66afa6."
        ) from None


def check_trust(value: str) -> str:
    """Return a trust name (``Trust_1``) if it is reasonable text, or raise."""
    name = str(value).strip()
    if not _TRUST_NAME.fullmatch(name):
        raise EmulatorConfigError(
            f"trust name {value!r} is not valid: use 1-128 letters, digits, spaces, '.', '_', '~' or '-'."
        )
    return name


def parse_model_option(text: str) -> tuple[str, tuple[str, ...]]:
    """Parse ``--model ID=Trust_1,Trust_2`` into ``(model_id, trusts)``."""
    model, sep, trusts = text.partition("=")
    names = tuple(t.strip() for t in trusts.split(",") if t.strip())
    if not sep or not names:
        raise EmulatorConfigError(
            f"--model {text!r}: expected MODEL_ID=Trust_1,Trust_2 (a UUID, '=', and at least one trust)."
        )
    return check_model_id(model), tuple(check_trust(n) for n in names)


def parse_fault_option(text: str) -> tuple[str, FaultSpec]:
    """Parse ``--fault ROUTE:key=value,key=value`` (e.g. ``hub.metrics:error_every=3``)."""
    route, sep, spec_text = text.partition(":")
    if not sep:
        raise EmulatorConfigError(
            f"--fault {text!r}: expected ROUTE:key=value[,key=value], e.g. hub.metrics:error_every=3,error_status=503."
        )
    values: dict[str, str] = {}
    for item in spec_text.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        if not eq:
            raise EmulatorConfigError(f"--fault {text!r}: {item!r} is not key=value.")
        values[key.strip()] = value.strip()
    try:
        return check_pattern(route.strip()), FaultSpec.from_strings(values)
    except ValueError as exc:
        raise EmulatorConfigError(f"--fault {text!r}: {exc}") from None


def parse_bucket(value: str) -> tuple[str, str]:
    """Split ``s3://bucket[/prefix]`` into ``(bucket, prefix)``, or raise."""
    text = value.strip()
    if not text.startswith("s3://"):
        raise EmulatorConfigError(f"bucket {value!r} must look like s3://bucket or s3://bucket/prefix.")
    bucket, _, prefix = text[len("s3://") :].partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise EmulatorConfigError(f"bucket {value!r}: {bucket!r} is not a valid S3 bucket name.")
    return bucket, prefix.strip("/")
