"""flip-nvflare: connects NVIDIA FLARE jobs to FLIP, the Federated Learning and Interoperability Platform.

Importing this package is cheap and has no side effects: it reads no settings, opens no
connection and imports neither NVFlare nor PyTorch. Public names are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flip_nvflare._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "FLIPBase": "flip_nvflare.core.base",
    "FLIPStandardDev": "flip_nvflare.core.dev",
    "FLIPStandardProd": "flip_nvflare.core.prod",
    "ModelStatus": "flip_nvflare.constants",
    "ResourceType": "flip_nvflare.constants",
    "JobType": "flip_nvflare.constants",
    "HubApi": "flip_nvflare.constants",
    "PTConstants": "flip_nvflare.constants",
    "FlipError": "flip_nvflare.errors",
    "ResultsUploadError": "flip_nvflare.errors",
    "FLIP": "flip_nvflare.client",
    "send_metrics_value": "flip_nvflare.client",
    "get_model_weights_diff": "flip_nvflare.compat.weights",
    "prepared_cohort": "flip_nvflare.client",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from flip_nvflare.client import FLIP as FLIP
    from flip_nvflare.client import prepared_cohort as prepared_cohort
    from flip_nvflare.client import send_metrics_value as send_metrics_value
    from flip_nvflare.compat.weights import get_model_weights_diff as get_model_weights_diff
    from flip_nvflare.constants import HubApi as HubApi
    from flip_nvflare.constants import JobType as JobType
    from flip_nvflare.constants import ModelStatus as ModelStatus
    from flip_nvflare.constants import PTConstants as PTConstants
    from flip_nvflare.constants import ResourceType as ResourceType
    from flip_nvflare.core.base import FLIPBase as FLIPBase
    from flip_nvflare.core.dev import FLIPStandardDev as FLIPStandardDev
    from flip_nvflare.core.prod import FLIPStandardProd as FLIPStandardProd
    from flip_nvflare.errors import FlipError as FlipError
    from flip_nvflare.errors import ResultsUploadError as ResultsUploadError


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
