"""Fixtures of the emulator tests (the emulator fixtures themselves come from its pytest11 plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flip_emulator.synthetic import SyntheticData, ensure_synthetic


@pytest.fixture(scope="session")
def population(flip_emulator_synthetic: Path) -> SyntheticData:
    """The synthetic population the emulators of this session serve (seed 0, 60 people)."""
    return ensure_synthetic(flip_emulator_synthetic, seed=0, subjects=60)
