"""Server-side (Central Hub) NVFlare components: the widgets that report a run to the hub.

Job configs reference them by this package's path, e.g.
``"path": "flip_nvflare.components.StatusReporter"``. The FlipBackend component both sides use
lives in :mod:`flip_nvflare.backend`. Names are loaded on first use, so importing
one submodule (e.g. the NVFlare-free ``delivery``) does not import the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flip_nvflare._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "StatusReporter": "flip_nvflare.components.status",
    "MetricsForwarder": "flip_nvflare.components.metrics",
    "ProgressReporter": "flip_nvflare.components.progress",
    "ExceptionForwarder": "flip_nvflare.components.exceptions",
    "ResultsUploader": "flip_nvflare.components.results",
    "ValidationJsonGenerator": "flip_nvflare.components.result_json",
    "EvaluationJsonGenerator": "flip_nvflare.components.result_json",
    "HubSession": "flip_nvflare.components.session",
    "HubDelivery": "flip_nvflare.components.delivery",
    "EvaluationReporter": "flip_nvflare.components.evaluation_report",
    "SiteLossReporter": "flip_nvflare.components.site_loss",
    "JobWatcher": "flip_nvflare.components.job_watch",
    "PrivacyLedger": "flip_nvflare.components.privacy_ledger",
    "MlflowTracker": "flip_nvflare.components.tracking",
}

#: Names this package used to export, each with its new path (they work until the next release).
MOVED: dict[str, str] = {
    "FlipBackend": "flip_nvflare.backend.FlipBackend",
    "get_flip_backend": "flip_nvflare.backend.get_flip_backend",
    "get_hub_session": "flip_nvflare.backend.get_hub_session",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from flip_nvflare.components.delivery import HubDelivery as HubDelivery
    from flip_nvflare.components.evaluation_report import EvaluationReporter as EvaluationReporter
    from flip_nvflare.components.exceptions import ExceptionForwarder as ExceptionForwarder
    from flip_nvflare.components.job_watch import JobWatcher as JobWatcher
    from flip_nvflare.components.metrics import MetricsForwarder as MetricsForwarder
    from flip_nvflare.components.privacy_ledger import PrivacyLedger as PrivacyLedger
    from flip_nvflare.components.progress import ProgressReporter as ProgressReporter
    from flip_nvflare.components.result_json import EvaluationJsonGenerator as EvaluationJsonGenerator
    from flip_nvflare.components.result_json import ValidationJsonGenerator as ValidationJsonGenerator
    from flip_nvflare.components.results import ResultsUploader as ResultsUploader
    from flip_nvflare.components.session import HubSession as HubSession
    from flip_nvflare.components.site_loss import SiteLossReporter as SiteLossReporter
    from flip_nvflare.components.status import StatusReporter as StatusReporter
    from flip_nvflare.components.tracking import MlflowTracker as MlflowTracker


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, moved=MOVED)
