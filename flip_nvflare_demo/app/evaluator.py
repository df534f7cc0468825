"""FLIP_EVALUATOR: measures each model the server sends on all of this site's cohort (no training)."""

from __future__ import annotations

import numpy as np
import torch
from data_utils import Cohort, evaluate, load_cohort, load_config
from models import get_model
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal


class FLIP_EVALUATOR(Executor):
    """Answers evaluation tasks with the model's metrics on the whole cohort of this site.

    Args:
        project_id: The project's encrypted id (the job config's ``project_id``).
        query: The cohort query (the job config's ``query``).
    """

    def __init__(self, project_id: str = "", query: str = "") -> None:
        super().__init__()
        self.project_id = project_id
        self.query = query
        self.config = load_config()
        self.model = get_model()
        self._cohort: Cohort | None = None

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Evaluate the model in the task (any task carrying model weights)."""
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        self.model.load_state_dict({name: torch.as_tensor(np.asarray(v)) for name, v in dxo.data.items()})
        if self._cohort is None:
            self._cohort, _ = load_cohort(self.config["LABEL_COLUMN"])
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        metrics = evaluate(self.model, self._cohort)
        keep = self.config["evaluation_output"]["metrics"]
        return DXO(data_kind=DataKind.METRICS, data={k: metrics[k] for k in keep}).to_shareable()
