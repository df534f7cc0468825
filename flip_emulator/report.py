"""Human-readable views of what the emulator received (``flip-nvflare emulate --show``)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime

from flip_emulator.store import ModelRecords


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%H:%M:%S.%f")[:-3]


def _number(value: float) -> str:
    return f"{value:.6g}"


def format_records(records: ModelRecords) -> str:
    """Describe the status timeline, metrics per trust and round, and logs of one model."""
    lines: list[str] = []
    model = records.model
    if model is None:
        lines.append(f"Model {records.model_id}: not registered with this emulator.")
    else:
        trusts = ", ".join(model.trusts) or "no trusts linked"
        lines.append(f"Model {model.model_id}  status {model.status}  ({trusts}; registered by {model.registered_by})")
    lines.append("")
    lines.append(f"Status timeline ({len(records.statuses)})")
    if not records.statuses:
        lines.append("  (none received)")
    for status in records.statuses:
        note = "" if status.applied else "   ignored: the model was STOPPED"
        lines.append(f"  #{status.seq:<5} {_clock(status.received_at)}  {status.status:<22} [{status.hub_api}]{note}")
    lines.append("")
    lines.append(f"Metrics ({len(records.metrics)})")
    if not records.metrics:
        lines.append("  (none received)")
    series: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for metric in records.metrics:
        trust = metric.trust or metric.fl_client_name or "?"
        label = metric.label if not metric.x_label else f"{metric.label} (x: {metric.x_label})"
        point = f"r{metric.global_round}={_number(metric.result)}"
        if metric.x_value is not None:
            point = f"r{metric.global_round}@x={_number(metric.x_value)}:{_number(metric.result)}"
        series[trust][label].append(point)
    for trust in sorted(series):
        lines.append(f"  {trust}")
        for label, points in series[trust].items():
            lines.append(f"    {label}: {'  '.join(points)}")
    lines.append("")
    lines.append(f"Logs ({len(records.logs)})")
    if not records.logs:
        lines.append("  (none received)")
    for log in records.logs:
        who = log.trust or log.fl_client_name or "hub"
        head = f"  #{log.seq:<5} {_clock(log.received_at)}  {who}"
        if log.event_type:
            round_text = f" round {log.global_round}" if log.global_round is not None else ""
            lines.append(f"{head}  {log.event_type}{round_text} {json.dumps(log.details or {}, sort_keys=True)}")
        else:
            state = "" if log.success else "  [failure]"
            text = (log.log or "").rstrip("\n").splitlines() or [""]
            lines.append(f"{head}{state}  {text[0]}")
            lines.extend(f"        {line}" for line in text[1:])
    return "\n".join(lines)
