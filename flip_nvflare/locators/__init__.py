"""Model locators of FLIP jobs (server side): where the models a job evaluates come from.

``CheckpointModelLocator`` reads the checkpoints an evaluation job's ``config.json`` names from a
folder on the server. Names are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flip_nvflare._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "CheckpointModelLocator": "flip_nvflare.locators.checkpoint",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from flip_nvflare.locators.checkpoint import CheckpointModelLocator as CheckpointModelLocator


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
