"""FLIP services emulator: the Central Hub's flip-api and a trust's data-access-api and imaging-api.

Run it with ``flip-nvflare emulate`` (or ``python -m flip_nvflare.emulator``); use it from tests
through :mod:`flip_nvflare.emulator.testing`. Importing this package is cheap: FastAPI, uvicorn,
nibabel and moto are imported only when a server starts. See ``docs/emulator.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flip_nvflare._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
