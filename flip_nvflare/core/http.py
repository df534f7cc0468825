"""One small HTTP client per FLIP service: URL joining, the service key, deadlines, retries, typed errors.

Every request carries only its own service's key header. Each attempt has a total deadline (the
service timeout), enforced on every read and write of the connection, so a server that drips
bytes is cut off on time; an answer larger than the client's bound is refused before it is read
whole. Transient failures (connect errors, timeouts, HTTP 429/502/503/504) are retried with the
client's :class:`~flip_nvflare.retry.RetryPolicy`; any other 4xx is final. Every failure, whatever
httpx raised, becomes a :class:`~flip_nvflare.errors.FlipHTTPError` subclass whose message is
built here from the service, method, route and status: never from the key, the body, SQL,
accession ids or a transport exception's own text.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote

import httpcore
import httpx

from flip_nvflare.constants import IDEMPOTENCY_KEY_HEADER
from flip_nvflare.errors import (
    FlipAuthenticationError,
    FlipHTTPError,
    FlipInvalidResponse,
    FlipNotFoundError,
    FlipRequestRejected,
    FlipServiceUnavailable,
)
from flip_nvflare.retry import RetryPolicy

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
#: Largest answer a service client reads by default (the cohort call has its own, larger bound).
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
_MAX_DETAIL_CHARS = 300
REDACTED = "[redacted]"
#: Services whose answers may echo patient data (SQL, column values, paths): their error text
#: never reaches an exception message, only this site's DEBUG log.
TRUST_SERVICES = frozenset({"data-access-api", "imaging-api"})

_FIXED_DESCRIPTIONS = {
    400: "the service rejected the request as malformed",
    401: "the service refused the key",
    403: "the service refused the request (forbidden: not allowed, or the cohort is too small to disclose)",
    404: "not found",
    409: "the request conflicts with the service's state",
    413: "the request is too large for the service",
    422: "the service found the request's content invalid",
    429: "the service is rate limiting",
}

_idempotency_key: ContextVar[str | None] = ContextVar("flip_nvflare_idempotency_key", default=None)
_attempt = threading.local()


@contextmanager
def idempotency_key(key: str) -> Iterator[str]:
    """Send ``key`` as the idempotency key of every hub write made in this context (on every attempt).

    The layer that owns a call's retries (the hub delivery queue) wraps each attempt of one
    logical call in the same key, so a hub that honours the header records the call once.
    Outside such a context each write gets a fresh key that its own HTTP retries reuse.
    """
    token = _idempotency_key.set(key)
    try:
        yield key
    finally:
        _idempotency_key.reset(token)


def current_idempotency_key() -> str | None:
    """The key set by :func:`idempotency_key` for this context, if any."""
    return _idempotency_key.get()


def join_url(base_url: str, path: str) -> str:
    """Join a base URL (with or without trailing slash or path prefix) and a route, never making ``//``."""
    return base_url.rstrip("/") + "/" + path.lstrip("/")


def quote_segment(value: str) -> str:
    """Quote ``value`` as one URL path segment."""
    return quote(str(value), safe="")


def _detail_for_log(response: httpx.Response, redact: Iterable[str]) -> str | None:
    """The service's ``detail``, shortened and with known-sensitive strings removed.

    FastAPI validation errors (lists) are reduced to their location and message, never the
    ``input`` they echo, which may be SQL or an accession id.
    """
    try:
        payload = json.loads(response.content)
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
    echoed = _detail_for_log(response, redact)
    if service in TRUST_SERVICES:
        if echoed:
            logger.debug("%s %s %s answered %d: %s", service, method, route, status, echoed)
        detail = _FIXED_DESCRIPTIONS.get(status, "service error" if status >= 500 else None)
    else:
        detail = echoed or _FIXED_DESCRIPTIONS.get(status)
    cls: type[FlipHTTPError]
    if status == 401:
        cls = FlipAuthenticationError
    elif status == 404:
        cls = FlipNotFoundError
    elif 400 <= status < 500 and status != 429:
        cls = FlipRequestRejected
    else:
        cls = FlipServiceUnavailable
    return cls(service, method, route, status, detail, retry_after=_retry_after(response))


class _AnswerTooLarge(Exception):
    """Raised inside :meth:`ServiceClient._send` when an answer exceeds the bound."""


def _bounded(timeout: float | None, timeout_error: type[Exception]) -> float | None:
    """``timeout`` capped at what is left of this thread's attempt deadline; raise once it has passed."""
    deadline: float | None = getattr(_attempt, "deadline", None)
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise timeout_error("the attempt's total deadline has passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the current attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own socket backend, with connections that honour the attempt deadline."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - FLIP services are TCP
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _deadline_transport(max_connections: int) -> httpx.HTTPTransport:
    """Httpx's transport, its pool given the deadline-aware network backend."""
    transport = httpx.HTTPTransport(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    )
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
        raise RuntimeError("this httpx/httpcore version has no connection pool backend to wrap; pin httpx<0.30")
    pool._network_backend = _DeadlineBackend()
    return transport


class ServiceClient:
    """A pooled, keep-alive HTTP client for one FLIP service.

    Args:
        service: Name used in logs and errors ("flip-api", "data-access-api", "imaging-api").
        base_url: The service's base URL, with or without trailing slash or prefix.
        key_header: Name of the header carrying the service key.
        key: The service key (never logged, never in ``repr``).
        timeout: Seconds allowed for each attempt in all (connect, send, wait and read together).
        retry: The retry policy (a call may pass its own).
        max_connections: Connections kept in the pool.
        max_body_bytes: Largest answer read (a call may pass its own bound).
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
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.service = service
        self.base_url = base_url
        self._key_header = key_header
        self._headers = {key_header: key}
        self._timeout = timeout
        self._retry = retry
        self._max_connections = max_connections
        self._max_body_bytes = max_body_bytes
        self._sleep = sleep if sleep is not None else time.sleep
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ServiceClient(service={self.service!r}, base_url={self.base_url!r}, "
            f"key_header={self._key_header!r}, key='***', timeout={self._timeout!r})"
        )

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    headers=self._headers,
                    timeout=httpx.Timeout(self._timeout),
                    transport=_deadline_transport(self._max_connections),
                    follow_redirects=False,
                    trust_env=False,
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
        max_body_bytes: int | None = None,
        idempotent_write: bool = False,
    ) -> httpx.Response:
        """Send a request, retrying transient failures, and return the 2xx response (read in full).

        Args:
            method: HTTP method.
            route: Route template such as ``/api/model/{model_id}/status/{status}``.
            path_params: Values for the template's placeholders (each quoted as one segment).
                They appear in logs and errors, so they must never be patient data.
            params: Query parameters.
            json_body: JSON body, if any (never logged).
            redact: Strings to strip from any ``detail`` the service echoes (SQL, accession id).
            retry: This call's retry policy, instead of the client's own.
            max_body_bytes: This call's bound on the answer's size, instead of the client's own.
            idempotent_write: Send an idempotency key (the one of the current
                :func:`idempotency_key` context, else a fresh one), the same on every attempt.

        Raises:
            FlipAuthenticationError: HTTP 401.
            FlipNotFoundError: HTTP 404.
            FlipRequestRejected: Other non-retryable 4xx.
            FlipServiceUnavailable: Transient failures that outlasted the retry policy, or 5xx.
            FlipInvalidResponse: The answer was larger than the bound.
            FlipHTTPError: The request could not be sent at all (e.g. an unusable URL or header).
        """
        path_params = path_params or {}
        path = route.format(**{k: quote_segment(v) for k, v in path_params.items()})
        shown = route.format(**path_params)
        url = join_url(self.base_url, path)
        redact = tuple(redact)
        limit = self._max_body_bytes if max_body_bytes is None else max_body_bytes
        headers: dict[str, str] = {}
        if idempotent_write:
            headers[IDEMPOTENCY_KEY_HEADER] = current_idempotency_key() or str(uuid.uuid4())
        policy = retry or self._retry
        start = time.monotonic()
        deadline = start + policy.total_timeout if policy.total_timeout is not None else math.inf
        attempt = 0
        while True:
            attempt += 1
            t0 = time.monotonic()
            attempt_deadline = min(deadline, t0 + self._timeout)
            retry_after: float | None = None
            try:
                response = self._send(method, url, params, json_body, headers, attempt_deadline, limit)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                reason = type(exc).__name__
                failure: FlipHTTPError = FlipServiceUnavailable(
                    self.service, method, shown, None, reason=f"{reason} after {attempt} attempt(s)"
                )
                self._log(method, shown, reason, t0, attempt)
            except _AnswerTooLarge:
                raise FlipInvalidResponse(
                    f"{self.service} {method} {shown}: the answer is larger than {limit} bytes; refused unread."
                ) from None
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, httpcore.UnsupportedProtocol) as exc:
                # A request that cannot be sent (an illegal header, an unusable URL...): final, and
                # the message never repeats the transport's own text, which may quote a header value.
                raise FlipHTTPError(
                    self.service, method, shown, None, reason=f"request could not be sent ({type(exc).__name__})"
                ) from None
            else:
                self._log(method, shown, str(response.status_code), t0, attempt)
                if response.is_success:
                    return response
                failure = _error_for(self.service, method, shown, response, redact)
                if response.status_code not in RETRYABLE_STATUS:
                    raise failure
                retry_after = failure.retry_after
            if not policy.allows(attempt):
                raise failure
            delay = policy.delay(attempt)
            if retry_after is not None:
                delay = max(delay, min(retry_after, policy.max_delay))
            if time.monotonic() + delay >= deadline:
                raise failure
            self._sleep(delay)

    def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        json_body: Any,
        headers: Mapping[str, str],
        deadline: float,
        limit: int,
    ) -> httpx.Response:
        """One attempt: send, then read the answer within ``deadline`` and ``limit`` bytes."""
        client = self._http()
        request = client.build_request(method, url, params=params, json=json_body, headers=headers)
        _attempt.deadline = deadline
        try:
            response = client.send(request, stream=True)
            try:
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise _AnswerTooLarge
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise _AnswerTooLarge
            finally:
                response.close()
        finally:
            _attempt.deadline = None
        # The body is already decoded: drop the headers that describe the encoded one.
        kept = [
            (k, v) for k, v in response.headers.multi_items() if k.lower() not in ("content-encoding", "content-length")
        ]
        return httpx.Response(response.status_code, headers=kept, content=bytes(body), request=request)

    def _log(self, method: str, shown: str, outcome: str, started: float, attempt: int) -> None:
        logger.info(
            "%s %s %s -> %s in %.0f ms (attempt %d)",
            self.service,
            method,
            shown,
            outcome,
            (time.monotonic() - started) * 1000,
            attempt,
        )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
