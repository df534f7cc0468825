"""Fixtures of the executor tests: the emulator plugin (for prod-mode runs against the FLIP emulator)."""

from __future__ import annotations

import pytest

PLUGIN = "flip_nvflare.emulator.testing"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN):
        config.pluginmanager.import_plugin(PLUGIN)
