"""FLIP services emulator: the Central Hub's flip-api and a trust's data-access-api and imaging-api.

Run it with ``flip-nvflare emulate`` (or ``python -m flip_nvflare.emulator``); use it from tests
through :mod:`flip_nvflare.emulator.testing`. Importing this package is cheap: FastAPI, uvicorn,
nibabel and moto are imported only when a server starts. See ``docs/emulator.md``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "EmulatorConfig": "flip_nvflare.emulator.config",
    "EmulatorServer": "flip_nvflare.emulator.server",
    "FaultSpec": "flip_nvflare.emulator.faults",
    "ModelRecords": "flip_nvflare.emulator.store",
}

__all__ = ["EmulatorConfig", "EmulatorServer", "FaultSpec", "ModelRecords"]

if TYPE_CHECKING:
    from flip_nvflare.emulator.config import EmulatorConfig
    from flip_nvflare.emulator.faults import FaultSpec
    from flip_nvflare.emulator.server import EmulatorServer
    from flip_nvflare.emulator.store import ModelRecords


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flip_nvflare.emulator' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
