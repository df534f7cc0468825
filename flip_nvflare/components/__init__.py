"""Server-side (Central Hub) NVFlare components, and the FlipBackend every FLIP job config has.

Job configs reference them by this package's path, e.g.
``"path": "flip_nvflare.components.StatusReporter"``. Names are loaded on first use, so importing
one submodule (e.g. the NVFlare-free ``delivery``) does not import the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flip_nvflare._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "FlipBackend": "flip_nvflare.components.backend",
    "get_flip_backend": "flip_nvflare.components.backend",
    "get_hub_session": "flip_nvflare.components.backend",
    "StatusReporter": "flip_nvflare.components.status",
    "MetricsForwarder": "flip_nvflare.components.metrics",
    "ProgressReporter": "flip_nvflare.components.progress",
    "ExceptionForwarder": "flip_nvflare.components.exceptions",
    "ResultsUploader": "flip_nvflare.components.results",
    "ValidationJsonGenerator": "flip_nvflare.components.result_json",
    "EvaluationJsonGenerator": "flip_nvflare.components.result_json",
    "HubSession": "flip_nvflare.components.session",
    "HubDelivery": "flip_nvflare.components.delivery",
}

__all__ = [
    "EvaluationJsonGenerator",
    "ExceptionForwarder",
    "FlipBackend",
    "HubDelivery",
    "HubSession",
    "MetricsForwarder",
    "ProgressReporter",
    "ResultsUploader",
    "StatusReporter",
    "ValidationJsonGenerator",
    "get_flip_backend",
    "get_hub_session",
]

if TYPE_CHECKING:
    from flip_nvflare.components.backend import FlipBackend, get_flip_backend, get_hub_session
    from flip_nvflare.components.delivery import HubDelivery
    from flip_nvflare.components.exceptions import ExceptionForwarder
    from flip_nvflare.components.metrics import MetricsForwarder
    from flip_nvflare.components.progress import ProgressReporter
    from flip_nvflare.components.result_json import EvaluationJsonGenerator, ValidationJsonGenerator
    from flip_nvflare.components.results import ResultsUploader
    from flip_nvflare.components.session import HubSession
    from flip_nvflare.components.status import StatusReporter


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
