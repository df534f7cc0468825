"""One small HTTP client per FLIP service: URL joining, the service key, timeouts, retries, typed errors.

Every request carries only its own service's key header. Transient failures (connect errors,
timeouts, HTTP 429/502/503/504) are retried with exponential backoff and jitter, bounded both in
attempts and in total time; any other 4xx is final. Failures become
:class:`~flip_nvflare.errors.FlipHTTPError` subclasses whose message names the service, method,
route and status, but never the key, the body, SQL or accession ids.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from flip_nvflare.errors import (
    FlipAuthenticationError,
    FlipHTTPError,
    FlipNotFoundError,
    FlipRequestRejected,
    FlipServiceUnavailable,
)
from flip_nvflare.retry import RetryPolicy

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_MAX_DETAIL_CHARS = 300
REDACTED = "[redacted]"


def join_url(base_url: str, path: str) -> str:
    """Join a base URL (with or without trailing slash or path prefix) and a route, never making ``//``."""
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def quote_segment(value: str) -> str:
    """Quote ``value`` as one URL path segment."""
    return quote(str(value), safe="")


def _safe_detail(response: httpx.Response, redact: Iterable[str]) -> str | None:
    """The service's ``detail``, shortened and with known-sensitive strings removed.

    FastAPI validation errors (lists) are reduced to their location and message, never the
    ``input`` they echo, which may be SQL or an accession id.
    """
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if detail is None:
        return None
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []))
                parts.append(f"{loc}: {item.get('msg', '')}".strip(": "))
        text = "; ".join(parts)
    else:
        text = str(detail)
    for secret in redact:
        if secret and len(secret) >= 3:
            text = text.replace(secret, REDACTED)
    if len(text) > _MAX_DETAIL_CHARS:
        text = text[:_MAX_DETAIL_CHARS] + "..."
    return text


def _error_for(service: str, method: str, route: str, response: httpx.Response, redact: Iterable[str]) -> FlipHTTPError:
    status = response.status_code
    detail = _safe_detail(response, redact)
    cls: type[FlipHTTPError]
    if status == 401:
        cls = FlipAuthenticationError
    elif status == 404:
        cls = FlipNotFoundError
    elif 400 <= status < 500 and status != 429:
        cls = FlipRequestRejected
    else:
        cls = FlipServiceUnavailable
    return cls(service, method, route, status, detail)


class ServiceClient:
    """A pooled, keep-alive HTTP client for one FLIP service.

    Args:
        service: Name used in logs and errors ("flip-api", "data-access-api", "imaging-api").
        base_url: The service's base URL, with or without trailing slash or prefix.
        key_header: Name of the header carrying the service key.
        key: The service key (never logged).
        timeout: Seconds allowed for each attempt (connect, read, write and pool).
        retry: The retry policy.
        max_connections: Connections kept in the pool.
        sleep: Injected for tests; defaults to ``time.sleep``.
    """

    def __init__(
        self,
        *,
        service: str,
        base_url: str,
        key_header: str,
        key: str,
        timeout: float,
        retry: RetryPolicy,
        max_connections: int = 16,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.service = service
        self.base_url = base_url
        self._headers = {key_header: key}
        self._timeout = timeout
        self._retry = retry
        self._max_connections = max_connections
        self._sleep = sleep
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    headers=self._headers,
                    timeout=httpx.Timeout(self._timeout),
                    limits=httpx.Limits(
                        max_connections=self._max_connections,
                        max_keepalive_connections=self._max_connections,
                    ),
                    follow_redirects=False,
                )
            return self._client

    def close(self) -> None:
        """Close the pooled connections (the client reopens them if used again)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def request(
        self,
        method: str,
        route: str,
        *,
        path_params: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        redact: Iterable[str] = (),
        retry: RetryPolicy | None = None,
    ) -> httpx.Response:
        """Send a request, retrying transient failures, and return the 2xx response.

        Args:
            method: HTTP method.
            route: Route template such as ``/api/model/{model_id}/status/{status}``.
            path_params: Values for the template's placeholders (each quoted as one segment).
                They appear in logs and errors, so they must never be patient data.
            params: Query parameters.
            json_body: JSON body, if any (never logged).
            redact: Strings to strip from any ``detail`` the service echoes (SQL, accession id).
            retry: This call's retry policy, instead of the client's own.

        Raises:
            FlipAuthenticationError: HTTP 401.
            FlipNotFoundError: HTTP 404.
            FlipRequestRejected: Other non-retryable 4xx.
            FlipServiceUnavailable: Transient failures that outlasted the retry policy, or 5xx.
        """
        path_params = path_params or {}
        path = route.format(**{k: quote_segment(v) for k, v in path_params.items()})
        shown = route.format(**path_params)
        url = join_url(self.base_url, path)
        redact = tuple(redact)
        policy = retry or self._retry
        start = time.monotonic()
        deadline = start + policy.total_timeout if policy.total_timeout is not None else math.inf
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            per_try = max(0.05, min(self._timeout, remaining))
            t0 = time.monotonic()
            try:
                response = self._http().request(
                    method, url, params=params, json=json_body, timeout=httpx.Timeout(per_try)
                )
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                reason = type(exc).__name__
                failure: FlipHTTPError = FlipServiceUnavailable(
                    self.service, method, shown, None, reason=f"{reason} after {attempt} attempt(s)"
                )
                retry_after = None
                logger.info(
                    "%s %s %s -> %s in %.0f ms (attempt %d)",
                    self.service,
                    method,
                    shown,
                    reason,
                    (time.monotonic() - t0) * 1000,
                    attempt,
                )
            else:
                elapsed_ms = (time.monotonic() - t0) * 1000
                logger.info(
                    "%s %s %s -> %d in %.0f ms (attempt %d)",
                    self.service,
                    method,
                    shown,
                    response.status_code,
                    elapsed_ms,
                    attempt,
                )
                if response.is_success:
                    return response
                failure = _error_for(self.service, method, shown, response, redact)
                if response.status_code not in RETRYABLE_STATUS:
                    raise failure
                retry_after = _retry_after(response)
            if not policy.allows(attempt):
                raise failure
            delay = policy.delay(attempt)
            if retry_after is not None:
                delay = max(delay, min(retry_after, policy.max_delay))
            if time.monotonic() + delay >= deadline:
                raise failure
            self._sleep(delay)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
