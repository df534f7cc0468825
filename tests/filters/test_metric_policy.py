"""The site's metric policy decides at the client which metrics leave: allow list, non-finite, rounding, counts."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flip_nvflare.constants import FlipEvents
from flip_nvflare.filters import metric_policy as mp
from flip_nvflare.filters.budget import METRIC_DROP_EVENT
from flip_nvflare.filters.metric_policy import INVALID_LABEL, METRIC_POLICY_FILE, MetricPolicy, significant
from flip_nvflare.metrics import admit_metric, send_metrics_value
from tests.engine import FakeEngine


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    mp._CACHE.clear()


def _client(tmp_path: Path, policy: dict[str, Any] | str | None) -> FakeEngine:
    engine = FakeEngine(tmp_path, server=False, identity="site-1")
    target = Path(engine.workspace.get_site_config_dir()) / METRIC_POLICY_FILE
    if isinstance(policy, dict):
        target.write_text(json.dumps(policy))
    elif isinstance(policy, str):
        target.write_text(policy)
    return engine


def _sent(engine: FakeEngine) -> list[tuple[str, float]]:
    return [(e.data["label"], e.data["value"]) for e in engine.fired(FlipEvents.FED_SEND_METRIC)]


def test_only_allowed_labels_leave_and_drops_are_counted_per_label(tmp_path: Path) -> None:
    engine = _client(tmp_path, {"allow": ["LOSS_FUNCTION", "val_*"], "significant_digits": None})
    ctx = engine.new_context()
    for label, value in [("LOSS_FUNCTION", 0.5), ("val_acc", 0.9), ("train_acc", 0.8), ("train_acc", 0.7)]:
        send_metrics_value(label, value, ctx, round=1)
    send_metrics_value("Val_acc", 0.1, ctx, round=1)  # patterns are case-sensitive
    assert _sent(engine) == [("LOSS_FUNCTION", 0.5), ("val_acc", 0.9)]
    policy = MetricPolicy.for_site(ctx)
    assert policy.drops() == {"Val_acc": {"not_allowed": 1}, "train_acc": {"not_allowed": 2}}
    reports = [e.data for e in engine.fired(METRIC_DROP_EVENT)]
    assert [(r["label"], r["dropped"]) for r in reports][-2:] == [
        ("train_acc", {"not_allowed": 2}),
        ("Val_acc", {"not_allowed": 1}),
    ]
    assert all("value" not in r for r in reports)  # counts per label, never values


def test_non_finite_values_never_leave_with_or_without_a_policy(tmp_path: Path) -> None:
    for name, policy in (("none", None), ("list", {"allow": ["*"]})):
        engine = _client(tmp_path / name, policy)
        ctx = engine.new_context()
        for value in (math.nan, math.inf, -math.inf, float(np.float32("nan"))):
            send_metrics_value("LOSS_FUNCTION", value, ctx)
        send_metrics_value("LOSS_FUNCTION", 1.0, ctx)
        assert _sent(engine) == [("LOSS_FUNCTION", 1.0)]
        assert MetricPolicy.for_site(ctx).drops() == {"LOSS_FUNCTION": {"non_finite": 4}}


def test_without_a_policy_file_every_valid_label_leaves(tmp_path: Path) -> None:
    engine = _client(tmp_path, None)
    send_metrics_value("anything/at@all", 0.123456789, engine.new_context())
    assert _sent(engine) == [("anything/at@all", 0.123456789)]


def test_values_are_rounded_to_significant_digits(tmp_path: Path) -> None:
    engine = _client(tmp_path, {"allow": None, "significant_digits": 3})
    ctx = engine.new_context()
    for value in (0.123456, 98765.4, -1.23456e-7, 0.0):
        send_metrics_value("m", value, ctx)
    assert [v for _, v in _sent(engine)] == [0.123, 98800.0, -1.23e-7, 0.0]
    assert significant(123456.0, 1) == 100000.0


@pytest.mark.parametrize("label", ["loss\nNHS 943 476 5919", "loss\r", "a\x00b", "tab\there", "x\u2028y", "l" * 129])
def test_labels_with_control_characters_or_too_long_never_leave(
    tmp_path: Path, label: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _client(tmp_path, {"allow": ["*"]})  # a glob would otherwise match across a newline
    with caplog.at_level(logging.WARNING):
        send_metrics_value(label, 0.5, engine.new_context())
    assert _sent(engine) == []
    assert MetricPolicy.for_site(engine.new_context()).drops() == {INVALID_LABEL: {"invalid_label": 1}}
    assert [e.data["label"] for e in engine.fired(METRIC_DROP_EVENT)] == [INVALID_LABEL]
    assert "943" not in caplog.text and "0.5" not in caplog.text


@pytest.mark.parametrize("content", ["{not json", json.dumps({"significant_digits": 3}), json.dumps({"allow": "x"})])
def test_a_policy_file_that_cannot_be_used_lets_nothing_leave(tmp_path: Path, content: str) -> None:
    engine = _client(tmp_path, content)
    send_metrics_value("LOSS_FUNCTION", 0.5, engine.new_context())
    assert _sent(engine) == []
    assert MetricPolicy.for_site(engine.new_context()).drops() == {"LOSS_FUNCTION": {"policy_unreadable": 1}}


def test_the_drop_is_logged_with_the_label_and_count_never_the_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _client(tmp_path, {"allow": []})
    with caplog.at_level(logging.WARNING):
        send_metrics_value("secret_metric", 0.987654, engine.new_context())
    assert "'secret_metric'" in caplog.text and "not_allowed 1" in caplog.text
    assert "0.987654" not in caplog.text


def test_admit_is_the_one_call_for_every_metric_path(tmp_path: Path) -> None:
    engine = _client(tmp_path, {"allow": ["acc*"], "significant_digits": 2})
    ctx = engine.new_context()
    assert admit_metric("accuracy", 0.876, ctx) == 0.88
    assert admit_metric("loss", 0.5, ctx) is None
    assert admit_metric(3, 0.5, ctx) is None  # not a label at all
    assert admit_metric("accuracy", "high", ctx) is None  # not a number: dropped as non-finite
    assert MetricPolicy.for_site(ctx).dropped() == 3


@pytest.mark.parametrize(
    ("allow", "digits", "match"),
    [
        (["ok", "bad\n"], None, "printable"),
        ([""], None, "1 to 128"),
        (["x"], 0, "from 1 to 17"),
        (["x"], True, "whole number"),
        ("x", None, "must be a list"),
    ],
)
def test_bad_policies_are_refused(allow: Any, digits: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MetricPolicy(allow, digits)


def test_a_site_whose_workspace_cannot_be_found_sends_nothing() -> None:
    from unittest.mock import MagicMock

    ctx = MagicMock()  # an engine whose workspace answers nothing usable
    assert MetricPolicy.for_site(ctx).broken == "no site workspace"
    assert admit_metric("LOSS_FUNCTION", 0.5, ctx) is None
