"""FLIP_VALIDATOR: measures a model sent by the server on this site's validation split."""

from __future__ import annotations

import numpy as np
import torch
from data_utils import Cohort, evaluate, load_cohort, load_config, split_cohort
from models import get_model
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants


class FLIP_VALIDATOR(Executor):
    """Answers ``validate`` tasks with the model's accuracy (and more) on the site's validation split.

    The split is the trainer's (same accession ids, same seed), so the numbers are comparable
    with the ``val_accuracy`` the trainer reports during training.

    Args:
        project_id: The project's encrypted id (the job config's ``project_id``).
        query: The cohort query (the job config's ``query``).
        validate_task_name: Task name for validation.
    """

    def __init__(
        self, project_id: str = "", query: str = "", validate_task_name: str = AppConstants.TASK_VALIDATION
    ) -> None:
        super().__init__()
        self.project_id = project_id
        self.query = query
        self._validate_task_name = validate_task_name
        self.config = load_config()
        self.model = get_model()
        self._val_set: Cohort | None = None

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Validate the model in the task on this site's validation split."""
        if task_name != self._validate_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        self.model.load_state_dict({name: torch.as_tensor(np.asarray(v)) for name, v in dxo.data.items()})
        if self._val_set is None:
            cohort, accessions = load_cohort(self.config["LABEL_COLUMN"])
            _, self._val_set = split_cohort(cohort, accessions, self.config["VAL_SPLIT"], self.config["SPLIT_SEED"])
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        metrics = evaluate(self.model, self._val_set)
        return DXO(data_kind=DataKind.METRICS, data={f"val_{k}": v for k, v in metrics.items()}).to_shareable()
