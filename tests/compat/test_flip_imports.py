"""Every FLIP import an app makes works with ``flip`` changed to ``flip_nvflare``, and resolves to our object."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module

import pytest

from flip_nvflare.compat import FLIP_IMPORTS


def _resolve(spec: str) -> object:
    module, _, name = spec.partition(":")
    return getattr(import_module(module), name)


def test_the_table_is_not_empty() -> None:
    assert len(FLIP_IMPORTS) >= 7


@pytest.mark.parametrize(("app_import", "home"), sorted(FLIP_IMPORTS.items()))
def test_each_flip_import_resolves_to_its_home(app_import: str, home: str) -> None:
    assert _resolve(app_import) is _resolve(home)


def test_the_imports_of_a_flip_app_run_in_a_fresh_interpreter_without_warnings() -> None:
    """Written exactly as a FLIP app's import block reads after the change (no NVFlare import needed)."""
    lines = []
    for app_import in FLIP_IMPORTS:
        module, _, name = app_import.partition(":")
        lines.append(f"from {module} import {name}")
    code = "import warnings\nwarnings.simplefilter('error')\n" + "\n".join(lines) + "\nprint('ok')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
