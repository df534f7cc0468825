"""One small HTTP client per FLIP service: URL joining, the service key, deadlines, retries, typed errors.

Every request carries only its own service's key header. Each attempt has a total deadline (the
service timeout), enforced on every read and write of the connection, so a server that drips
bytes is cut off on time; an answer larger than the client's bound is refused before it is read
whole. Transient failures (connect errors, timeouts, HTTP 429/502/503/504) are retried with the
client's :class:`~flip_nvflare.retry.RetryPolicy`; any other 4xx is final. Every failure, whatever
httpx raised, becomes a :class:`~flip_nvflare.errors.FlipHTTPError` subclass whose message is
built here from the service, method, route and status: never from the key, the body, SQL,
accession ids or a transport exception's own text.

httpx builds the requests and wraps the answers; the bytes move through a small keep-alive
connection pool on the standard library's ``http.client`` (:class:`_Transport`), which does a
fraction of a general-purpose pool's work per call and sends a small request in one piece: that
is what lets a job's many small hub calls (metrics) go out back to back over a few connections.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import math
import select
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote

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


#: Parsed URLs a client keeps (the URLs it calls repeatedly).
_URL_CACHE_SIZE = 1024
#: Request bytes held back to go out with the rest of the request in one send.
_HOLD_BYTES = 64 * 1024


class _DeadlineRaw(io.RawIOBase):
    """Reads of a connection's socket, each bounded by what is left of the current attempt's deadline."""

    def __init__(self, owner: _DeadlineSocket) -> None:
        super().__init__()
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._owner.flush()
        sock = self._owner.sock
        sock.settimeout(_bounded(self._owner.timeout, TimeoutError))
        return sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._owner.reader_closed()
        super().close()


class _DeadlineSocket:
    """What ``http.client`` needs of a socket, with every send and read ending by the attempt's deadline."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self._readers = 0
        self._close_wanted = False
        self._held: list[bytes] = []
        self._held_bytes = 0

    def sendall(self, data: bytes) -> None:
        """Hold ``data`` until the answer is read (or 64 KiB are held): a small request goes out in one send."""
        self._held.append(bytes(data))
        self._held_bytes += len(data)
        if self._held_bytes >= _HOLD_BYTES:
            self.flush()

    def flush(self) -> None:
        """Send what is held."""
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            self._held_bytes = 0
            self.sock.settimeout(_bounded(self.timeout, TimeoutError))
            self.sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_DeadlineRaw(self))

    def reader_closed(self) -> None:
        self._readers -= 1
        if self._close_wanted and not self._readers:
            self.sock.close()

    def closed_by_peer(self) -> bool:
        """Whether an idle connection has become readable: the server closed it (or broke the protocol)."""
        try:
            if hasattr(select, "poll"):  # any descriptor number (select() stops at FD_SETSIZE)
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                return bool(poller.poll(0))
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        """Close the socket, once the answer being read from it (if any) is closed too."""
        self._held.clear()
        self._close_wanted = True
        if not self._readers:
            self.sock.close()


class _Connection(http.client.HTTPConnection):
    """An HTTP/1.1 connection on a socket this module opened (and wrapped in TLS for https)."""

    def __init__(self, host: str, port: int, sock: _DeadlineSocket) -> None:
        super().__init__(host, port)
        self.sock = sock

    def connect(self) -> None:  # pragma: no cover - a connection is made open; a closed one is never reused
        raise http.client.NotConnected("connection closed")


class _BodyStream(httpx.SyncByteStream):
    """A response body read from its connection; the connection goes back to the pool once read whole."""

    def __init__(self, transport: _Transport, key: tuple[str, str, int], conn: _Connection, answer: Any) -> None:
        self._transport = transport
        self._key = key
        self._conn: _Connection | None = conn
        self._answer = answer
        self._complete = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self._answer.read(_READ_CHUNK)
            except TimeoutError:
                raise httpx.ReadTimeout("timed out reading the answer") from None
            except http.client.HTTPException as exc:
                raise httpx.RemoteProtocolError(type(exc).__name__) from None
            except OSError as exc:
                raise httpx.ReadError(type(exc).__name__) from None
            if not chunk:
                self._complete = True
                return
            yield chunk

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._complete and not self._answer.will_close:
            self._answer.close()
            self._transport._release(self._key, conn)
        else:
            self._answer.close()
            self._transport._release(self._key, None, conn)


_READ_CHUNK = 64 * 1024


class _Transport(httpx.BaseTransport):
    """A small HTTP/1.1 connection pool on ``http.client``: keep-alive, bounded, deadline-aware.

    httpx builds the requests and wraps the answers (headers, content decoding, errors); this
    transport only moves bytes, with far less work per call than a general-purpose pool, which is
    what lets many small hub calls go out back to back. Every connect, send and read ends by the
    current attempt's deadline (see :func:`_bounded`). Failures are raised as httpx's exceptions.

    Args:
        max_connections: Connections open at once; a call waits (within its deadline) for a free one.
        timeout: Seconds allowed for one operation outside any attempt deadline.
    """

    def __init__(self, max_connections: int, timeout: float) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._lock = threading.Lock()
        self._timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a pooled connection; return the answer with its body still to read."""
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}")
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        if not self._slots.acquire(timeout=_bounded(self._timeout, httpx.PoolTimeout)):
            raise httpx.PoolTimeout("no free connection before the deadline")
        try:
            conn = self._idle_connection(key) or self._connect(key)
        except BaseException:
            self._slots.release()
            raise
        try:
            answer = self._exchange(conn, request)
        except BaseException:
            self._release(key, None, conn)
            raise
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.getheaders()]
        return httpx.Response(
            answer.status,
            headers=headers,
            stream=_BodyStream(self, key, conn, answer),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": str(answer.reason).encode("latin-1", "replace")},
        )

    def _exchange(self, conn: _Connection, request: httpx.Request) -> Any:
        target = request.url.raw_path.decode("ascii")
        body = request.read()
        try:
            conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers.raw:
                conn.putheader(name.decode("latin-1"), value.decode("latin-1"))
        except ValueError:  # a header name or value http.client refuses (control characters...)
            raise httpx.LocalProtocolError("a request header is not valid") from None
        try:
            conn.endheaders(body or None)  # held by the socket, sent in one piece when the answer is read
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request") from None
        except OSError as exc:
            raise httpx.WriteError(type(exc).__name__) from None
        try:
            return conn.getresponse()
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the answer") from None
        except http.client.HTTPException as exc:
            raise httpx.RemoteProtocolError(type(exc).__name__) from None
        except OSError as exc:
            raise httpx.ReadError(type(exc).__name__) from None

    def _idle_connection(self, key: tuple[str, str, int]) -> _Connection | None:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                return None
            sock = conn.sock
            if isinstance(sock, _DeadlineSocket) and not sock.closed_by_peer():
                return conn
            conn.close()

    def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        try:
            sock = socket.create_connection((host, port), timeout=_bounded(self._timeout, TimeoutError))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock.settimeout(_bounded(self._timeout, TimeoutError))
                sock = self._ssl_context().wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting") from None
        except OSError as exc:  # refused, unreachable, TLS failures (ssl.SSLError is an OSError)
            raise httpx.ConnectError(type(exc).__name__) from None
        return _Connection(host, port, _DeadlineSocket(sock, self._timeout))

    def _ssl_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            return self._ssl

    def _release(self, key: tuple[str, str, int], reuse: _Connection | None, drop: _Connection | None = None) -> None:
        if drop is not None:
            drop.close()
        if reuse is not None:
            with self._lock:
                if self._closed:
                    reuse.close()
                else:
                    self._idle.setdefault(key, []).append(reuse)
        self._slots.release()

    def close(self) -> None:
        """Close every idle connection (those in use close when their answer is done)."""
        with self._lock:
            self._closed = True
            idle = [conn for conns in self._idle.values() for conn in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()


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
        self._transport: _Transport | None = None
        self._urls: dict[str, httpx.URL] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ServiceClient(service={self.service!r}, base_url={self.base_url!r}, "
            f"key_header={self._key_header!r}, key='***', timeout={self._timeout!r})"
        )

    def _http(self) -> tuple[httpx.Client, _Transport]:
        """The client that builds requests (base headers, timeouts) and the pooled transport that sends them."""
        with self._lock:
            if self._client is None or self._transport is None:
                self._transport = _Transport(self._max_connections, self._timeout)
                self._client = httpx.Client(
                    headers=self._headers,
                    timeout=httpx.Timeout(self._timeout),
                    transport=self._transport,
                    follow_redirects=False,
                    trust_env=False,
                )
            return self._client, self._transport

    def close(self) -> None:
        """Close the pooled connections (the client reopens them if used again)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
                self._transport = None

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
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
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
        """One attempt: send, then read the answer within ``deadline`` and ``limit`` bytes.

        The request goes straight to the pooled transport: these services set no cookies and
        redirects are never followed, so the client's cookie and redirect handling (a good part
        of the cost of a small call) has nothing to do.
        """
        client, transport = self._http()
        target = self._urls.get(url)
        if target is None:  # parsed once per route and id: a job's metrics all go to one URL
            target = httpx.URL(url)
            if len(self._urls) < _URL_CACHE_SIZE:
                self._urls[url] = target
        request = client.build_request(method, target, params=params, json=json_body, headers=headers)
        _attempt.deadline = deadline
        try:
            response = transport.handle_request(request)
            response.request = request
            try:
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise _AnswerTooLarge
                if "content-encoding" not in response.headers and (
                    (declared is not None and declared.isdigit()) or response.status_code in (204, 304)
                ):
                    response.read()  # framed by its length (checked above) or empty: read as it is
                    return response
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
