"""Hub delivery of metrics: time on NVFlare's event thread, and end-to-end throughput.

The emulated hub (flip_emulator, over loopback) answers every metrics request after an
added 50 ms, like a remote flip-api. Both sides send the same metrics (2 sites x 6 labels, round
after round; each series' values in order):

* baseline: what a naive component does on the event thread, one synchronous POST per metric,
  a new connection each time (no pooling);
* flip-nvflare: the real MetricsForwarder handling the federated metric event, which queues the
  metric in the job's HubSession; the background delivery posts it (pooled, concurrent).

Targets: at least 50x less time on the event thread per metric, and at least 5x the baseline's
end-to-end throughput (all metrics recorded by the hub). Both sides' metrics are checked on the hub.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

LATENCY = 0.05
METRICS = 120
EVENT_THREAD_TARGET = 50.0
THROUGHPUT_TARGET = 5.0


def _metric_event(client: str, label: str, value: float, round_: int) -> Any:
    """The FLContext of a ``fed.flip.send_metric`` event as NVFlare's fed-event runner fires it."""
    from nvflare.apis.fl_constant import EventScope, FedEventHeader, FLContextKey, ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import ReservedHeaderKey, Shareable

    from flip_nvflare.metrics import METRIC_LABEL, METRIC_ROUND, METRIC_VALUE, METRIC_X_LABEL, METRIC_X_VALUE

    data = Shareable()
    data.update({METRIC_LABEL: label, METRIC_VALUE: value, METRIC_ROUND: round_})
    data.update({METRIC_X_VALUE: None, METRIC_X_LABEL: None})
    data.set_header(FedEventHeader.DIRECTION, "in")
    data.set_header(FedEventHeader.ORIGIN, client)
    data.set_header(ReservedHeaderKey.PEER_PROPS, {ReservedKey.IDENTITY_NAME: client})
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.EVENT_DATA, data, private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.EVENT_SCOPE, EventScope.FEDERATION, private=True, sticky=False)
    return fl_ctx


def _series(count: int) -> list[tuple[int, str, str]]:
    """``count`` metrics as a run sends them: 2 sites x 6 labels (12 series), round after round.

    Values of one series are delivered one at a time, in order (series run concurrently), so the
    mix of series is what a real run looks like: each site reports a few labels every round.
    """
    sites, labels = ("site-1", "site-2"), ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "dice")
    combos = [(site, label) for site in sites for label in labels]
    return [(n // len(combos), *combos[n % len(combos)]) for n in range(count)]


def _baseline(hub: Any, model_id: str) -> tuple[list[float], float]:
    """One synchronous POST per metric, new connection each time; returns per-call seconds and total."""
    import httpx

    url = f"{hub.hub_url}/model/{model_id}/metrics"
    headers = {"X-Internal-Service-Key": hub.hub_key}
    per_call = []
    t0 = time.perf_counter()
    for n, site, label in _series(METRICS):
        trust = site.replace("site-", "Trust_")
        body = {"trust": trust, "fl_client_name": site, "global_round": n, "label": f"baseline_{label}", "result": n}
        start = time.perf_counter()
        httpx.post(url, json=body, headers=headers, timeout=30).raise_for_status()
        per_call.append(time.perf_counter() - start)
    return per_call, time.perf_counter() - t0


def _flip(hub: Any, model_id: str) -> tuple[list[float], float]:
    """The MetricsForwarder on the event thread; returns per-event seconds and time until all delivered."""
    from flip_nvflare.components.metrics import MetricsForwarder
    from flip_nvflare.components.session import HubSession, SessionSettings, TrustNames
    from flip_nvflare.constants import FlipEvents
    from flip_nvflare.core.prod import FLIPStandardProd

    backend = FLIPStandardProd(env=hub.env())  # the session delivers over a single-attempt view of it
    session = HubSession(
        backend,
        model_id=model_id,
        trust_names=TrustNames(),
        hub_api=backend.hub_settings().hub_api,
        settings=SessionSettings(),
        flip_mode="prod",
    )
    forwarder = MetricsForwarder()
    forwarder._session = session  # what START_RUN does through the engine in a job
    session.hold("bench")
    events = [_metric_event(site, f"flip_{label}", float(n), n) for n, site, label in _series(METRICS)]
    per_event = []
    t0 = time.perf_counter()
    for fl_ctx in events:
        start = time.perf_counter()
        forwarder.handle_event(FlipEvents.FED_SEND_METRIC, fl_ctx)
        per_event.append(time.perf_counter() - start)
    if not session.delivery.wait_idle(120):
        raise RuntimeError("the delivery did not finish within 120 s")
    total = time.perf_counter() - t0
    report = session.release("bench")  # END_RUN: drains (nothing left) and closes the backend
    if report is None or report.delivered.get("metric") != METRICS:
        raise RuntimeError(f"delivery report: {report}")
    return per_event, total


def main() -> bool:
    """Run both sides against the emulated hub and print the report; True if both targets are met."""
    import logging

    from flip_emulator.handle import start_emulator

    logging.disable(logging.INFO)  # per-request logs would be timed too
    with tempfile.TemporaryDirectory() as tmp, start_emulator(Path(tmp), hub_api="h2", s3=False) as hub:
        model_id = hub.register_model(str(uuid.uuid4()), trusts=("Trust_1", "Trust_2")).model_id
        hub.set_fault("hub.metrics", latency=LATENCY)
        _flip(hub, hub.register_model(trusts=("Trust_1", "Trust_2")).model_id)  # warm-up: imports, first connections
        base_calls, base_total = _baseline(hub, model_id)
        flip_events, flip_total = _flip(hub, model_id)
        received = [m.label.split("_")[0] for m in hub.records(model_id).metrics]
    if received.count("baseline") != METRICS or received.count("flip") != METRICS:
        print(f"hub recorded {received.count('baseline')} baseline and {received.count('flip')} flip metrics")
        return False

    base_event = statistics.mean(base_calls)
    flip_event = statistics.mean(flip_events)
    event_ratio = base_event / flip_event
    throughput_base, throughput_flip = METRICS / base_total, METRICS / flip_total
    throughput_ratio = throughput_flip / throughput_base
    print(f"{METRICS} metrics, hub latency {LATENCY * 1000:.0f} ms (emulated flip-api over loopback)")
    print(f"  event thread per metric: baseline {base_event * 1000:8.2f} ms   flip-nvflare {flip_event * 1e6:8.1f} us")
    print(
        f"    median: baseline {statistics.median(base_calls) * 1000:.2f} ms, "
        f"flip-nvflare {statistics.median(flip_events) * 1e6:.1f} us; "
        f"p95: {_p95(base_calls) * 1000:.2f} ms, {_p95(flip_events) * 1e6:.1f} us"
    )
    print(f"  end-to-end throughput:   baseline {throughput_base:8.1f} /s    flip-nvflare {throughput_flip:8.1f} /s")
    print(f"  event-thread time: {event_ratio:,.0f}x less (target >= {EVENT_THREAD_TARGET:.0f}x)")
    print(f"  throughput: {throughput_ratio:.1f}x the baseline (target >= {THROUGHPUT_TARGET:.0f}x)")
    return event_ratio >= EVENT_THREAD_TARGET and throughput_ratio >= THROUGHPUT_TARGET


def _p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
