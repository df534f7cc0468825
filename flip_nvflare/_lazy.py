"""Lazy package exports: a package names what it exports, and each name is imported on first use.

This keeps ``import flip_nvflare`` (and its sub-packages) cheap: NVFlare, pandas and PyTorch load
only when a component that needs them is used.

A package may also keep old names working for one release (``moved``): each still resolves, to
the same object as its new home, with a :class:`FutureWarning` naming the path to use instead.
Job configs written for an older flip-nvflare therefore keep loading while they are updated.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(
    package: str,
    exports: Mapping[str, str],
    moved: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's ``__getattr__`` and ``__dir__`` for ``exports`` (name -> defining module).

    Args:
        package: The package's ``__name__``.
        exports: Each public name and the module that defines it.
        moved: Names that used to be exported here, each mapped to its new dotted path
            (``"flip_nvflare.backend.FlipBackend"``). They resolve with a FutureWarning and are
            neither in ``__all__`` nor in ``dir()``.

    Returns:
        The ``(__getattr__, __dir__)`` pair to assign at the package's top level.
    """
    old_names = dict(moved or {})

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is not None:
            value = getattr(import_module(module), name)
            setattr(sys.modules[package], name, value)
            return value
        new_path = old_names.get(name)
        if new_path is not None:
            warnings.warn(
                f"{package}.{name} has moved to {new_path}; the old path works until the next release. "
                f"Update the job config's 'path' (or the import) to {new_path!r}.",
                FutureWarning,
                stacklevel=2,
            )
            return resolve(new_path)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


def resolve(dotted_path: str) -> Any:
    """Import ``package.module.Name`` and return ``Name`` (as NVFlare does for a component's ``path``)."""
    module, _, name = dotted_path.rpartition(".")
    return getattr(import_module(module), name)
