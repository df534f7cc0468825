"""NVFlare filters of FLIP jobs (what may leave a trust): PercentilePrivacy.

Names are loaded on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "PercentilePrivacy": "flip_nvflare.filters.percentile_privacy",
}

__all__ = ["PercentilePrivacy"]

if TYPE_CHECKING:
    from flip_nvflare.filters.percentile_privacy import PercentilePrivacy


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flip_nvflare.filters' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
