"""EvaluateModels: one evaluation task per client carrying every model, as FLIP's evaluation controller sends it.

FLIP's evaluation apps read their task as a COLLECTION DXO mapping each model name (the names of
the app's ``config.json`` ``models``) to a WEIGHTS DXO, and look each model up by name
(``dxo.data.get(model_name)``). NVFlare's GlobalModelEval sends one WEIGHTS DXO per model instead,
which such an app cannot read. This controller, built on NVFlare's ``Controller`` and the job's
:class:`~nvflare.app_common.abstract.model_locator.ModelLocator` (normally
:class:`~flip_nvflare.locators.CheckpointModelLocator`), sends FLIP's shape::

    {"id": "evaluation", "path": "flip_nvflare.controllers.EvaluateModels",
     "args": {"model_locator_id": "model_locator", "task_name": "evaluate",
              "participating_clients": "{participating_clients}"}}

A client's answer is read in any of the shapes FLIP apps return, and split per model:

- a METRICS DXO whose data holds one entry per model name (FLIP's evaluators:
  ``{"baseline": {"accuracy": 0.9}, "finetuned": {...}}``);
- a COLLECTION DXO mapping model names to METRICS DXOs (flip-nvflare's EvaluatorRunner when it
  evaluates one model per call; models that failed there are named in the reply's
  ``flip_model_failures`` header);
- with a single model, a plain METRICS DXO.

For each (client, model) the controller fires NVFlare's ``VALIDATION_RESULT_RECEIVED`` with
``MODEL_OWNER`` (the model's name), ``DATA_CLIENT`` and ``VALIDATION_RESULT`` (a METRICS DXO, or
a reply with the failure's return code), as NVFlare's own evaluation workflows do: the
EvaluationJsonGenerator and EvaluationReporter record each model's result or failure from it.
A failed evaluation never stops the run. Before each task goes out it fires
``SEND_MODEL_FOR_VALIDATION`` (StatusReporter: the evaluation has started).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model_locator import ModelLocator
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip_nvflare.constants import FlipCookies, FlipHeaders, FlipTasks
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.executors.sanitize import hub_return_code, sanitize_hub_text

#: Cap on a sanitized name taken from a client's reply.
_MAX_NAME = 200


class EvaluateModels(Controller):
    """Sends every model to every client in one COLLECTION task and reports each model's result.

    Args:
        model_locator_id: Id of the ModelLocator component naming and loading the models.
        task_name: The evaluation task (the clients' EvaluatorRunner must take it).
        participating_clients: Clients to evaluate at (default: every connected client).
        task_timeout: Seconds to wait for the clients' results; 0 waits for ever.
    """

    def __init__(
        self,
        model_locator_id: str = "model_locator",
        task_name: str = FlipTasks.EVALUATE,
        participating_clients: list[str] | None = None,
        task_timeout: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(model_locator_id, str) or not model_locator_id:
            raise FlipConfigError("EvaluateModels: model_locator_id must be the id of the job's model locator.")
        if not isinstance(task_name, str) or not task_name:
            raise FlipConfigError("EvaluateModels: task_name must be a non-empty string.")
        if isinstance(task_timeout, bool) or not isinstance(task_timeout, int) or task_timeout < 0:
            raise FlipConfigError(f"EvaluateModels: task_timeout must be an integer >= 0, got {task_timeout!r}.")
        if participating_clients in (None, []):
            clients = None
        elif isinstance(participating_clients, list) and all(isinstance(c, str) and c for c in participating_clients):
            clients = list(dict.fromkeys(participating_clients))
        else:
            raise FlipConfigError(
                f"EvaluateModels: participating_clients must be a list of client names, got {participating_clients!r}."
            )
        self._locator_id = model_locator_id
        self._task_name = task_name
        self._participants = clients
        self._timeout = task_timeout
        self._models: list[str] = []
        self._lock = threading.Lock()
        self._answered: dict[str, bool] = {}

    @property
    def answered(self) -> dict[str, bool]:
        """Client name -> whether at least one of its evaluations succeeded (this run)."""
        with self._lock:
            return dict(self._answered)

    def start_controller(self, fl_ctx: FLContext) -> None:
        """Nothing to set up; the models are loaded when the workflow runs."""

    def stop_controller(self, fl_ctx: FLContext) -> None:
        """Cancel the evaluation task if the run ends while it is out."""
        self.cancel_all_tasks(fl_ctx=fl_ctx)

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        """Load every model, send them all to every client in one task, and wait for the results."""
        models = self._load_models(fl_ctx)
        if models is None:
            return
        targets = self._targets(fl_ctx)
        if not targets:
            return
        self._models = list(models.data)
        data = models.to_shareable()
        data.add_cookie(FlipCookies.EVALUATED_MODELS, list(self._models))
        self.log_info(
            fl_ctx, f"Sending {len(self._models)} model(s) ({', '.join(self._models)}) to {', '.join(targets)}."
        )
        task = Task(
            name=self._task_name,
            data=data,
            timeout=self._timeout,
            before_task_sent_cb=self._before_send,
            result_received_cb=self._on_result,
        )
        self.broadcast_and_wait(
            task=task,
            fl_ctx=fl_ctx,
            targets=targets,
            min_responses=len(targets),
            wait_time_after_min_received=0,
            abort_signal=abort_signal,
        )
        with self._lock:
            succeeded = sorted(name for name, ok in self._answered.items() if ok)
        self.log_info(
            fl_ctx, f"Evaluation finished: {len(succeeded)} of {len(targets)} client(s) returned a model's metrics."
        )

    # ------------------------------------------------------------------ sending

    def _load_models(self, fl_ctx: FLContext) -> DXO | None:
        locator = fl_ctx.get_engine().get_component(self._locator_id)
        if not isinstance(locator, ModelLocator):
            self.system_panic(
                f"EvaluateModels: component {self._locator_id!r} is not a ModelLocator "
                "(add flip_nvflare.locators.CheckpointModelLocator with that id).",
                fl_ctx,
            )
            return None
        try:
            names = list(locator.get_model_names(fl_ctx))
        except FlipConfigError as exc:
            self.system_panic(str(exc), fl_ctx)
            return None
        collection: dict[str, DXO] = {}
        missing: list[str] = []
        for name in names:
            dxo = locator.locate_model(name, fl_ctx)
            if isinstance(dxo, DXO):
                collection[name] = dxo
            else:
                missing.append(name)
        if missing or not collection:
            what = f"model(s) {', '.join(missing)} could not be loaded" if missing else "the model locator names none"
            self.system_panic(f"EvaluateModels: nothing to evaluate: {what}.", fl_ctx)
            return None
        return DXO(data_kind=DataKind.COLLECTION, data=collection)

    def _targets(self, fl_ctx: FLContext) -> list[str]:
        connected = [c.name for c in fl_ctx.get_engine().get_clients()]
        if self._participants is None:
            return connected
        absent = [name for name in self._participants if name not in connected]
        if absent:
            self.log_warning(
                fl_ctx, f"Participating client(s) {', '.join(absent)} are not connected; not evaluating there.", False
            )
        return [name for name in self._participants if name in connected]

    def _before_send(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        fl_ctx.set_prop(AppConstants.DATA_CLIENT, client_task.client, private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.MODEL_TO_VALIDATE, client_task.task.data, private=True, sticky=False)
        self.fire_event(AppEventType.SEND_MODEL_FOR_VALIDATION, fl_ctx)

    # ------------------------------------------------------------------ results

    def _on_result(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        result = client_task.result
        client_task.result = None
        client = client_task.client.name
        per_model = split_result(result, self._models)
        ok = [name for name, reply in per_model.items() if reply.get_return_code(ReturnCode.OK) == ReturnCode.OK]
        with self._lock:
            self._answered[client] = bool(ok)
        for model, reply in per_model.items():
            fl_ctx.set_prop(AppConstants.MODEL_OWNER, model, private=True, sticky=False)
            fl_ctx.set_prop(AppConstants.DATA_CLIENT, client, private=True, sticky=False)
            fl_ctx.set_prop(AppConstants.VALIDATION_RESULT, reply, private=True, sticky=False)
            self.fire_event(AppEventType.VALIDATION_RESULT_RECEIVED, fl_ctx)
        failed = [name for name in per_model if name not in ok]
        if failed:
            codes = sorted({hub_return_code(per_model[name].get_return_code()) for name in failed})
            self.log_warning(
                fl_ctx, f"{client}: evaluation of {', '.join(failed)} failed ({', '.join(codes)}).", fire_event=False
            )
        if ok:
            self.log_info(fl_ctx, f"{client}: metrics of {', '.join(ok)} received.")

    def process_result_of_unknown_task(
        self, client: Client, task_name: str, client_task_id: str, result: Shareable, fl_ctx: FLContext
    ) -> None:
        """A late answer (after the task ended) changes nothing."""
        shown = sanitize_hub_text(task_name, _MAX_NAME)
        self.log_info(fl_ctx, f"Ignoring a late result from {client.name} for task {shown!r}.")


def split_result(result: object, models: list[str]) -> dict[str, Shareable]:
    """One client's evaluation reply as one reply per model: a METRICS DXO, or a reply with a return code.

    Args:
        result: The client's reply.
        models: The names of the models the task carried.

    Returns:
        Model name -> a METRICS DXO's shareable (the model's metrics), or a reply whose return code
        says why the model has none (the client's own code; ``EXECUTION_RESULT_ERROR`` when the
        reply does not hold that model's metrics).
    """
    if not isinstance(result, Shareable):
        return {name: make_reply(ReturnCode.EXECUTION_EXCEPTION) for name in models}
    return_code = result.get_return_code(ReturnCode.OK)
    if return_code != ReturnCode.OK:
        return {name: make_reply(return_code) for name in models}
    try:
        dxo = from_shareable(result)
    except (TypeError, ValueError, KeyError):
        dxo = None
    if dxo is None or not isinstance(dxo.data, dict):
        return {name: make_reply(ReturnCode.EXECUTION_RESULT_ERROR) for name in models}
    failures = result.get_header(FlipHeaders.MODEL_FAILURES, None)
    failures = failures if isinstance(failures, dict) else {}
    found: dict[str, Any] = {}
    if dxo.data_kind == DataKind.COLLECTION:
        for name in models:
            sub = dxo.data.get(name)
            if isinstance(sub, DXO) and sub.data_kind == DataKind.METRICS and isinstance(sub.data, dict):
                found[name] = sub.data
    elif dxo.data_kind == DataKind.METRICS:
        named = {name: dxo.data[name] for name in models if isinstance(dxo.data.get(name), Mapping)}
        if named:
            found = named
        elif len(models) == 1:
            found = {models[0]: dxo.data}
    split: dict[str, Shareable] = {}
    for name in models:
        if name in found:
            split[name] = DXO(data_kind=DataKind.METRICS, data=dict(found[name])).to_shareable()
        else:
            code = failures.get(name)
            split[name] = make_reply(code if isinstance(code, str) and code else ReturnCode.EXECUTION_RESULT_ERROR)
    return split
