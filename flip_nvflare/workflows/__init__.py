"""Server-side pieces of the FLIP job templates that NVFlare does not ship.

CheckpointModelLocator (the models an evaluation job evaluates) and EvaluationReporter (its
final metrics to the hub, and the failures file).

Names are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flip_nvflare._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "CheckpointModelLocator": "flip_nvflare.workflows.model_locator",
    "EvaluationReporter": "flip_nvflare.workflows.evaluation_report",
}

__all__ = ["CheckpointModelLocator", "EvaluationReporter"]

if TYPE_CHECKING:
    from flip_nvflare.workflows.evaluation_report import EvaluationReporter
    from flip_nvflare.workflows.model_locator import CheckpointModelLocator


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
