"""NVFlare filters of FLIP jobs (what may leave a trust): PercentilePrivacy, GaussianPrivacy, MetricPolicy.

Names are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flip_nvflare._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "BudgetLedger": "flip_nvflare.filters.budget",
    "GaussianPrivacy": "flip_nvflare.filters.gaussian_privacy",
    "MetricPolicy": "flip_nvflare.filters.metric_policy",
    "PercentilePrivacy": "flip_nvflare.filters.percentile_privacy",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from flip_nvflare.filters.budget import BudgetLedger as BudgetLedger
    from flip_nvflare.filters.gaussian_privacy import GaussianPrivacy as GaussianPrivacy
    from flip_nvflare.filters.metric_policy import MetricPolicy as MetricPolicy
    from flip_nvflare.filters.percentile_privacy import PercentilePrivacy as PercentilePrivacy


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
