"""pytest fixtures that run the FLIP services emulator, registered through the ``pytest11`` entry point.

Installing flip-nvflare with the ``emulator`` extra makes these fixtures available in any test
session (nothing to add to ``conftest.py``):

- ``flip_emulator``: a fresh emulator for one test (about 1-3 s to start). Options through the
  marker ``@pytest.mark.flip_emulator(hub_api="h2", open=True, s3=False, ...)`` (the keyword
  arguments of :func:`flip_emulator.handle.start_emulator`).
- ``flip_emulator_session``: one emulator for the whole session (H1, S3 on).
- ``flip_emulator_shared``: the session emulator, reset (records, faults, models registered at run
  time, settings, downloaded images) before the test.

Nothing starts, and nothing of the emulator or of flip_nvflare is imported, until a test asks for a fixture.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from flip_emulator.handle import EmulatorHandle


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``flip_emulator`` marker."""
    config.addinivalue_line(
        "markers",
        "flip_emulator(**options): options of the flip_emulator fixture (keyword arguments of "
        "flip_emulator.handle.start_emulator)",
    )


@pytest.fixture(scope="session")
def flip_emulator_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the synthetic population, shared by every emulator of the session."""
    return tmp_path_factory.getbasetemp() / "flip-emulator-synthetic"


@pytest.fixture(scope="session")
def flip_emulator_session(
    tmp_path_factory: pytest.TempPathFactory, flip_emulator_synthetic: Path
) -> Iterator[EmulatorHandle]:
    """One emulator (H1, with S3) for the whole test session."""
    from flip_emulator.handle import start_emulator

    with start_emulator(
        tmp_path_factory.mktemp("flip-emulator-session"), synthetic_dir=flip_emulator_synthetic
    ) as handle:
        yield handle


@pytest.fixture
def flip_emulator_shared(flip_emulator_session: EmulatorHandle) -> EmulatorHandle:
    """The session emulator, reset before the test."""
    from flip_emulator.handle import EmulatorUnreachable as unreachable

    deadline = time.monotonic() + 30
    while True:  # a test may have left both services down for a while
        try:
            flip_emulator_session.reset()
            break
        except unreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    flip_emulator_session.wait_up()
    return flip_emulator_session


@pytest.fixture
def flip_emulator(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, flip_emulator_synthetic: Path
) -> Iterator[EmulatorHandle]:
    """A fresh emulator for one test; options from ``@pytest.mark.flip_emulator(...)``."""
    marker = request.node.get_closest_marker("flip_emulator")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    options.setdefault("synthetic_dir", flip_emulator_synthetic)
    from flip_emulator.handle import start_emulator

    with start_emulator(tmp_path_factory.mktemp("flip-emulator"), **options) as handle:
        yield handle
