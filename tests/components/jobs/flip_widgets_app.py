"""Test-only job code for the server-widget e2e runs (copied into each test job's ``custom/`` folder).

Client side: ``WidgetTestExecutor`` answers the FLIP preparation, validation and post tasks;
``TestTrainer`` is the FLIP app's trainer (``FLIP_TRAINER`` in the job's ``trainer.py``, run by
flip_nvflare's own ``TrainerRunner``): it trains a NumPy model, sends metrics both ways (FLIP's
``send_metrics_value`` and NVFlare's ``AnalyticsSender``) and can raise on purpose, which the
runner turns into a sanitized ``exception`` reply header. Every valid metric it sends is written to
a per-site ledger file, so the tests can check that each one reached the hub exactly once.

Server side: ``AbortAt`` aborts the run the way the admin ``abort_job`` command does,
``HubOutage`` takes the emulated hub down for a while, ``SecureMode`` makes the run look like a
provisioned (secure) deployment.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from nvflare.apis.analytix import AnalyticsDataType
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.metrics import send_metrics_value

FAILURE_MESSAGE = "training loss diverged at epoch 1"


def _ledger(ledger_dir: str, site: str, **record: Any) -> None:
    Path(ledger_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(ledger_dir) / f"{site}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"site": site, **record}) + "\n")


class WidgetTestExecutor(Executor):
    """Answers the preparation, validation/evaluation and post tasks."""

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        site = fl_ctx.get_identity_name()
        if task_name in ("init_training", "init_task", "post_validation", "post_task"):
            return make_reply(ReturnCode.OK)
        if task_name in ("validate", "evaluate"):
            weights = from_shareable(shareable).data
            mean = float(np.mean(next(iter(weights.values()))))
            return DXO(DataKind.METRICS, data={"accuracy": mean / 10.0, "site_number": int(site[-1])}).to_shareable()
        return make_reply(ReturnCode.TASK_UNKNOWN)


class WidgetTrainer(Executor):
    """The FLIP trainer of the test app."""

    def __init__(
        self,
        ledger_dir: str,
        epochs: int = 2,
        epoch_sleep: float = 0.0,
        fail_round: int = -1,
        fail_site: str = "",
        nan_round: int = 0,
    ) -> None:
        super().__init__()
        self._ledger_dir = ledger_dir
        self._epochs = epochs
        self._epoch_sleep = epoch_sleep
        self._fail_round = fail_round
        self._fail_site = fail_site
        self._nan_round = nan_round

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name != "train":
            return make_reply(ReturnCode.TASK_UNKNOWN)
        site = fl_ctx.get_identity_name()
        analytics = fl_ctx.get_engine().get_component("analytics_sender")
        rnd = shareable.get_header(AppConstants.CURRENT_ROUND)
        if rnd == self._fail_round and site == self._fail_site:
            raise ValueError(FAILURE_MESSAGE)
        dxo = from_shareable(shareable)
        for epoch in range(self._epochs):
            step = rnd * self._epochs + epoch
            loss = 1.0 / (1.0 + step)
            send_metrics_value("train_loss", loss, fl_ctx, x_value=step, x_label="epoch")
            _ledger(self._ledger_dir, site, label="train_loss", value=loss, round=rnd, x_value=step, x_label="epoch")
            score = 0.5 + step / 100
            analytics.add(tag="val_score@step", value=score, data_type=AnalyticsDataType.SCALAR, global_step=step)
            _ledger(self._ledger_dir, site, label="val_score", value=score, round=rnd, x_value=step, x_label="step")
            if abort_signal.triggered:
                return make_reply(ReturnCode.TASK_ABORTED)
            time.sleep(self._epoch_sleep)
        loss = 1.0 / (2.0 + rnd)
        send_metrics_value("LOSS_FUNCTION", loss, fl_ctx, round=rnd)
        _ledger(self._ledger_dir, site, label="LOSS_FUNCTION", value=loss, round=rnd, x_value=None, x_label=None)
        if rnd == self._nan_round:
            send_metrics_value("LOSS_FUNCTION", math.nan, fl_ctx, round=rnd)
        accuracy = 0.6 + rnd / 10
        analytics.add(tag="accuracy", value=accuracy, data_type=AnalyticsDataType.SCALAR, global_step=rnd)
        _ledger(self._ledger_dir, site, label="accuracy", value=accuracy, round=rnd, x_value=None, x_label=None)
        scores = {"dice": 0.7 + rnd / 100, "iou": 0.5 + rnd / 100}
        analytics.add(tag="scores", value=scores, data_type=AnalyticsDataType.SCALARS, global_step=rnd)
        for key, value in scores.items():
            _ledger(self._ledger_dir, site, label=f"scores/{key}", value=value, round=rnd, x_value=None, x_label=None)
        weights = {k: v + 1.0 for k, v in dxo.data.items()}
        return DXO(DataKind.WEIGHTS, data=weights, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1}).to_shareable()


class AbortAt(FLComponent):
    """Aborts the run shortly after round ``round`` starts, as the admin abort_job command does."""

    def __init__(self, round: int = 1) -> None:
        super().__init__()
        self._round = round

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == AppEventType.ROUND_STARTED and fl_ctx.get_prop(AppConstants.CURRENT_ROUND) == self._round:
            runner = fl_ctx.get_prop(FLContextKey.RUNNER)
            engine = fl_ctx.get_engine()

            def abort() -> None:
                time.sleep(0.5)
                with engine.new_context() as ctx:
                    runner.abort(ctx)

            threading.Thread(target=abort, daemon=True).start()


class HubOutage(FLComponent):
    """Takes the emulated hub down for ``seconds`` when round ``round`` starts."""

    def __init__(self, admin_url: str, round: int = 1, seconds: float = 30.0, mode: str = "refuse") -> None:
        super().__init__()
        self._admin_url = admin_url
        self._round = round
        self._seconds = seconds
        self._mode = mode

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == AppEventType.ROUND_STARTED and fl_ctx.get_prop(AppConstants.CURRENT_ROUND) == self._round:
            body = {"service": "hub", "seconds": self._seconds, "mode": self._mode}
            httpx.post(f"{self._admin_url}/admin/down", json=body, timeout=10).raise_for_status()
            self.log_info(fl_ctx, f"hub taken down for {self._seconds} s")


class SecureMode(FLComponent):
    """Makes the run look like a provisioned deployment (list it before the FlipBackend)."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            fl_ctx.set_prop(FLContextKey.SECURE_MODE, True, private=True, sticky=True)
