"""ProgressReporter on a mock engine: round events in, typed progress events (1-based rounds) out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.progress import ProgressReporter, payload_size, result_size
from flip_nvflare.constants import HubApi
from tests.components.fakes import RecordingHub
from tests.engine import FakeEngine, hub_calls, server_job, with_peer


class H1Hub(RecordingHub):
    @property
    def hub_api(self) -> HubApi:
        return HubApi.H1


def progress(hub: object) -> list[tuple[object, ...]]:
    return [call[1:] for call in hub_calls(hub, "progress")]


def weights(size: int) -> Shareable:
    return DXO(DataKind.WEIGHTS, {"w": np.zeros(size, dtype=np.float32)}).to_shareable()


def accept(engine: FakeEngine, client: str, result: Shareable, *, key: str = AppConstants.TRAINING_RESULT, **props):
    ctx = with_peer(engine.new_context(), client)
    engine.fire(
        AppEventType.AFTER_CONTRIBUTION_ACCEPT, ctx, **{AppConstants.AGGREGATION_ACCEPTED: True, key: result, **props}
    )


def test_a_round_becomes_started_result_and_aggregated_events(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, ProgressReporter(), clients=["site-1", "site-2"])
    engine.start_run()
    engine.fire(AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: 0, AppConstants.NUM_ROUNDS: 3})
    accept(engine, "site-1", weights(10), **{AppConstants.CURRENT_ROUND: 0})
    engine.fire(
        AppEventType.AFTER_CONTRIBUTION_ACCEPT,
        with_peer(engine.new_context(), "site-2"),
        **{AppConstants.AGGREGATION_ACCEPTED: False, AppConstants.TRAINING_RESULT: weights(10)},
    )  # refused by the aggregator: not counted
    engine.fire(AppEventType.AFTER_AGGREGATION, **{AppConstants.CURRENT_ROUND: 0})
    engine.end_run()

    assert progress(hub) == [
        ("ROUND_STARTED", 1, {"total_rounds": 3}, None),
        ("CLIENT_RESULT_RECEIVED", 1, {"size_bytes": 40}, "site-1"),
        ("ROUND_AGGREGATED", 1, {"returned": 1, "expected": 2}, None),
    ]


def test_the_round_of_a_result_comes_from_its_cookie_then_from_the_current_round(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, ProgressReporter(), clients=["site-1"])
    engine.start_run()
    engine.fire(AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: 4})
    with_cookie = weights(2)
    with_cookie.add_cookie(AppConstants.CONTRIBUTION_ROUND, 4)
    accept(engine, "site-1", with_cookie, key=FLContextKey.TASK_RESULT)  # FedAvg-style: the task result
    accept(engine, "site-1", Shareable())  # no round anywhere and no DXO: the round in progress, size 0
    engine.fire(AppEventType.AFTER_AGGREGATION)  # the current round is not in the context: the one started
    engine.end_run()

    assert progress(hub) == [
        ("ROUND_STARTED", 5, {}, None),
        ("CLIENT_RESULT_RECEIVED", 5, {"size_bytes": 8}, "site-1"),
        ("CLIENT_RESULT_RECEIVED", 5, {"size_bytes": 0}, "site-1"),
        ("ROUND_AGGREGATED", 5, {"returned": 2, "expected": 2}, None),
    ]


def test_events_without_a_round_or_a_client_send_nothing(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, ProgressReporter())
    engine.start_run()
    engine.fire(AppEventType.ROUND_STARTED)  # no current round
    engine.fire(AppEventType.AFTER_AGGREGATION)  # no round known at all
    engine.fire(
        AppEventType.AFTER_CONTRIBUTION_ACCEPT,
        **{AppConstants.AGGREGATION_ACCEPTED: True, AppConstants.TRAINING_RESULT: weights(1)},
    )  # no peer
    engine.end_run()

    assert progress(hub) == []


def test_an_h1_hub_gets_no_progress_events(tmp_path: Path) -> None:
    reporter = ProgressReporter()
    engine, hub = server_job(tmp_path, reporter, hub=H1Hub())
    engine.start_run()
    engine.fire(AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: 0})
    accept(engine, "site-1", weights(4), **{AppConstants.CURRENT_ROUND: 0})
    engine.fire(AppEventType.AFTER_AGGREGATION, **{AppConstants.CURRENT_ROUND: 0})
    engine.end_run()

    assert reporter.session is not None and reporter.session.closed
    assert hub_calls(hub) == []


class FakeTensor:
    def __init__(self, count: int, element: int, broken: bool = False) -> None:
        self.count, self.element, self.broken = count, element, broken

    def numel(self) -> int:
        if self.broken:
            raise RuntimeError("meta tensor")
        return self.count

    def element_size(self) -> int:
        return self.element


def test_payload_size_of_tensors_bytes_and_nesting() -> None:
    assert payload_size(FakeTensor(10, 4)) == 40
    assert payload_size(FakeTensor(10, 4, broken=True)) == 0
    assert payload_size({"a": b"12345", "b": [bytearray(3), memoryview(b"xy")], "c": "text"}) == 10
    deep: object = b"1234"
    for _ in range(12):
        deep = [deep]
    assert payload_size(deep) == 0  # nesting deeper than any model's weights is not followed


def test_result_size_of_a_result_that_is_not_a_dxo() -> None:
    assert result_size(Shareable()) == 0
    assert result_size(weights(3)) == 12
