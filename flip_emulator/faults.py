"""Fault injection: added latency, errors, hangs and down windows, per route and deterministic.

Routes are named ``<service>.<route>``:

========================  ===========================================
``hub.status``            ``PUT /api/model/{model_id}/status/{status}``
``hub.metrics``           ``POST /api/model/{model_id}/metrics``
``hub.logs``              ``POST /api/model/{model_id}/logs``
``trust.cohort``          ``POST /cohort/dataframe``
``trust.download``        ``POST /download/images/{net_id}``
``trust.upload``          ``PUT /upload/images/{net_id}``
``hub.health``            ``GET /health`` on the hub (only when named)
``trust.health``          ``GET /health`` on the trust (only when named)
========================  ===========================================

A fault set on ``hub.*``, ``trust.*`` or ``*`` applies to every route of that service (or both)
except ``/health``. When several match, the most specific wins. Errors are chosen
deterministically: the first N requests, every Nth request, or a seeded random rate. The requests
so chosen are refused before they are handled, or (``lose_answer``) handled and recorded first and
then their answer lost; either way they get ``error_status``, or (``drop_connection``) no answer at
all: the connection is closed. Down windows are timed on the board's :class:`Clock` (the real one
unless a test injects its own).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol

SERVICES = ("hub", "trust")
ROUTES = (
    "hub.status",
    "hub.metrics",
    "hub.logs",
    "hub.health",
    "trust.cohort",
    "trust.download",
    "trust.upload",
    "trust.health",
)
PATTERNS = (*ROUTES, "hub.*", "trust.*", "*")
#: Longest hang when no ``hang_seconds`` is given (released earlier by clearing faults or stopping).
MAX_HANG_SECONDS = 3600.0

DownMode = Literal["refuse", "503"]


class Clock(Protocol):
    """Where a FaultBoard reads the time; inject a fake one to control time in tests."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`."""

    def monotonic(self) -> float:
        """The value of :func:`time.monotonic`."""
        return time.monotonic()


@dataclass(frozen=True)
class FaultSpec:
    """What to do to the requests of one route.

    Attributes:
        latency: Seconds added before the request is handled.
        error_status: HTTP status of injected errors (400-599).
        error_first: The first N requests after the fault is set fail.
        error_every: Every Nth request fails (the Nth, 2Nth, ...); 0 = never.
        error_rate: Probability that a request fails, drawn from ``random.Random(seed)``.
        seed: Seed of the error-rate draws (same seed, same sequence).
        hang: Requests never get an answer until the fault is cleared, ``hang_seconds`` pass or
            the emulator stops; then they get 503 and are not processed.
        hang_seconds: Limit of a hang (default: an hour).
        retry_after: If set, injected errors carry ``Retry-After`` with this many seconds.
        lose_answer: The requests chosen to fail are handled first (the hub records them), then
            their answer is lost: replaced by the injected error (or the dropped connection).
        drop_connection: The requests chosen to fail get no answer: the connection is closed.
    """

    latency: float = 0.0
    error_status: int = 503
    error_first: int = 0
    error_every: int = 0
    error_rate: float = 0.0
    seed: int = 0
    hang: bool = False
    hang_seconds: float | None = None
    retry_after: float | None = None
    lose_answer: bool = False
    drop_connection: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.latency <= MAX_HANG_SECONDS:
            raise ValueError("latency must be between 0 and 3600 seconds")
        if not 400 <= self.error_status <= 599:
            raise ValueError("error_status must be an HTTP error status (400-599)")
        if self.error_first < 0 or self.error_every < 0:
            raise ValueError("error_first and error_every must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")
        if self.hang_seconds is not None and not 0 < self.hang_seconds <= MAX_HANG_SECONDS:
            raise ValueError("hang_seconds must be between 0 and 3600")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        if (self.lose_answer or self.drop_connection) and not (self.error_first or self.error_every or self.error_rate):
            raise ValueError(
                "lose_answer and drop_connection apply to the requests chosen by error_first, error_every or "
                "error_rate: set one of them"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FaultSpec:
        """Build a spec from a mapping (e.g. a JSON body), rejecting unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown fault setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**dict(values))

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> FaultSpec:
        """Build a spec from ``key=value`` strings as typed on the command line."""
        converted: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for key, raw in values.items():
            kind = str(types.get(key, ""))
            try:
                if kind == "bool":
                    if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError
                    converted[key] = raw.lower() in ("1", "true", "yes")
                elif kind == "int":
                    converted[key] = int(raw)
                elif kind:
                    converted[key] = float(raw)
                else:
                    converted[key] = raw
            except ValueError:
                raise ValueError(f"{key}={raw!r} is not a valid value") from None
        return cls.from_mapping(converted)

    def as_dict(self) -> dict[str, Any]:
        """The spec as a JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True)
class FaultDecision:
    """What happens to one request."""

    latency: float = 0.0
    error_status: int | None = None
    hang_seconds: float | None = None
    retry_after: float | None = None
    #: Handle the request, then lose its answer (replaced by the error or the dropped connection).
    lose_answer: bool = False
    #: Close the connection instead of answering ``error_status``.
    drop_connection: bool = False

    @property
    def label(self) -> str | None:
        """A short description for the request record, or ``None`` if nothing was injected."""
        parts = []
        if self.latency:
            parts.append(f"latency={self.latency:g}")
        if self.hang_seconds is not None:
            parts.append("hang")
        if self.error_status is not None:
            if self.lose_answer:
                parts.append("lose_answer")
            parts.append("dropped" if self.drop_connection else f"error={self.error_status}")
        return ",".join(parts) or None


class _RouteFault:
    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec
        self.count = 0
        self.rng = random.Random(spec.seed)

    def decide(self) -> FaultDecision:
        spec = self.spec
        self.count += 1
        fail = self.count <= spec.error_first
        if spec.error_every and self.count % spec.error_every == 0:
            fail = True
        if spec.error_rate and self.rng.random() < spec.error_rate:
            fail = True
        return FaultDecision(
            latency=spec.latency,
            error_status=spec.error_status if fail else None,
            hang_seconds=(spec.hang_seconds or MAX_HANG_SECONDS) if spec.hang else None,
            retry_after=spec.retry_after,
            lose_answer=fail and spec.lose_answer,
            drop_connection=fail and spec.drop_connection,
        )


@dataclass(frozen=True)
class DownWindow:
    """A period during which a service is down."""

    service: str
    mode: DownMode
    until: float  # on the board's clock


def check_pattern(route: str) -> str:
    """Return ``route`` if it names a route or wildcard faults can be set on, else raise ValueError."""
    if route not in PATTERNS:
        raise ValueError(f"unknown route {route!r}; use one of {', '.join(PATTERNS)}")
    return route


class FaultBoard:
    """The faults currently set, shared by both services (thread-safe).

    Args:
        clock: Times the down windows; the real clock if None.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        self._faults: dict[str, _RouteFault] = {}
        self._down: dict[str, DownWindow] = {}
        self._generation = 0

    def set(self, route: str, spec: FaultSpec) -> None:
        """Set (or replace, restarting its counters) the fault of ``route``."""
        check_pattern(route)
        with self._lock:
            self._faults[route] = _RouteFault(spec)

    def clear(self, route: str | None = None) -> None:
        """Clear one route's fault, or all faults and down windows; releases hung requests."""
        with self._lock:
            if route is None:
                self._faults.clear()
                self._down.clear()
            else:
                self._faults.pop(check_pattern(route), None)
            self._generation += 1

    def current(self) -> dict[str, dict[str, Any]]:
        """The faults set, by route, with the number of requests each has seen."""
        with self._lock:
            return {r: {**f.spec.as_dict(), "seen": f.count} for r, f in self._faults.items()}

    def decide(self, route: str) -> FaultDecision:
        """Decide the fate of one request of ``route`` (counts it for the matching fault)."""
        service = route.split(".", 1)[0]
        candidates = [route] if route.endswith(".health") else [route, f"{service}.*", "*"]
        with self._lock:
            for name in candidates:
                fault = self._faults.get(name)
                if fault is not None:
                    return fault.decide()
        return FaultDecision()

    @property
    def generation(self) -> int:
        """Increases whenever faults are cleared (hung requests watch it)."""
        return self._generation

    def set_down(self, service: str, seconds: float, mode: DownMode) -> DownWindow:
        """Start a down window of ``seconds`` for ``service`` (``hub`` or ``trust``)."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; use hub or trust")
        if mode not in ("refuse", "503"):
            raise ValueError("mode must be 'refuse' (connections refused) or '503'")
        if not 0 < seconds <= MAX_HANG_SECONDS:
            raise ValueError("seconds must be between 0 and 3600")
        window = DownWindow(service, mode, self._clock.monotonic() + seconds)
        with self._lock:
            self._down[service] = window
        return window

    def down(self, service: str) -> DownWindow | None:
        """The active down window of ``service``, if any."""
        with self._lock:
            window = self._down.get(service)
            if window is not None and window.until <= self._clock.monotonic():
                del self._down[service]
                return None
            return window
