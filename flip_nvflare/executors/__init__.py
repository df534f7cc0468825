"""Client-side (trust) NVFlare executors: run the user's app, prepare the cohort, clean up.

Names are loaded on first use, so ``flip_nvflare.executors.sanitize`` and
``flip_nvflare.executors.manifest`` can be imported without importing NVFlare.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flip_nvflare._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "TrainerRunner": "flip_nvflare.executors.runners",
    "ValidatorRunner": "flip_nvflare.executors.runners",
    "EvaluatorRunner": "flip_nvflare.executors.runners",
    "ClientApiRunner": "flip_nvflare.executors.client_api",
    "CohortPreparer": "flip_nvflare.executors.cohort",
    "ImageCleanup": "flip_nvflare.executors.cleanup",
    "Sanitizer": "flip_nvflare.executors.sanitize",
    "PreparedCohort": "flip_nvflare.executors.manifest",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from flip_nvflare.executors.cleanup import ImageCleanup as ImageCleanup
    from flip_nvflare.executors.client_api import ClientApiRunner as ClientApiRunner
    from flip_nvflare.executors.cohort import CohortPreparer as CohortPreparer
    from flip_nvflare.executors.manifest import PreparedCohort as PreparedCohort
    from flip_nvflare.executors.runners import EvaluatorRunner as EvaluatorRunner
    from flip_nvflare.executors.runners import TrainerRunner as TrainerRunner
    from flip_nvflare.executors.runners import ValidatorRunner as ValidatorRunner
    from flip_nvflare.executors.sanitize import Sanitizer as Sanitizer


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
