"""Settings of the FLIP backends: from constructor arguments, else from the environment.

Nothing here runs at import time. Each group of settings (hub, trust, results) is read and checked
the first time a method that needs it runs, so a trust process never needs hub settings and vice
versa. A missing or malformed setting raises :class:`~flip_nvflare.errors.FlipConfigError` naming
every variable that needs attention, not just the first.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flip_nvflare.constants import HubApi
from flip_nvflare.errors import FlipConfigError

DEFAULT_HUB_KEY_HEADER = "X-Internal-Service-Key"
DEFAULT_TRUST_KEY_HEADER = "X-Trust-Internal-Service-Key"
DEFAULT_HTTP_TIMEOUT = 30.0
#: Shown instead of a key in every ``repr``.
MASK = "***"

logger = logging.getLogger(__name__)

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


@dataclass(frozen=True)
class HubSettings:
    """What the fl-server needs to talk to flip-api."""

    url: str
    key: str = field(repr=False)
    key_header: str
    hub_api: HubApi
    timeout: float

    def __repr__(self) -> str:
        return (
            f"HubSettings(url={self.url!r}, key={MASK!r}, key_header={self.key_header!r}, "
            f"hub_api={self.hub_api.value!r}, timeout={self.timeout!r})"
        )


@dataclass(frozen=True)
class TrustSettings:
    """What an fl-client needs to talk to its trust's data-access-api and imaging-api."""

    data_access_url: str | None
    imaging_url: str | None
    key: str = field(repr=False)
    key_header: str
    net_id: str | None
    images_dir: Path | None
    timeout: float

    def __repr__(self) -> str:
        return (
            f"TrustSettings(data_access_url={self.data_access_url!r}, imaging_url={self.imaging_url!r}, "
            f"key={MASK!r}, key_header={self.key_header!r}, net_id={self.net_id!r}, "
            f"images_dir={self.images_dir!r}, timeout={self.timeout!r})"
        )


@dataclass(frozen=True)
class ResultsSettings:
    """Where the fl-server stores a run's results."""

    bucket: str
    prefix: str
    endpoint_url: str | None


class SettingsReader:
    """Resolves settings from explicit values first, then from an environment mapping.

    Args:
        explicit: Values given to a backend's constructor, keyed by environment variable name;
            ``None`` means "not given".
        env: The environment to fall back on (``os.environ`` when ``None``).
    """

    def __init__(self, explicit: Mapping[str, Any], env: Mapping[str, str] | None = None) -> None:
        self._explicit = {k: v for k, v in explicit.items() if v is not None}
        self._env = env

    def __repr__(self) -> str:
        shown = {k: (MASK if k in SECRET_NAMES else v) for k, v in self._explicit.items()}
        return f"SettingsReader(explicit={shown!r}, env={'given' if self._env is not None else 'os.environ'})"

    @property
    def has_explicit_env(self) -> bool:
        """Whether an environment mapping was given in place of ``os.environ``."""
        return self._env is not None

    def raw(self, name: str) -> Any:
        """The value of ``name``: explicit, else environment, else ``None`` (empty counts as unset)."""
        if name in self._explicit:
            return self._explicit[name]
        env = os.environ if self._env is None else self._env
        value = env.get(name)
        if value is None or str(value).strip() == "":
            return None
        return value

    def require(self, purpose: str, names: list[str]) -> dict[str, Any]:
        """Return the values of ``names``, raising one error that lists every missing one.

        Args:
            purpose: What the settings are for, used in the error ("talk to flip-api").
            names: Environment variable names that must be set.
        """
        values = {name: self.raw(name) for name in names}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise FlipConfigError(
                f"Missing setting{'s' if len(missing) > 1 else ''} to {purpose}: {', '.join(missing)}. "
                "Set these environment variables in the FL process (or pass the matching "
                "constructor arguments)."
            )
        return values

    def timeout(self) -> float:
        """``FLIP_HTTP_TIMEOUT`` in seconds (default 30), checked to be a positive number."""
        raw = self.raw("FLIP_HTTP_TIMEOUT")
        if raw is None:
            return DEFAULT_HTTP_TIMEOUT
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise FlipConfigError(f"FLIP_HTTP_TIMEOUT must be a number of seconds, got {raw!r}.") from None
        if not math.isfinite(value) or value <= 0:
            raise FlipConfigError(f"FLIP_HTTP_TIMEOUT must be a positive number of seconds, got {raw!r}.")
        return value

    def hub_api(self) -> HubApi:
        """``FLIP_HUB_API``: ``h1`` (default) or ``h2``."""
        raw = self.raw("FLIP_HUB_API")
        if raw is None:
            return HubApi.H1
        if isinstance(raw, HubApi):
            return raw
        try:
            return HubApi(str(raw).strip().lower())
        except ValueError:
            raise FlipConfigError(f"FLIP_HUB_API must be 'h1' or 'h2', got {raw!r}.") from None


#: Settings that hold secrets: never shown, in errors, logs or ``repr``.
SECRET_NAMES = frozenset({"INTERNAL_SERVICE_KEY", "TRUST_INTERNAL_SERVICE_KEY"})


def check_key(name: str, value: object) -> str:
    """A service key without surrounding whitespace; refuse one that could not be sent as a header value.

    Keys read from secret files often end with a newline: surrounding whitespace is removed. A key
    with a control character, a non-ASCII character or nothing left is refused, naming the variable
    and never the value.

    Raises:
        FlipConfigError: The key is empty or has a character a header value cannot carry.
    """
    key = str(value).strip()
    if not key:
        raise FlipConfigError(f"{name} is empty: set it to the service key.")
    if any(not (0x20 <= ord(ch) < 0x7F) for ch in key):
        raise FlipConfigError(
            f"{name} contains a control or non-ASCII character (a line break or tab inside the key, or a "
            "pasted character), which no HTTP header may carry: set it to the key alone."
        )
    return key


def check_header_name(name: str, value: object) -> str:
    """An HTTP header name (a token), without surrounding whitespace.

    Raises:
        FlipConfigError: ``value`` is not a valid header name.
    """
    header = str(value).strip()
    if not _HEADER_NAME.fullmatch(header):
        raise FlipConfigError(f"{name} must be an HTTP header name (letters, digits and -), got {value!r}.")
    return header


def check_segment(name: str, value: object) -> str:
    """One safe path segment (letters, digits, ``. _ ~ -``; not ``.`` or ``..``).

    Raises:
        FlipConfigError: ``value`` is empty, holds a ``/`` or anything else, or is ``.``/``..``.
    """
    text = str(value).strip()
    if not _SAFE_SEGMENT.fullmatch(text) or text in (".", ".."):
        raise FlipConfigError(f"{name} must be one folder name (letters, digits, '.', '_', '~', '-'), got {value!r}.")
    return text


def check_url(name: str, value: str, *, warn_plain_http: bool = False) -> str:
    """Check that ``value`` is a plain http(s) base URL and return it without surrounding whitespace.

    Refused: another scheme, no host, user info (``user:password@``: keys go in headers), a query
    string or a fragment, whitespace or control characters inside.

    Args:
        name: The setting's name, for errors.
        value: The URL.
        warn_plain_http: Log a warning when the URL is ``http://`` to a host that is not loopback
            (prod: keys would cross the network unencrypted).

    Raises:
        FlipConfigError: The URL is not usable as a service's base URL.
    """
    url = str(value).strip()
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise FlipConfigError(f"{name} must be a URL without spaces or control characters.")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise FlipConfigError(f"{name} is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not host:
        raise FlipConfigError(f"{name} must be an http:// or https:// URL with a host, got {value!r}.")
    if parts.username is not None or parts.password is not None:
        raise FlipConfigError(f"{name} must not carry a user name or password (user@host): keys go in headers.")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise FlipConfigError(
            f"{name} must not have a query string or fragment, got {parts.scheme}://{parts.netloc}..."
        )
    if warn_plain_http and parts.scheme == "http" and not is_loopback_host(host):
        logger.warning(
            "%s is plain http:// to %s, which is not this machine: the service key crosses the network unencrypted. "
            "Use https:// in production.",
            name,
            host,
        )
    return url


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv4-mapped IPv6 included) names this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def parse_bucket(value: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix``, ``bucket/prefix`` or ``bucket`` into (bucket, prefix).

    The prefix comes back without leading or trailing slashes (possibly empty).
    """
    text = str(value).strip()
    if text.startswith("s3://"):
        text = text[len("s3://") :]
    elif "://" in text:
        raise FlipConfigError(
            f"UPLOADED_FEDERATED_DATA_BUCKET must be s3://bucket[/prefix] or a bucket name, got {value!r}."
        )
    bucket, _, prefix = text.partition("/")
    if not bucket:
        raise FlipConfigError(f"UPLOADED_FEDERATED_DATA_BUCKET names no bucket ({value!r}); use s3://bucket[/prefix].")
    return bucket, prefix.strip("/")


def read_hub_settings(reader: SettingsReader) -> HubSettings:
    """Read and check the settings the fl-server needs for flip-api."""
    values = reader.require("talk to flip-api", ["FLIP_API_INTERNAL_URL", "INTERNAL_SERVICE_KEY"])
    return HubSettings(
        url=check_url("FLIP_API_INTERNAL_URL", values["FLIP_API_INTERNAL_URL"], warn_plain_http=True),
        key=check_key("INTERNAL_SERVICE_KEY", values["INTERNAL_SERVICE_KEY"]),
        key_header=check_header_name(
            "INTERNAL_SERVICE_KEY_HEADER", reader.raw("INTERNAL_SERVICE_KEY_HEADER") or DEFAULT_HUB_KEY_HEADER
        ),
        hub_api=reader.hub_api(),
        timeout=reader.timeout(),
    )


def read_trust_settings(reader: SettingsReader, *, service: str) -> TrustSettings:
    """Read and check the settings an fl-client needs for one trust service.

    Args:
        reader: The settings source.
        service: ``"data-access-api"`` or ``"imaging-api"``; decides which URL (and, for imaging,
            ``NET_ID``) is required.
    """
    if service == "data-access-api":
        required = ["DATA_ACCESS_API_URL", "TRUST_INTERNAL_SERVICE_KEY"]
    else:
        required = ["IMAGING_API_URL", "TRUST_INTERNAL_SERVICE_KEY", "NET_ID"]
    values = reader.require(f"talk to the trust's {service}", required)
    data_url = reader.raw("DATA_ACCESS_API_URL")
    imaging_url = reader.raw("IMAGING_API_URL")
    images_dir = reader.raw("IMAGES_DIR")
    net_id = reader.raw("NET_ID")
    return TrustSettings(
        data_access_url=check_url("DATA_ACCESS_API_URL", data_url, warn_plain_http=True) if data_url else None,
        imaging_url=check_url("IMAGING_API_URL", imaging_url, warn_plain_http=True) if imaging_url else None,
        key=check_key("TRUST_INTERNAL_SERVICE_KEY", values["TRUST_INTERNAL_SERVICE_KEY"]),
        key_header=check_header_name(
            "TRUST_INTERNAL_SERVICE_KEY_HEADER",
            reader.raw("TRUST_INTERNAL_SERVICE_KEY_HEADER") or DEFAULT_TRUST_KEY_HEADER,
        ),
        net_id=check_segment("NET_ID", net_id) if net_id else None,
        images_dir=Path(str(images_dir)) if images_dir else None,
        timeout=reader.timeout(),
    )


def read_results_settings(reader: SettingsReader) -> ResultsSettings:
    """Read and check where results go in S3."""
    values = reader.require("upload results to S3", ["UPLOADED_FEDERATED_DATA_BUCKET"])
    bucket, prefix = parse_bucket(values["UPLOADED_FEDERATED_DATA_BUCKET"])
    endpoint = reader.raw("AWS_ENDPOINT_URL_S3") or reader.raw("AWS_ENDPOINT_URL")
    return ResultsSettings(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=check_url("AWS_ENDPOINT_URL_S3", endpoint) if endpoint else None,
    )
