"""ResourceProbe: the server process's CPU time and resident memory at the points of a run the benchmark needs.

A server component (added to the job's ``config_fed_server.json`` by the benchmark, never by the
templates). It writes one JSON line per observation to ``path``: ``start_run``,
``training_started``, ``round_done`` (with the round) and ``end_run``, each with ``t`` (monotonic
seconds), ``cpu`` (user + system seconds of this process, all threads), ``rss_kb`` and
``peak_rss_kb`` (``VmRSS`` / ``VmHWM`` of ``/proc/self/status``; ``ru_maxrss`` elsewhere).
"""

from __future__ import annotations

import json
import resource
import threading
import time
from pathlib import Path
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

_EVENTS = {
    EventType.START_RUN: "start_run",
    AppEventType.TRAINING_STARTED: "training_started",
    AppEventType.ROUND_DONE: "round_done",
    EventType.END_RUN: "end_run",
}


def _memory_kb() -> tuple[int, int]:
    """(current, peak) resident memory of this process in kB."""
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    peak = values.get("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return values.get("VmRSS", peak), peak


def observation(kind: str, **extra: Any) -> dict[str, Any]:
    """This process's time, CPU and memory now."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss, peak = _memory_kb()
    return {
        "kind": kind,
        "t": time.monotonic(),
        "cpu": usage.ru_utime + usage.ru_stime,
        "rss_kb": rss,
        "peak_rss_kb": peak,
        **extra,
    }


class ResourceProbe(FLComponent):
    """Records the server process's resources at START_RUN, TRAINING_STARTED, each ROUND_DONE and END_RUN.

    Args:
        path: The JSON-lines file to append to.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path
        self._lock = threading.Lock()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Append an observation for the events the benchmark uses."""
        kind = _EVENTS.get(event_type)
        if kind is None:
            return
        extra = {"round": fl_ctx.get_prop(AppConstants.CURRENT_ROUND)} if kind == "round_done" else {}
        line = json.dumps(observation(kind, **extra))
        with self._lock, open(self._path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
