"""Fixtures of the emulator tests.

The emulator fixtures come from the ``flip_nvflare.emulator.testing`` plugin; it is registered here
too, so these tests run even where the root conftest does not list it.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from flip_nvflare.emulator.synthetic import SyntheticData, ensure_synthetic

PLUGIN = "flip_nvflare.emulator.testing"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN):
        config.pluginmanager.register(importlib.import_module(PLUGIN), PLUGIN)


@pytest.fixture(scope="session")
def population(flip_emulator_synthetic: Path) -> SyntheticData:
    """The synthetic population the emulators of this session serve (seed 0, 60 people)."""
    return ensure_synthetic(flip_emulator_synthetic, seed=0, subjects=60)
