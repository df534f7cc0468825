"""FLIP_TRAINER of the sites benchmark: no real training, only what every FLIP trainer does per round.

Each ``train`` task reads the prepared cohort (``prepared_cohort``), reports two metrics for the
round (``train_loss`` and ``cohort_rows``, the number of studies ready at this site) and returns a
small weight difference with the incoming model's score for best-model selection. It imports
neither torch nor anything heavy, so a site costs what flip-nvflare and NVFlare cost.
"""

from __future__ import annotations

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flip_nvflare import prepared_cohort, send_metrics_value


class FLIP_TRAINER(Executor):
    """Answers ``train`` with a constant weight difference and two metrics per round."""

    def __init__(self, project_id: str = "", query: str = "", train_task_name: str = AppConstants.TASK_TRAIN) -> None:
        super().__init__()
        self.project_id = project_id
        self.query = query
        self._train_task_name = train_task_name

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """One round: read the prepared cohort, report the metrics, return the weight difference."""
        if task_name != self._train_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        incoming = from_shareable(shareable)
        round_ = int(shareable.get_header(AppConstants.CURRENT_ROUND) or 0)
        rows = len(prepared_cohort(fl_ctx).ready_dataframe())
        send_metrics_value("train_loss", 1.0 / (round_ + 1), fl_ctx, round=round_)
        send_metrics_value("cohort_rows", float(rows), fl_ctx, round=round_)
        diff = {name: np.full(np.shape(value), 0.01, dtype=np.float32) for name, value in incoming.data.items()}
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: max(rows, 1), MetaKey.INITIAL_METRICS: {"val_accuracy": 0.5}}
        return DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff, meta=meta).to_shareable()
