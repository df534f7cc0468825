"""HubSession: trust names, the run journal, holders, draining at the last release and at exit.

The delivery's time is a FakeClock the session passes on: it moves only when a test moves it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from flip_nvflare.components.session import HubSession, RunJournal, SessionSettings, TrustNames
from flip_nvflare.constants import HubApi, ModelStatus
from flip_nvflare.errors import FlipConfigError, FlipServiceUnavailable
from tests.components.fakes import RecordingHub
from tests.support.clock import Background, FakeClock

MODEL_ID = str(uuid.uuid4())


def test_trust_names_rule_and_overrides() -> None:
    names = TrustNames({"hospital-a": "Trust_7", "site-3": "Trust_9"})
    assert names("site-1") == "Trust_1"
    assert names("site-12") == "Trust_12"
    assert names("Trust_4") == "Trust_4"
    assert names("hospital-a") == "Trust_7" and names("site-3") == "Trust_9"
    assert names("other") == "other" and names("site-x") == "site-x"
    assert names.as_dict(["site-2", "site-1", "site-2"]) == {"site-1": "Trust_1", "site-2": "Trust_2"}
    with pytest.raises(FlipConfigError, match="trust_names must map"):
        TrustNames({"site-1": 3})  # type: ignore[dict-item]


def test_run_journal_summary() -> None:
    journal = RunJournal()
    journal.status_reported(ModelStatus.INITIATED)
    journal.metric_forwarded("site-1", "loss")
    journal.metric_forwarded("site-1", "loss")
    journal.metric_forwarded("site-2", "acc")
    journal.metric_dropped("non_finite")
    journal.client_error("site-2", "train", 3, "EXECUTION_EXCEPTION")
    journal.mark_failed("first reason")
    journal.mark_failed("second reason")
    summary = journal.summary()
    assert [s["status"] for s in summary["statuses"]] == ["INITIATED"]
    assert summary["metrics"] == {
        "forwarded": 3,
        "dropped": {"non_finite": 1},
        "by_client": {"site-1": {"loss": 2}, "site-2": {"acc": 1}},
    }
    assert summary["client_errors"]["site-2"][0]["return_code"] == "EXECUTION_EXCEPTION"
    assert summary["failure"] == "first reason" and summary["clients"] == ["site-1", "site-2"]
    json.dumps(summary)


def test_the_last_holder_drains_and_closes_whatever_the_order() -> None:
    clock = FakeClock()
    hub = RecordingHub(latency=0.01, clock=clock)
    session = HubSession(
        hub,
        model_id=MODEL_ID,
        trust_names=TrustNames({"site-9": "Trust_Nine"}),
        hub_api=HubApi.H2,
        settings=SessionSettings(concurrency=2),
        flip_mode="prod",
        clock=clock,
    )
    for holder in ("backend", "status", "metrics"):
        session.hold(holder)
    session.report_status(ModelStatus.INITIATED)
    session.send_metric("site-9", "loss", 0.5, 2, x_value=20.0, x_label="epoch")
    session.send_client_log("site-9", "Traceback...")
    session.send_progress("ROUND_STARTED", 3, {"total_rounds": 5})
    assert session.release("status") is None and session.release("backend") is None
    assert not hub.closed and not session.closed
    assert hub.calls == [] and session.delivery.pending == 4  # the clock has not moved: all still queued
    releasing = Background(lambda: session.release("metrics"))
    clock.run(releasing.done, limit=1.0)  # each call takes 10 ms; the drain deadline is 60 s away
    report = releasing.result()
    assert report is not None and report.delivered == {"status": 1, "metric": 1, "log": 1, "progress": 1}
    assert hub.closed and session.closed
    calls = {c[0]: c[1] for c in hub.calls}
    assert calls["metric"] == (
        "loss",
        0.5,
        "site-9",
        2,
        {"x_value": 20.0, "x_label": "epoch", "trust_name": "Trust_Nine"},
    )
    assert calls["log"] == ("Traceback...", "site-9", {"trust_name": "Trust_Nine"})
    assert calls["progress"] == ("ROUND_STARTED", 3, {"total_rounds": 5}, None)
    summary = session.summary()
    assert summary["hub_api"] == "h2" and summary["trusts"] == {"site-9": "Trust_Nine"}
    assert summary["hub_delivery"]["delivered"]["metric"] == 1 and summary["hub_delivery"]["pending"] == 0


def test_queued_calls_are_delivered_when_the_process_exits_before_the_run_ends(tmp_path: Path) -> None:
    probe = textwrap.dedent(
        f"""
        from flip_nvflare.components.session import HubSession, SessionSettings, TrustNames
        from flip_nvflare.constants import ModelStatus
        from flip_nvflare.core.dev import FLIPStandardDev

        session = HubSession(FLIPStandardDev(output_dir={str(tmp_path)!r}), model_id={MODEL_ID!r},
                             trust_names=TrustNames(), hub_api=None, settings=SessionSettings(), flip_mode="dev")
        session.hold("status")
        session.report_status(ModelStatus.ERROR)  # e.g. queued on a fatal error; the process then exits
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    ledger = [json.loads(line) for line in (tmp_path / "status.jsonl").read_text().splitlines()]
    assert [r["status"] for r in ledger] == ["ERROR"]
    assert "exiting before the run ended" in done.stderr


def test_the_last_release_gives_up_at_the_drain_deadline_and_still_closes_the_backend() -> None:
    clock = FakeClock()

    def down(method: str, args: tuple[object, ...]) -> None:
        raise FlipServiceUnavailable("flip-api", "PUT", "/status", None, reason="ConnectError")

    hub = RecordingHub(fail=down, clock=clock)
    session = HubSession(
        hub,
        model_id=MODEL_ID,
        trust_names=TrustNames(),
        hub_api=HubApi.H2,
        settings=SessionSettings(drain_timeout=5.0),
        flip_mode="prod",
        clock=clock,
    )
    session.hold("status")
    session.report_status(ModelStatus.ERROR)
    releasing = Background(lambda: session.release("status"))
    clock.wait_until(lambda: 5.0 in clock.requested, "the drain to wait for its 5 s deadline")
    clock.advance_to(4.9)  # the status is retried meanwhile
    assert not releasing.done() and not hub.closed
    clock.advance_to(5.0)
    report = releasing.result()
    assert report is not None and report.delivered == {} and report.undelivered.total() == 1
    assert hub.closed and session.closed and hub.calls == []


def test_the_summary_says_when_its_delivery_figures_are_provisional() -> None:
    from flip_nvflare.components.session import HubSession, SessionSettings, TrustNames
    from tests.components.fakes import RecordingHub

    session = HubSession(
        RecordingHub(),
        model_id="3fa85f64-5717-4562-b3fc-2c963f66afa6",
        trust_names=TrustNames(),
        hub_api=None,
        settings=SessionSettings(concurrency=1, drain_timeout=10.0),
        flip_mode="dev",
    )
    session.hold("test")
    session.send_metric("site-1", "LOSS", 0.5, 0)
    before = session.summary()["hub_delivery"]
    assert before["provisional"] is True and "final figures" in before["note"]
    assert set(before["pending_by_series"]) <= {"metric Trust_1/LOSS"}
    session.release("test")
    after = session.summary()["hub_delivery"]
    assert after["provisional"] is False and after["delivered"] == {"metric": 1} and after["missed"] == {}


def test_summary_sections_added_by_widgets_appear_and_cannot_shadow_core_keys() -> None:
    session = HubSession(
        RecordingHub(),
        model_id="3fa85f64-5717-4562-b3fc-2c963f66afa6",
        trust_names=TrustNames(),
        hub_api=None,
        settings=SessionSettings(concurrency=1, drain_timeout=10.0),
        flip_mode="dev",
    )
    spent = {"site-1": 0.5}
    session.add_summary_section("privacy", lambda: {"epsilon_spent": dict(spent)})
    spent["site-1"] = 1.25  # computed when the summary is made, not when the section is added
    assert session.summary()["privacy"] == {"epsilon_spent": {"site-1": 1.25}}
    for taken in ("privacy", "metrics", "hub_delivery", "outcome"):
        with pytest.raises(FlipConfigError, match=taken):
            session.add_summary_section(taken, dict)
    session.release("none")
