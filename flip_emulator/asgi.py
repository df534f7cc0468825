"""What both emulated services share at the HTTP level: fault injection, request records, 422 bodies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from flip_emulator.faults import FaultDecision
from flip_emulator.state import Emulator

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HUB_ROUTES = (("PUT", "/status/", "hub.status"), ("POST", "/metrics", "hub.metrics"), ("POST", "/logs", "hub.logs"))


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
            if decision.error_status is not None:
                headers = []
                if decision.retry_after is not None:
                    headers.append((b"retry-after", f"{decision.retry_after:g}".encode()))
                await _send_json(
                    recording_send,
                    decision.error_status,
                    {"detail": f"Injected fault: HTTP {decision.error_status}."},
                    headers,
                )
                return
            await self.app(scope, receive, recording_send)
        finally:
            if not route.endswith(".health"):
                self.emulator.store.record_request(
                    service=self.service,
                    route=route,
                    method=method,
                    path=path,
                    status_code=status[0],
                    fault=decision.label,
                    started_at=started,
                    key_headers=key_headers,
                )

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
