"""FLIP services emulator: the Central Hub's flip-api and a trust's data-access-api and imaging-api.

Run it with ``flip-nvflare emulate`` (or ``python -m flip_emulator``); from Python with
:func:`start_emulator` (:mod:`flip_emulator.handle`); from tests through the fixtures of
:mod:`flip_emulator.pytest_plugin`, registered as a ``pytest11`` entry point. Importing this package
is cheap: FastAPI, uvicorn, nibabel and moto are imported only when a server starts. Installed by
flip-nvflare's ``emulator`` extra. See ``docs/emulator.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flip_nvflare._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "EmulatorConfig": "flip_emulator.config",
    "EmulatorServer": "flip_emulator.server",
    "FaultSpec": "flip_emulator.faults",
    "ModelRecords": "flip_emulator.store",
    "EmulatorHandle": "flip_emulator.handle",
    "start_emulator": "flip_emulator.handle",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from flip_emulator.config import EmulatorConfig as EmulatorConfig
    from flip_emulator.faults import FaultSpec as FaultSpec
    from flip_emulator.handle import EmulatorHandle as EmulatorHandle
    from flip_emulator.handle import start_emulator as start_emulator
    from flip_emulator.server import EmulatorServer as EmulatorServer
    from flip_emulator.store import ModelRecords as ModelRecords


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
