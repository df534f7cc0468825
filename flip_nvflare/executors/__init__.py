"""Client-side (trust) NVFlare executors: run the user's app, prepare the cohort, clean up.

Names are loaded on first use, so ``flip_nvflare.executors.sanitize`` and
``flip_nvflare.executors.manifest`` can be imported without importing NVFlare.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "TrainerRunner": "flip_nvflare.executors.runners",
    "ValidatorRunner": "flip_nvflare.executors.runners",
    "EvaluatorRunner": "flip_nvflare.executors.runners",
    "CohortPreparer": "flip_nvflare.executors.cohort",
    "ImageCleanup": "flip_nvflare.executors.cleanup",
    "Sanitizer": "flip_nvflare.executors.sanitize",
    "PreparedCohort": "flip_nvflare.executors.manifest",
}

__all__ = [
    "CohortPreparer",
    "EvaluatorRunner",
    "ImageCleanup",
    "PreparedCohort",
    "Sanitizer",
    "TrainerRunner",
    "ValidatorRunner",
]

if TYPE_CHECKING:
    from flip_nvflare.executors.cleanup import ImageCleanup
    from flip_nvflare.executors.cohort import CohortPreparer
    from flip_nvflare.executors.manifest import PreparedCohort
    from flip_nvflare.executors.runners import EvaluatorRunner, TrainerRunner, ValidatorRunner
    from flip_nvflare.executors.sanitize import Sanitizer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flip_nvflare.executors' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
