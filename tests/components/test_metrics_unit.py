"""MetricsForwarder on a mock engine: client metric events in, hub metric calls out (trust, round, x-axis)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
from nvflare.apis.analytix import AnalyticsData, AnalyticsDataType
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FedEventHeader, FLContextKey
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.metrics import FED_ANALYTICS_EVENT, MetricsForwarder
from flip_nvflare.constants import FlipEvents
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.metrics import send_metrics_value
from tests.engine import FakeEngine, fed_event_data, hub_calls, server_job, with_peer


def metrics(hub: object) -> list[tuple[str, float, str, int, dict[str, Any]]]:
    """The metric calls the hub received, sorted (metrics are delivered concurrently, in no set order)."""
    calls = [(label, value, client, round_, kw) for _kind, label, value, client, round_, kw in hub_calls(hub, "metric")]
    return sorted(calls, key=lambda call: (call[2], call[0], call[3]))


def analytics(origin: str, tag: str, value: Any, data_type: AnalyticsDataType, step: int | None = None) -> Shareable:
    record = AnalyticsData(tag, value, data_type, **({"global_step": step} if step is not None else {}))
    data = record.to_dxo().to_shareable()
    data.set_header(FedEventHeader.DIRECTION, "in")
    data.set_header(FedEventHeader.ORIGIN, origin)
    return data


def flip_metric(engine: FakeEngine, origin: str, **values: Any) -> None:
    engine.fire(FlipEvents.FED_SEND_METRIC, **{FLContextKey.EVENT_DATA: fed_event_data(origin, **values)})


def test_a_metric_sent_by_client_code_reaches_the_hub_with_the_trust_and_round(tmp_path: Path) -> None:
    client = FakeEngine(tmp_path / "client", server=False, identity="site-1")
    send_metrics_value("val_loss", 0.25, client.new_context(), round=3)
    sent = client.fired(FlipEvents.FED_SEND_METRIC)
    assert len(sent) == 1
    payload = sent[0].data
    assert isinstance(payload, Shareable)
    # what NVFlare's federated event transport adds when the server receives it
    payload.set_header(FedEventHeader.DIRECTION, "in")
    payload.set_header(FedEventHeader.ORIGIN, "site-1")

    forwarder = MetricsForwarder()
    engine, hub = server_job(tmp_path / "server", forwarder)
    engine.start_run()
    engine.fire(FlipEvents.FED_SEND_METRIC, **{FLContextKey.EVENT_DATA: payload})
    engine.end_run()

    assert metrics(hub) == [
        ("val_loss", 0.25, "site-1", 3, {"x_value": None, "x_label": None, "trust_name": "Trust_1"})
    ]
    summary = forwarder.session.summary() if forwarder.session else {}
    assert summary["metrics"]["by_client"] == {"site-1": {"val_loss": 1}}


def test_a_metric_without_a_round_takes_the_round_of_the_clients_last_task(tmp_path: Path) -> None:
    forwarder = MetricsForwarder()
    engine, hub = server_job(tmp_path, forwarder)
    engine.start_run()
    flip_metric(engine, "site-1", label="early", value=1.0)  # nothing known yet: round 0
    engine.fire(AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: 2})
    task = Shareable()
    task.set_header(AppConstants.CURRENT_ROUND, 4)
    engine.fire(
        EventType.AFTER_TASK_DATA_FILTER, with_peer(engine.new_context(), "site-1"), **{FLContextKey.TASK_DATA: task}
    )
    flip_metric(engine, "site-1", label="loss", value=1.5)
    flip_metric(engine, "site-2", label="loss", value=2.5)  # no task seen for site-2: the server's round
    engine.end_run()

    assert [(label, client, round_) for label, _v, client, round_, _kw in metrics(hub)] == [
        ("early", "site-1", 0),
        ("loss", "site-1", 4),
        ("loss", "site-2", 2),
    ]


def test_an_x_axis_is_kept_when_it_is_complete(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, MetricsForwarder())
    engine.start_run()
    flip_metric(engine, "site-1", label="loss", value=1.0, round=0, x_value=7, x_label="epoch")
    flip_metric(engine, "site-1", label="acc@step", value=0.5, round=0, x_value=100)
    flip_metric(engine, "site-1", label="lr@" + "x" * 65, value=0.1, round=0, x_value=1)  # x label too long
    flip_metric(engine, "site-1", label="mse@epoch", value=0.2, round=0, x_value=math.inf)  # x not finite
    engine.end_run()

    assert [(label, kw["x_value"], kw["x_label"]) for label, _v, _c, _r, kw in metrics(hub)] == [
        ("acc", 100.0, "step"),
        ("loss", 7.0, "epoch"),
        ("lr", None, None),
        ("mse", None, None),
    ]


def test_bad_metrics_are_dropped_and_counted(tmp_path: Path) -> None:
    forwarder = MetricsForwarder()
    engine, hub = server_job(tmp_path, forwarder)
    engine.start_run()
    flip_metric(engine, "site-1", label="loss", value=math.nan, round=1)
    flip_metric(engine, "site-1", label="loss", value="not a number", round=1)
    flip_metric(engine, "site-1", label="  ", value=1.0, round=1)
    flip_metric(engine, "site-1", label="loss", value=0.5, round=1)
    summary = forwarder.session.summary() if forwarder.session else {}
    engine.end_run()

    assert metrics(hub) == [("loss", 0.5, "site-1", 1, {"x_value": None, "x_label": None, "trust_name": "Trust_1"})]
    assert summary["metrics"]["dropped"] == {"non_finite": 2, "invalid": 1}
    assert summary["metrics"]["forwarded"] == 1


def test_events_that_are_not_metrics_from_a_client_are_ignored(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, MetricsForwarder())
    engine.start_run()
    outgoing = fed_event_data("site-1", label="loss", value=1.0)
    outgoing.set_header(FedEventHeader.DIRECTION, "out")  # the server's own event going out
    engine.fire(FlipEvents.FED_SEND_METRIC, **{FLContextKey.EVENT_DATA: outgoing})
    engine.fire(FlipEvents.FED_SEND_METRIC, **{FLContextKey.EVENT_DATA: {"label": "loss", "value": 1.0}})
    anonymous = fed_event_data("site-1", label="loss", value=1.0)
    anonymous.set_header(FedEventHeader.ORIGIN, None)
    engine.fire(FlipEvents.FED_SEND_METRIC, **{FLContextKey.EVENT_DATA: anonymous})
    flip_metric(engine, "site-3", label="kept", value=3.0, round=0)
    engine.end_run()

    assert [(label, client) for label, _v, client, _r, _kw in metrics(hub)] == [("kept", "site-3")]


def test_nvflare_analytics_become_metrics(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, MetricsForwarder())
    engine.start_run()
    for data in (
        analytics("site-1", "val_acc", 0.9, AnalyticsDataType.SCALAR, step=5),
        analytics("site-1", "train_loss@epoch", 0.4, AnalyticsDataType.METRIC, step=3),
        analytics("site-2", "loss@step", {"train": 1.0, "val": 2.0}, AnalyticsDataType.SCALARS, step=9),
        analytics("site-2", "note", "some text", AnalyticsDataType.TEXT),
    ):
        engine.fire(FED_ANALYTICS_EVENT, **{FLContextKey.EVENT_DATA: data})
    not_a_dxo = fed_event_data("site-1", label="x", value=1.0)
    engine.fire(FED_ANALYTICS_EVENT, **{FLContextKey.EVENT_DATA: not_a_dxo})
    engine.end_run()

    assert [(label, value, client, kw["x_value"], kw["x_label"]) for label, value, client, _r, kw in metrics(hub)] == [
        ("train_loss", 0.4, "site-1", 3.0, "epoch"),
        ("val_acc", 0.9, "site-1", None, None),
        ("loss/train", 1.0, "site-2", 9.0, "step"),
        ("loss/val", 2.0, "site-2", 9.0, "step"),
    ]


def test_analytics_can_be_turned_off(tmp_path: Path) -> None:
    engine, hub = server_job(tmp_path, MetricsForwarder(analytics_events=[]))
    engine.start_run()
    engine.fire(
        FED_ANALYTICS_EVENT, **{FLContextKey.EVENT_DATA: analytics("site-1", "acc", 0.9, AnalyticsDataType.SCALAR)}
    )
    flip_metric(engine, "site-1", label="loss", value=1.0, round=0)
    engine.end_run()

    assert [label for label, *_rest in metrics(hub)] == ["loss"]


def test_warnings_are_throttled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine, hub = server_job(tmp_path, MetricsForwarder())
    engine.start_run()
    with caplog.at_level(logging.WARNING):
        for _ in range(12):
            flip_metric(engine, "site-1", label="loss", value=math.nan, round=0)
    engine.end_run()

    warnings = [r for r in caplog.records if "is not a finite number" in r.getMessage()]
    assert len(warnings) == 5
    assert "dropped (5 so far)" in warnings[-1].getMessage()
    assert metrics(hub) == []


def test_analytics_events_must_be_names() -> None:
    with pytest.raises(FlipConfigError, match="analytics_events must be a list of event names"):
        MetricsForwarder(analytics_events=["fed.analytix_log_stats", ""])
