from __future__ import annotations

import random

import pytest

from flip_emulator.faults import FaultBoard, FaultSpec
from tests.support.clock import FakeClock


def outcomes(board: FaultBoard, route: str, n: int) -> list[int | None]:
    return [board.decide(route).error_status for _ in range(n)]


def test_error_first_and_every_are_deterministic() -> None:
    board = FaultBoard()
    board.set("hub.status", FaultSpec(error_first=2, error_status=502))
    assert outcomes(board, "hub.status", 4) == [502, 502, None, None]
    board.set("hub.status", FaultSpec(error_every=3))  # replacing restarts the count
    assert outcomes(board, "hub.status", 7) == [None, None, 503, None, None, 503, None]


def test_error_rate_follows_the_seeded_sequence() -> None:
    board = FaultBoard()
    board.set("trust.cohort", FaultSpec(error_rate=0.4, seed=7, error_status=500))
    rng = random.Random(7)
    expected = [500 if rng.random() < 0.4 else None for _ in range(50)]
    assert outcomes(board, "trust.cohort", 50) == expected
    assert 0 < expected.count(500) < 50


def test_most_specific_pattern_wins_and_health_needs_its_own() -> None:
    board = FaultBoard()
    board.set("*", FaultSpec(error_every=1, error_status=500))
    board.set("hub.*", FaultSpec(error_every=1, error_status=502))
    board.set("hub.logs", FaultSpec(latency=0.5))
    assert board.decide("trust.upload").error_status == 500
    assert board.decide("hub.metrics").error_status == 502
    logs = board.decide("hub.logs")
    assert (logs.error_status, logs.latency) == (None, 0.5)
    assert board.decide("hub.health").error_status is None
    board.clear("hub.*")
    assert board.decide("hub.metrics").error_status == 500
    board.clear()
    assert board.decide("hub.metrics").error_status is None


def test_hang_decision_and_clearing_bumps_the_generation() -> None:
    board = FaultBoard()
    board.set("trust.download", FaultSpec(hang=True, hang_seconds=2))
    assert board.decide("trust.download").hang_seconds == 2
    generation = board.generation
    board.clear()
    assert board.generation == generation + 1


def test_down_window_expires() -> None:
    clock = FakeClock(start=100.0)
    board = FaultBoard(clock)
    board.set_down("hub", 0.2, "503")
    window = board.down("hub")
    assert window is not None and window.mode == "503"
    assert board.down("trust") is None
    clock.advance_to(100.19)
    assert board.down("hub") == window  # still down just before its end
    clock.advance_to(100.25)
    assert board.down("hub") is None


@pytest.mark.parametrize(
    "values",
    [
        {"error_status": 200},
        {"error_rate": 1.5},
        {"latency": -1},
        {"error_every": -2},
        {"hang_seconds": 0},
        {"colour": "red"},
    ],
)
def test_bad_specs_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FaultSpec.from_mapping(values)


def test_specs_parse_from_command_line_strings() -> None:
    spec = FaultSpec.from_strings({"latency": "0.25", "error_every": "3", "hang": "false", "retry_after": "1"})
    assert spec == FaultSpec(latency=0.25, error_every=3, hang=False, retry_after=1.0)
    with pytest.raises(ValueError, match="error_every"):
        FaultSpec.from_strings({"error_every": "often"})


def test_unknown_routes_and_services_are_refused() -> None:
    board = FaultBoard()
    with pytest.raises(ValueError, match="unknown route"):
        board.set("hub.statuses", FaultSpec())
    with pytest.raises(ValueError, match="unknown service"):
        board.set_down("xnat", 1, "503")
