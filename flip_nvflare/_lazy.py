"""Lazy package exports: a package names what it exports, and each name is imported on first use.

This keeps ``import flip_nvflare`` (and its sub-packages) cheap: NVFlare, pandas and PyTorch load
only when a component that needs them is used.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's ``__getattr__`` and ``__dir__`` for ``exports`` (name -> defining module).

    Args:
        package: The package's ``__name__``.
        exports: Each exported name and the module that defines it.

    Returns:
        The ``(__getattr__, __dir__)`` pair to assign at the package's top level.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
