"""NVFlare filters of FLIP jobs (what may leave a trust): PercentilePrivacy.

Names are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flip_nvflare._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "PercentilePrivacy": "flip_nvflare.filters.percentile_privacy",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from flip_nvflare.filters.percentile_privacy import PercentilePrivacy as PercentilePrivacy


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
