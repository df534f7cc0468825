"""ValidationJsonGenerator / EvaluationJsonGenerator: results of the clients as JSON for the upload.

The clients' validation or evaluation results become one JSON file in the run's results folder,
which the ResultsUploader zips and uploads.

The file maps each data client to the results it reported per model::

    {"site-1": {"SRV_server": {"accuracy": 0.91}, "site-2": {"accuracy": 0.88}}, "site-2": {...}}

the layout of NVFlare's own ``cross_val_results.json``. A failed result is recorded as
``{"error": "<return code>"}``. The file is rewritten after every result, so it is complete
whenever the run ends, whatever the order of the components' END_RUN handlers.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nvflare.apis.dxo import DXO, DataKind, from_shareable, get_leaf_dxos
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.widget import peer_name
from flip_nvflare.constants import FlipCookies, FlipTasks
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.executors.sanitize import hub_return_code, sanitize_hub_text
from flip_nvflare.workspace import job_run_dir, write_atomically

#: Folder of the job's run folder where FLIP gathers what is uploaded at the end of the run.
DEFAULT_RESULTS_DIR = "flip_results"
VALIDATION_JSON = "cross_val_results.json"
EVALUATION_JSON = "evaluation_results.json"


def to_jsonable(value: Any) -> Any:
    """``value`` with numpy / torch scalars and arrays turned into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    for method in ("tolist", "item"):
        convert = getattr(value, method, None)
        if callable(convert):
            try:
                return to_jsonable(convert())
            except (TypeError, ValueError, RuntimeError):
                continue
    return str(value)


def write_json_atomically(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file, so readers never see half a file."""
    write_atomically(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False, default=str))


def check_plain_name(name: object, what: str) -> str:
    """Return ``name`` if it is a plain file or folder name (no path), else raise naming ``what``."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise FlipConfigError(f"{what} must be a plain file or folder name (no path), got {name!r}.")
    return name


def results_folder(fl_ctx: FLContext, results_dir: str) -> Path:
    """The run's results folder: ``<run folder>/<results_dir>``."""
    return job_run_dir(fl_ctx) / results_dir


class ResultsJsonGenerator(FLComponent):
    """Collects per-client, per-model results into ``<run folder>/<results_dir>/<json_file_name>``.

    Args:
        results_dir: Results folder name inside the run folder (shared with the ResultsUploader).
        json_file_name: Name of the JSON file.
    """

    def __init__(self, results_dir: str = DEFAULT_RESULTS_DIR, json_file_name: str = VALIDATION_JSON) -> None:
        super().__init__()
        self._results_dir = check_plain_name(results_dir, "results_dir")
        self._file_name = check_plain_name(json_file_name, "json_file_name")
        self._results: dict[str, dict[str, Any]] = {}
        self._path: Path | None = None
        self._lock = threading.Lock()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Record results as they arrive; write the file after each one."""
        try:
            if event_type == EventType.START_RUN:
                with self._lock:
                    self._results = {}
                    self._path = results_folder(fl_ctx, self._results_dir) / self._file_name
            elif event_type == AppEventType.VALIDATION_RESULT_RECEIVED:
                owner = fl_ctx.get_prop(AppConstants.MODEL_OWNER, None)
                client = fl_ctx.get_prop(AppConstants.DATA_CLIENT, None)
                result = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT, None)
                self.record(fl_ctx, str(client or "unknown"), str(owner or "unknown"), result)
            else:
                self.on_other_event(event_type, fl_ctx)
        except Exception as exc:  # never break the run over a results file
            self.log_exception(fl_ctx, f"{self.name} failed on {event_type}: {type(exc).__name__}: {exc}")

    def on_other_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Hook for subclasses that read results from other events."""

    def record(self, fl_ctx: FLContext, client: str, model: str, result: object) -> None:
        """Store one client's result for one model and rewrite the file."""
        entries = self._entries(fl_ctx, client, model, result)
        with self._lock:
            for data_client, data in entries:
                self._results.setdefault(data_client, {})[model] = data
            snapshot = to_jsonable(self._results)
            path = self._path
        if path is not None:
            write_json_atomically(path, snapshot)

    def _entries(self, fl_ctx: FLContext, client: str, model: str, result: object) -> list[tuple[str, Any]]:
        if not isinstance(result, Shareable):
            return [(client, {"error": "no result"})]
        return_code = result.get_return_code(ReturnCode.OK)
        if return_code != ReturnCode.OK:
            return [(client, {"error": hub_return_code(return_code)})]
        try:
            dxo = from_shareable(result)
        except (TypeError, ValueError, KeyError):
            self.log_warning(fl_ctx, f"Result of {client} for model {model} is not a DXO; not recorded.", False)
            return [(client, {"error": "not a DXO"})]
        if dxo.data_kind == DataKind.COLLECTION:
            leaves, _errors = get_leaf_dxos(dxo, client)
            return [
                (sanitize_hub_text(name), _clean_names(leaf.data))
                for name, leaf in leaves.items()
                if isinstance(leaf, DXO)
            ]
        if dxo.data_kind == DataKind.METRICS:
            return [(client, _clean_names(dxo.data))]
        kind = getattr(dxo.data_kind, "value", dxo.data_kind)
        self.log_warning(fl_ctx, f"Result of {client} for model {model} is {kind}, not METRICS.", False)
        return [(client, {"error": f"unexpected data kind {sanitize_hub_text(kind)}"})]


class ValidationJsonGenerator(ResultsJsonGenerator):
    """Cross-site validation results (CrossSiteModelEval's VALIDATION_RESULT_RECEIVED) as JSON.

    Args:
        results_dir: Results folder name inside the run folder (shared with the ResultsUploader).
        json_file_name: Name of the JSON file (default ``cross_val_results.json``).
    """

    def __init__(self, results_dir: str = DEFAULT_RESULTS_DIR, json_file_name: str = VALIDATION_JSON) -> None:
        super().__init__(results_dir, json_file_name)


class EvaluationJsonGenerator(ResultsJsonGenerator):
    """Evaluation results as JSON, from evaluation workflows and from evaluation task results.

    Reads NVFlare's evaluation workflows (GlobalModelEval, CrossSiteModelEval) and the results of
    evaluation tasks sent by any other controller.

    Results of :class:`~flip_nvflare.controllers.EvaluateModels` arrive per model through
    VALIDATION_RESULT_RECEIVED; its task results themselves are skipped. Any other direct
    evaluation task result that is a METRICS DXO is recorded under the model named by
    its ``model_owner`` cookie, else ``model_name``; a COLLECTION DXO records each entry under its
    own name (one per model evaluated).

    Args:
        results_dir: Results folder name inside the run folder (shared with the ResultsUploader).
        json_file_name: Name of the JSON file (default ``evaluation_results.json``).
        task_names: Tasks whose results are evaluation results (default ``["evaluate"]``).
        model_name: Model name for results that do not say which model they evaluated.
    """

    def __init__(
        self,
        results_dir: str = DEFAULT_RESULTS_DIR,
        json_file_name: str = EVALUATION_JSON,
        task_names: Sequence[str] | None = None,
        model_name: str = "global_model",
    ) -> None:
        super().__init__(results_dir, json_file_name)
        names = [FlipTasks.EVALUATE] if task_names is None else list(task_names)
        if not all(isinstance(n, str) and n for n in names):
            raise FlipConfigError("EvaluationJsonGenerator task_names must be a list of task names.")
        if not isinstance(model_name, str) or not model_name:
            raise FlipConfigError("EvaluationJsonGenerator model_name must be a non-empty string.")
        self._task_names = frozenset(names)
        self._model_name = model_name

    def on_other_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Record results of evaluation tasks."""
        if event_type != EventType.BEFORE_PROCESS_SUBMISSION:
            return
        if fl_ctx.get_prop(FLContextKey.TASK_NAME, None) not in self._task_names:
            return
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT, None)
        client = peer_name(fl_ctx)
        if client is None:
            return
        if isinstance(result, Shareable) and result.get_cookie(FlipCookies.EVALUATED_MODELS, None) is not None:
            return  # EvaluateModels reports each model's result through VALIDATION_RESULT_RECEIVED
        if isinstance(result, Shareable) and result.get_return_code(ReturnCode.OK) == ReturnCode.OK:
            try:
                dxo = from_shareable(result)
            except (TypeError, ValueError, KeyError):
                dxo = None
            if dxo is not None and dxo.data_kind == DataKind.COLLECTION and isinstance(dxo.data, dict):
                for model, sub in dxo.data.items():
                    self.record(fl_ctx, client, str(model), sub.to_shareable() if isinstance(sub, DXO) else None)
                return
        owner = result.get_cookie(AppConstants.MODEL_OWNER, None) if isinstance(result, Shareable) else None
        self.record(fl_ctx, client, str(owner or self._model_name), result)


def _clean_names(data: object) -> object:
    """A client's metrics with every name passed through the server-side sanitizing rules (values kept)."""
    if isinstance(data, dict):
        return {sanitize_hub_text(str(name)): _clean_names(value) for name, value in data.items()}
    return data
