"""FLIP_VALIDATOR of the sites benchmark: a fixed score, after reading the prepared cohort."""

from __future__ import annotations

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flip_nvflare import prepared_cohort


class FLIP_VALIDATOR(Executor):
    """Answers ``validate`` with ``val_accuracy`` 0.5."""

    def __init__(
        self, project_id: str = "", query: str = "", validate_task_name: str = AppConstants.TASK_VALIDATION
    ) -> None:
        super().__init__()
        self._validate_task_name = validate_task_name

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Score the model in the task (a fixed number: the benchmark measures the plumbing)."""
        if task_name != self._validate_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        prepared_cohort(fl_ctx)
        return DXO(data_kind=DataKind.METRICS, data={"val_accuracy": 0.5}).to_shareable()
