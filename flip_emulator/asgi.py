"""What both emulated services share at the HTTP level: fault injection, request records, 422 bodies.

Also the uvicorn protocol both services are served with (:class:`ClosableH11Protocol`): uvicorn's
h11 protocol, which lets the fault middleware close a connection without answering.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from flip_emulator.faults import FaultDecision
from flip_emulator.state import Emulator

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HUB_ROUTES = (("PUT", "/status/", "hub.status"), ("POST", "/metrics", "hub.metrics"), ("POST", "/logs", "hub.logs"))
#: ASGI scope extension holding a callable that closes the request's connection (no answer sent).
CLOSE_CONNECTION = "flip_emulator.close_connection"
#: How long a dropped request waits for the server to notice its connection is gone.
_DROP_WAIT_SECONDS = 5.0


class _OfferClose:
    """Puts a connection's close callable into the scope of each of its requests."""

    def __init__(self, app: ASGIApp, close: Callable[[], None]) -> None:
        self.app = app
        self.close = close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), CLOSE_CONNECTION: self.close}}
        await self.app(scope, receive, send)


class ClosableH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, offering each request a way to close its connection without answering.

    The callable is in ``scope["extensions"][CLOSE_CONNECTION]``; the ``drop_connection`` fault uses it.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Set up the connection, and wrap the app so its requests can close it."""
        super().connection_made(transport)
        self.app = _OfferClose(self.config.loaded_app, transport.close)


def route_of(service: str, method: str, path: str) -> str | None:
    """The fault/record route name of a request, ``None`` for admin routes, ``<service>.other`` if unknown."""
    if path.startswith("/admin/") or path == "/admin":
        return None
    if path == "/health":
        return f"{service}.health"
    if service == "hub":
        if path.startswith("/api/model/"):
            for verb, part, name in _HUB_ROUTES:
                if method == verb and (part in path if part == "/status/" else path.endswith(part)):
                    return name
        return "hub.other"
    if method == "POST" and path == "/cohort/dataframe":
        return "trust.cohort"
    if method == "POST" and path.startswith("/download/images/"):
        return "trust.download"
    if method == "PUT" and path.startswith("/upload/images/"):
        return "trust.upload"
    return "trust.other"


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class ServiceMiddleware:
    """Applies down windows and faults to a service's routes and records every request.

    Args:
        app: The service's ASGI app.
        emulator: The shared state.
        service: ``hub`` or ``trust``.
    """

    def __init__(self, app: ASGIApp, emulator: Emulator, service: str) -> None:
        self.app = app
        self.emulator = emulator
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        prefix = self.emulator.settings.path_prefix
        unprefixed = path
        if prefix and not (path.startswith("/admin") or path == "/health"):
            if path.startswith(prefix + "/"):
                unprefixed = path[len(prefix) :]
                scope = dict(scope, path=unprefixed, raw_path=unprefixed.encode())
            else:
                unprefixed = ""  # a request that skipped the prefix: not routed, as behind an ingress
        route = route_of(self.service, method, unprefixed or path)
        if route is None:
            await self.app(scope, receive, send)
            return
        if not unprefixed:
            route = f"{self.service}.other"
        key_headers = ",".join(
            sorted({name.decode("latin-1") for name, _ in scope.get("headers", []) if b"key" in name.lower()})
        )
        started = time.time()
        status = [500]

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        decision = FaultDecision()
        handled: int | None = None
        try:
            window = self.emulator.faults.down(self.service)
            if window is not None and window.mode == "503":
                await _send_json(recording_send, 503, {"detail": "Service unavailable (emulated down window)."}, [])
                decision = FaultDecision(error_status=503)
                return
            if not unprefixed:
                await _send_json(recording_send, 404, {"detail": "Not Found"}, [])
                return
            decision = self.emulator.faults.decide(route)
            if decision.hang_seconds is not None:
                await self._hang(decision.hang_seconds)
                await _send_json(recording_send, 503, {"detail": "Injected fault: the request hung."}, [])
                return
            if decision.latency:
                await asyncio.sleep(decision.latency)
            if decision.error_status is not None and decision.lose_answer:
                handled = await self._handle_unheard(scope, receive)
            if decision.error_status is not None:
                if decision.drop_connection and await self._drop(scope, receive, body_read=handled is not None):
                    status[0] = 0
                    return
                headers = []
                if decision.retry_after is not None:
                    headers.append((b"retry-after", f"{decision.retry_after:g}".encode()))
                if handled is not None:
                    detail = f"Injected fault: the answer was lost after the request was handled (HTTP {handled})."
                else:
                    detail = f"Injected fault: HTTP {decision.error_status}."
                await _send_json(recording_send, decision.error_status, {"detail": detail}, headers)
                return
            await self.app(scope, receive, recording_send)
        finally:
            if not route.endswith(".health"):
                label = decision.label
                if label is not None and handled is not None:
                    label = label.replace("lose_answer", f"lose_answer={handled}", 1)
                self.emulator.store.record_request(
                    service=self.service,
                    route=route,
                    method=method,
                    path=path,
                    status_code=status[0],
                    fault=label,
                    started_at=started,
                    key_headers=key_headers,
                )

    async def _handle_unheard(self, scope: Scope, receive: Receive) -> int:
        """Handle the request as usual (records included) but send nothing; return its status."""
        handled = [500]

        async def discard(message: Message) -> None:
            if message["type"] == "http.response.start":
                handled[0] = int(message["status"])

        await self.app(scope, receive, discard)
        return handled[0]

    @staticmethod
    async def _drop(scope: Scope, receive: Receive, *, body_read: bool) -> bool:
        """Close the connection without answering; False if the server offers no way to.

        The request body is read first (unless ``body_read``): closing a socket with unread data
        resets the connection, and the client should see a plain close, every time.
        """
        close = (scope.get("extensions") or {}).get(CLOSE_CONNECTION)
        if close is None:
            return False
        while not body_read:
            message = await receive()
            body_read = message["type"] != "http.request" or not message.get("more_body", False)
        close()

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        # Return once the server has seen the connection go, so it does not try to answer.
        try:
            await asyncio.wait_for(disconnected(), _DROP_WAIT_SECONDS)
        except asyncio.TimeoutError:
            pass
        return True

    async def _hang(self, seconds: float) -> None:
        faults = self.emulator.faults
        generation = faults.generation
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and faults.generation == generation and not self.emulator.stopping.is_set():
            await asyncio.sleep(0.05)


def _clean_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without the ``input`` and ``ctx`` they echo (they may hold SQL or accession ids)."""
    cleaned = []
    for error in errors:
        cleaned.append({k: v for k, v in dict(error).items() if k in ("type", "loc", "msg")})
    return cleaned


def install_common(app: FastAPI, emulator: Emulator, service: str) -> None:
    """Add ``/health`` and a 422 handler that never echoes request values."""

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _clean_errors(exc.errors())})

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}
