"""EvaluationReporter: an evaluation job's final metrics to the hub, and a failures file that is always written.

For every evaluation result the evaluation workflow receives (EvaluateModels, NVFlare's
GlobalModelEval and CrossSiteModelEval fire VALIDATION_RESULT_RECEIVED, once per client and model),
the reporter:

- sends each finite scalar metric to the hub as ``<model>/<metric>`` for that client's trust (a
  nested group, as FLIP's evaluators return them, as ``<model>/<group>/<metric>``), at round 0
  (through the job's hub session: ordered, retried, never blocking the run);
- records a failed result (any return code but OK, or a result that is not a metrics DXO) in
  ``<run folder>/<results_dir>/evaluation_failures.json``.

The failures file is written at START_RUN (an empty list) and rewritten after each change, so it
is in the results zip however the run ends. When the run ends it also lists every (site, model)
pair that never answered. Each entry: ``{"site", "model", "reason"}``; the reason is a return code
or a short description, never a client's error text (that reaches the hub's logs through the
ExceptionForwarder, sanitized at the trust).

What the client chose is checked before it is passed on: a return code or data kind is named only
if it is one of NVFlare's, and metric names go through
:func:`~flip_nvflare.executors.sanitize.sanitize_hub_text` (identifier shapes, data paths).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model_locator import ModelLocator
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.components.metrics import queue_metric
from flip_nvflare.components.result_json import (
    DEFAULT_RESULTS_DIR,
    check_plain_name,
    results_folder,
    write_json_atomically,
)
from flip_nvflare.components.session import HubSession
from flip_nvflare.components.widget import HubWidget
from flip_nvflare.constants import DEFAULT_FLIP_ID
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.executors.sanitize import hub_return_code, sanitize_hub_text

FAILURES_JSON = "evaluation_failures.json"
#: Prefix CrossSiteModelEval / GlobalModelEval put before server model names.
_SERVER_PREFIX = "SRV_"
#: NVFlare's data kinds: a result's kind is named in a failure only if it is one of them.
_DATA_KINDS = frozenset(str(kind.value) for kind in DataKind)
#: Cap on a sanitized metric name.
_MAX_NAME = 200
#: Levels of nested metric groups followed (deeper ones are not sent).
_MAX_DEPTH = 3


class EvaluationReporter(HubWidget):
    """Reports an evaluation job's results to the hub and keeps the list of failed evaluations.

    Args:
        flip_id: Id of the job's FlipBackend component.
        results_dir: Results folder in the run folder (shared with the ResultsUploader).
        failures_file: Name of the failures file.
        model_locator_id: Id of the model locator, to list (site, model) pairs that never answered.
        metric_round: The round metrics are reported at.
    """

    def __init__(
        self,
        flip_id: str = DEFAULT_FLIP_ID,
        results_dir: str = DEFAULT_RESULTS_DIR,
        failures_file: str = FAILURES_JSON,
        model_locator_id: str = "model_locator",
        metric_round: int = 0,
    ) -> None:
        super().__init__(flip_id)
        self._results_dir = check_plain_name(results_dir, "results_dir")
        self._failures_file = check_plain_name(failures_file, "failures_file")
        if isinstance(metric_round, bool) or not isinstance(metric_round, int) or metric_round < 0:
            raise FlipConfigError(f"EvaluationReporter: metric_round must be an integer >= 0, got {metric_round!r}.")
        self._model_locator_id = model_locator_id
        self._round = metric_round
        self._lock = threading.Lock()
        self._failures: list[dict[str, str]] = []
        self._answered: set[tuple[str, str]] = set()
        self._path: Path | None = None

    @property
    def failures(self) -> list[dict[str, str]]:
        """The failures recorded in this run."""
        with self._lock:
            return list(self._failures)

    def on_event(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        """Reset and write the empty file at START_RUN; handle results; add silent pairs at the end."""
        if event_type == EventType.START_RUN:
            with self._lock:
                self._failures, self._answered = [], set()
                self._path = results_folder(fl_ctx, self._results_dir) / self._failures_file
            self._write()
        elif event_type == AppEventType.VALIDATION_RESULT_RECEIVED:
            site = str(fl_ctx.get_prop(AppConstants.DATA_CLIENT, "") or "unknown")
            model = model_name(str(fl_ctx.get_prop(AppConstants.MODEL_OWNER, "") or "unknown"))
            self._result(site, model, fl_ctx.get_prop(AppConstants.VALIDATION_RESULT, None), session)
        elif event_type == EventType.ABOUT_TO_END_RUN:
            self._add_silent_pairs(fl_ctx)

    def _result(self, site: str, model: str, result: object, session: HubSession) -> None:
        with self._lock:
            self._answered.add((site, model))
        metrics, reason = _metrics(result)
        if metrics is None:
            self._fail(site, model, reason)
            return
        for name, value in metrics.items():
            queue_metric(session, site, f"{model}/{sanitize_hub_text(name, _MAX_NAME)}", value, self._round)

    def _add_silent_pairs(self, fl_ctx: FLContext) -> None:
        locator = fl_ctx.get_engine().get_component(self._model_locator_id)
        if not isinstance(locator, ModelLocator):
            return
        try:
            models = [model_name(name) for name in locator.get_model_names(fl_ctx)]
        except FlipConfigError:
            return  # the locator already stopped the run and said why
        sites = [client.name for client in fl_ctx.get_engine().get_clients()]
        with self._lock:
            missing = [(s, m) for s in sites for m in models if (s, m) not in self._answered]
        for site, model in missing:
            self._fail(site, model, "no result: the site did not answer before the evaluation ended")

    def _fail(self, site: str, model: str, reason: str) -> None:
        with self._lock:
            self._failures.append({"site": site, "model": model, "reason": reason})
        self._write()

    def _write(self) -> None:
        with self._lock:
            path, failures = self._path, sorted(self._failures, key=lambda f: (f["site"], f["model"]))
        if path is not None:
            write_json_atomically(path, failures)


def model_name(owner: str) -> str:
    """The model's name as the app's config names it (without the workflow's ``SRV_`` prefix)."""
    return owner.removeprefix(_SERVER_PREFIX)


def _metrics(result: object) -> tuple[dict[str, float] | None, str]:
    """The finite scalar metrics of a result, or None and why it counts as failed."""
    if not isinstance(result, Shareable):
        return None, "no result"
    return_code = result.get_return_code(ReturnCode.OK)
    if return_code != ReturnCode.OK:
        return None, hub_return_code(return_code)  # a free string the client set: only NVFlare's codes are named
    try:
        dxo = from_shareable(result)
    except (TypeError, ValueError, KeyError):
        return None, "the result is not a DXO"
    if dxo.data_kind != DataKind.METRICS or not isinstance(dxo.data, dict):
        kind = str(getattr(dxo.data_kind, "value", dxo.data_kind))
        shown = kind if kind in _DATA_KINDS else "of a data kind NVFlare does not define"
        return None, f"the result is {shown}, not METRICS"
    return flat_metrics(dxo.data), ""


def flat_metrics(data: dict[Any, Any], prefix: str = "", depth: int = 0) -> dict[str, float]:
    """The finite scalar metrics of ``data``; nested groups (FLIP's ``{"spleen": {"dice": ...}}``) as ``a/b``."""
    metrics: dict[str, float] = {}
    for name, value in data.items():
        label = f"{prefix}{name}"
        if isinstance(value, dict):
            if depth < _MAX_DEPTH:
                metrics.update(flat_metrics(value, f"{label}/", depth + 1))
            continue
        number = _finite(value)
        if number is not None:
            metrics[label] = number
    return metrics


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
