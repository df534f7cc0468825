"""WorkTally: whether any client result of a job's work (training or evaluation) succeeded.

A run whose controllers completed can still have produced nothing: every training result failed
(ScatterAndGather with ``ignore_result_error``) or every client's evaluation failed (a failed
evaluation never stops an evaluation job). The StatusReporter reports such a run as ``ERROR``
instead of ``RESULTS_UPLOADED``; the results (with each failure recorded) are uploaded all the same.

The tally reads each client result at BEFORE_PROCESS_SUBMISSION, whichever controller runs. A result
counts as failed if its return code is not OK (``TASK_ABORTED`` counts neither way: the run is
stopping), as succeeded otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flip_nvflare.constants import FlipTasks, PTConstants
from flip_nvflare.errors import FlipConfigError

#: The tasks whose results are a job's work, by default: training and evaluation (FLIP's name too).
DEFAULT_WORK_TASKS = (FlipTasks.TRAIN, FlipTasks.EVALUATE, PTConstants.EvalTaskName)


class WorkTally:
    """Counts the succeeded and failed client results of the work tasks, per task.

    Args:
        tasks: The task names whose results count.
    """

    def __init__(self, tasks: Sequence[str] = DEFAULT_WORK_TASKS) -> None:
        if isinstance(tasks, str) or not all(isinstance(t, str) and t for t in tasks):
            raise FlipConfigError('work_tasks must be a list of task names, e.g. ["train", "evaluate"].')
        self._tasks = frozenset(tasks)
        self._lock = threading.Lock()
        self._ok: dict[str, int] = {}
        self._failed: dict[str, int] = {}

    def reset(self) -> None:
        """Forget what was counted (a new run)."""
        with self._lock:
            self._ok, self._failed = {}, {}

    def record(self, fl_ctx: FLContext) -> None:
        """Count the client result being processed (call at BEFORE_PROCESS_SUBMISSION)."""
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME, None)
        if task not in self._tasks:
            return
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT, None)
        code = ReturnCode.EXECUTION_EXCEPTION
        if isinstance(result, Shareable):
            code = result.get_return_code(ReturnCode.OK)
        if code == ReturnCode.TASK_ABORTED:
            return
        with self._lock:
            counts = self._ok if code == ReturnCode.OK else self._failed
            counts[task] = counts.get(task, 0) + 1

    def all_failed(self) -> str | None:
        """If some work task's results all failed, say which (e.g. ``"all 4 'train' results failed"``); else None."""
        with self._lock:
            for task in sorted(self._failed):
                if not self._ok.get(task):
                    return f"all {self._failed[task]} {task!r} results failed"
        return None
