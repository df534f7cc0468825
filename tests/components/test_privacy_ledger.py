"""PrivacyLedger on a mock engine: the sites' privacy reports into the run summary and the hub, numbers only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.filter import FilterChainType, FilterContextKey
from nvflare.apis.fl_constant import FedEventHeader, FLContextKey
from nvflare.apis.shareable import Shareable

from flip_nvflare.backend import FlipBackend
from flip_nvflare.components.privacy_ledger import EPSILON_METRIC, OTHER_LABELS, PrivacyLedger
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.filters import gaussian_privacy as gp
from flip_nvflare.filters.budget import METRIC_DROP_EVENT, PRIVACY_REPORT_EVENT, BudgetExhausted
from flip_nvflare.metrics import send_metrics_value
from tests.engine import FakeEngine, fed_event_data, hub_calls, server_job


def _arrived(data: Shareable, origin: str) -> Shareable:
    """What NVFlare's federated event transport adds when the server receives a client's event."""
    data.set_header(FedEventHeader.DIRECTION, "in")
    data.set_header(FedEventHeader.ORIGIN, origin)
    return data


def _client_reports(tmp_path: Path, name: str, rounds: int, cap: float) -> list[tuple[str, Shareable]]:
    """A site's real GaussianPrivacy filter trained until its cap stops it; the events it fired."""
    gp._SHARED.clear()
    client = FakeEngine(tmp_path / name, server=False, identity=name, components={"flip": FlipBackend(mode="dev")})
    data_filter = gp.GaussianPrivacy(noise_multiplier=1.0, max_epsilon=cap, seed=1)
    result_filter = gp.GaussianPrivacy(noise_multiplier=1.0, max_epsilon=cap, seed=1)
    data_filter.set_prop(FilterContextKey.CHAIN_TYPE, FilterChainType.TASK_DATA_CHAIN)
    result_filter.set_prop(FilterContextKey.CHAIN_TYPE, FilterChainType.TASK_RESULT_CHAIN)
    for round_ in range(rounds):
        ctx = client.new_context()
        ctx.set_prop(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
        task = DXO(DataKind.WEIGHTS, {"w": np.zeros(4)}).to_shareable()
        task.set_header("current_round", round_)
        try:
            data_filter.process(task, ctx)
        except BudgetExhausted:
            break
        result_filter.process(DXO(DataKind.WEIGHT_DIFF, {"w": np.ones(4)}).to_shareable(), ctx)
    send_metrics_value("secret_label\nwith a newline", 0.5, client.new_context())
    return [(e.event_type, _arrived(e.data, name)) for e in client.events if e.event_type.startswith("fed.flip.")]


def test_reports_become_the_summary_section_an_epsilon_series_and_a_hub_log(tmp_path: Path) -> None:
    ledger = PrivacyLedger()
    engine, hub = server_job(tmp_path / "server", ledger)
    engine.start_run()
    for name, rounds in (("site-1", 6), ("site-2", 2)):
        for event_type, data in _client_reports(tmp_path, name, rounds, cap=10.0):
            engine.fire(event_type, **{FLContextKey.EVENT_DATA: data})
    summary = ledger.session.summary() if ledger.session else {}
    engine.end_run()

    section = summary["privacy"]
    site1, site2 = section["differential_privacy"]["site-1"], section["differential_privacy"]["site-2"]
    assert site1["trust"] == "Trust_1" and site1["epsilon_cap"] == 10.0 and site1["delta"] == 1e-5
    assert [r["round"] for r in site1["per_round"]] == [0, 1, 2]  # round 3 would have exceeded 10
    assert site1["budget_exhausted"]["round"] == 3 and site1["budget_exhausted"]["epsilon_projected"] > 10.0
    assert site1["epsilon_spent"] == site1["per_round"][-1]["epsilon"] <= 10.0
    assert (site1["noise_multiplier"], site1["clip_norm"], site1["accountant"]) == (1.0, 1.0, "rdp")
    assert [r["round"] for r in site2["per_round"]] == [0, 1] and "budget_exhausted" not in site2
    assert section["metrics_dropped_at_sites"] == {
        "site-1": {"<invalid label>": {"invalid_label": 1}},
        "site-2": {"<invalid label>": {"invalid_label": 1}},
    }
    series = sorted((client, round_, value) for _k, label, value, client, round_, _kw in hub_calls(hub, "metric"))
    assert [(c, r) for c, r, _ in series] == [("site-1", 0), ("site-1", 1), ("site-1", 2), ("site-2", 0), ("site-2", 1)]
    assert all(label == EPSILON_METRIC for _k, label, *_ in hub_calls(hub, "metric"))
    (log,) = hub_calls(hub, "log")
    assert log[2] == "site-1" and "budget exhausted: round 3 would bring epsilon to" in log[1]
    assert "cap of 10" in log[1]
    json.dumps(summary)  # JSON-able, as the results zip needs


def test_malformed_or_outgoing_reports_are_ignored(tmp_path: Path) -> None:
    ledger = PrivacyLedger()
    engine, hub = server_job(tmp_path, ledger)
    engine.start_run()
    bad: list[dict[str, Any]] = [
        {"kind": "release", "epsilon_spent": "1.0", "delta": 1e-5},
        {"kind": "release", "epsilon_spent": float("nan"), "delta": 1e-5},
        {"kind": "other", "epsilon_spent": 1.0, "delta": 1e-5},
        {"kind": "release", "epsilon_spent": True, "delta": 1e-5},
    ]
    for values in bad:
        engine.fire(PRIVACY_REPORT_EVENT, **{FLContextKey.EVENT_DATA: fed_event_data("site-1", **values)})
    outgoing = Shareable()
    outgoing.update({"kind": "release", "epsilon_spent": 1.0, "delta": 1e-5})
    engine.fire(PRIVACY_REPORT_EVENT, **{FLContextKey.EVENT_DATA: outgoing})  # not received from a client
    summary = ledger.session.summary() if ledger.session else {}
    engine.end_run()
    assert summary["privacy"]["differential_privacy"] == {} and summary["privacy"]["reports_ignored"] == 4
    assert hub_calls(hub, "metric") == []


def test_dropped_labels_are_sanitized_capped_and_limited(tmp_path: Path) -> None:
    ledger = PrivacyLedger()
    engine, _hub = server_job(tmp_path, ledger)
    engine.start_run()
    labels = ["NHS 943 476 5919 loss", "x" * 500] + [f"label{i}" for i in range(120)]
    for label in labels:
        data = fed_event_data("site-1", label=label, dropped={"not_allowed": 2, "bogus": 5, "non_finite": True})
        engine.fire(METRIC_DROP_EVENT, **{FLContextKey.EVENT_DATA: data})
    summary = ledger.session.summary() if ledger.session else {}
    engine.end_run()
    drops = summary["privacy"]["metrics_dropped_at_sites"]["site-1"]
    assert len(drops) == 101 and drops[OTHER_LABELS] == {"not_allowed": 2}
    assert not any("943 476 5919" in label for label in drops)
    assert all(len(label) <= 128 for label in drops)
    assert all(set(counts) == {"not_allowed"} for counts in drops.values())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(FlipConfigError, match="send_epsilon_metric must be true or false"):
        PrivacyLedger(send_epsilon_metric="no")  # type: ignore[arg-type]
