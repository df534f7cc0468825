"""A small in-memory stand-in for the hub, for the pure delivery and session logic tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flip_nvflare.constants import ModelStatus
from flip_nvflare.core.base import FLIPBase
from tests.support.clock import FakeClock


class RecordingHub(FLIPBase):
    """Records hub calls; ``fail`` may raise to simulate the hub's answers.

    Time is ``clock``'s (a fresh FakeClock if None): each call takes ``latency`` seconds of it, so
    with a latency a call ends only when the test moves the clock on.
    """

    def __init__(
        self,
        latency: float = 0.0,
        fail: Callable[[str, tuple[Any, ...]], None] | None = None,
        clock: FakeClock | None = None,
    ) -> None:
        self.latency = latency
        self.fail = fail
        self.clock = clock if clock is not None else FakeClock()
        self.calls: list[tuple[str, tuple[Any, ...], float, float]] = []  # (method, args, start, end)
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self.closed = False

    def _call(self, method: str, *args: Any) -> None:
        start = self.clock.monotonic()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.fail is not None:
                self.fail(method, args)
            if self.latency:
                self.clock.sleep(self.latency)
        finally:
            with self._lock:
                self.in_flight -= 1
        with self._lock:
            self.calls.append((method, args, start, self.clock.monotonic()))

    def update_status(self, model_id: str, new_model_status: ModelStatus | str) -> None:
        self._call("status", str(ModelStatus(new_model_status).value))

    def send_metrics(self, client_name: str, model_id: str, label: str, value: float, round: int, **kw: Any) -> bool:
        self._call("metric", label, value, client_name, round, kw)
        return True

    def send_handled_exception(self, formatted_exception: str, client_name: str, model_id: str, **kw: Any) -> None:
        self._call("log", formatted_exception, client_name, kw)

    def send_progress_event(
        self, model_id: str, event_type: str, global_round: int | None, details: Any, client_name: str | None = None
    ) -> None:
        self._call("progress", event_type, global_round, details, client_name)

    def get_dataframe(self, project_id: str, query: str) -> Any:
        raise NotImplementedError

    def get_by_accession_number(self, project_id: str, accession_id: str, resource_type: Any = None) -> Path:
        raise NotImplementedError

    def add_resource(self, *args: Any, **kwargs: Any) -> list[str]:
        raise NotImplementedError

    def upload_results_to_s3(self, results_folder: str | Path, model_id: str) -> str:
        raise NotImplementedError

    def cleanup(self, path: str | Path) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True
