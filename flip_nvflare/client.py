"""What FLIP app code calls inside a job: ``FLIP()``, ``send_metrics_value`` and small helpers.

An existing FLIP app runs with its ``from flip ...`` imports changed to ``from flip_nvflare ...``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from flip_nvflare.errors import FlipConfigError
from flip_nvflare.metrics import send_metrics_value

if TYPE_CHECKING:
    from flip_nvflare.core.base import FLIPBase

__all__ = ["FLIP", "register_job_backend", "send_metrics_value", "using_backend"]

_current: ContextVar[FLIPBase | None] = ContextVar("flip_nvflare_current_backend", default=None)
_registry_lock = threading.Lock()
_job_backends: list[FLIPBase] = []


def register_job_backend(backend: FLIPBase) -> None:
    """Record a backend built by a job's FlipBackend component in this process (called by it)."""
    with _registry_lock:
        if not any(b is backend for b in _job_backends):
            _job_backends.append(backend)


@contextmanager
def using_backend(backend: FLIPBase) -> Iterator[FLIPBase]:
    """Make ``backend`` what :func:`FLIP` returns in this thread for the duration of the block."""
    token = _current.set(backend)
    try:
        yield backend
    finally:
        _current.reset(token)


def FLIP() -> FLIPBase:
    """Return the running job's FLIP backend (dev or prod, as the job config says).

    Raises:
        FlipConfigError: Called outside a running job (or where it cannot tell which job).
    """
    current = _current.get()
    if current is not None:
        return current
    with _registry_lock:
        backends = list(_job_backends)
    if len(backends) == 1:
        return backends[0]
    if not backends:
        raise FlipConfigError(
            "FLIP() returns the backend of a running NVFlare job, and no job with a FlipBackend component "
            "(id 'flip') is running in this process. Inside a job, add that component to the config. "
            "Outside a job, build a backend yourself: flip_nvflare.FLIPStandardDev(dataframe_csv=..., "
            "images_dir=..., output_dir=...) for local files, or flip_nvflare.FLIPStandardProd() with the "
            "FLIP environment variables set."
        )
    raise FlipConfigError(
        "FLIP() cannot tell which job's backend to return: several jobs run in this process. Accept a "
        "'flip' argument in your class's constructor; the flip-nvflare runners pass the job's backend."
    )
