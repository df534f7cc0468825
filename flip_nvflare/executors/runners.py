"""TrainerRunner, ValidatorRunner, EvaluatorRunner: run a FLIP app's own executors from ``custom/``.

A FLIP app ships its code in the job's ``custom/`` folder: ``trainer.py`` defining ``FLIP_TRAINER``,
``validator.py`` defining ``FLIP_VALIDATOR``, ``evaluator.py`` defining ``FLIP_EVALUATOR``. Each is
an NVFlare-style executor: built with keyword arguments, called with
``execute(task_name, shareable, fl_ctx, abort_signal)``. A runner:

- imports the user's module from this job's ``custom/`` folder when the first task arrives and
  builds the class with the arguments it accepts (FLIP's usual ones, any ``app_args`` from the
  config, and ``flip`` -- the job's backend -- if the constructor has such a parameter);
- runs every call with the job's backend current, so ``FLIP()`` inside user code returns it, and
  ``prepared_cohort()`` finds this job's prepared cohort;
- in a job with a CohortPreparer, prepares this site's cohort before a task if the site has not
  (the server moved on without it), or refuses the task with a clear error if that fails;
- passes the user's reply through; any exception becomes an execution-exception reply whose
  ``exception`` header is the sanitized traceback (the full one stays in the client's log);
- strips a reply whose return code is not OK down to its headers (return code and sanitized
  ``exception`` header kept; any DXO or other payload removed): a failed result carries no weights;
- forwards NVFlare events to the user's object once it exists, if it is an FLComponent.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flip_nvflare.backend import get_flip_backend
from flip_nvflare.client import using_backend, using_run_dir
from flip_nvflare.constants import DEFAULT_FLIP_ID, FlipHeaders, FlipTasks
from flip_nvflare.core.base import FLIPBase
from flip_nvflare.errors import FlipAppError, format_traceback
from flip_nvflare.executors.cohort import prepare_before_task
from flip_nvflare.executors.manifest import cohort_identifiers
from flip_nvflare.executors.sanitize import DEFAULT_MAX_CHARS, Sanitizer
from flip_nvflare.filters.percentile_privacy import withhold_payload
from flip_nvflare.locators.checkpoint import MODEL_NAME_META
from flip_nvflare.workspace import job_custom_dir, job_run_dir


@dataclass(frozen=True)
class AppRole:
    """What a runner looks for in ``custom/``."""

    module: str
    class_name: str
    job_kind: str


class _AppRunner(Executor):
    """Shared machinery of the three runners; subclasses name the role and the default arguments."""

    role: ClassVar[AppRole]

    def __init__(
        self,
        *,
        standard_args: dict[str, Any],
        app_args: dict[str, Any] | None,
        flip_id: str,
        max_exception_chars: int,
        redact_columns: list[str] | None,
    ) -> None:
        super().__init__()
        if app_args is not None and not isinstance(app_args, dict):
            raise FlipAppError(f"{type(self).__name__}: app_args must be a JSON object of constructor arguments.")
        overlap = sorted(set(app_args or {}) & (set(standard_args) | {"flip"}))
        if overlap:
            raise FlipAppError(
                f"{type(self).__name__}: app_args repeats {', '.join(overlap)}; set those as the runner's own args."
            )
        self._standard_args = standard_args
        self._app_args = dict(app_args or {})
        self._flip_id = flip_id
        self._max_exception_chars = int(max_exception_chars)
        self._redact_columns = list(redact_columns or [])
        self._instance: Any = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ NVFlare entry points

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Check the app's file exists at START_RUN (logged early); forward events to the user's object."""
        if event_type == EventType.START_RUN:
            custom = job_custom_dir(fl_ctx)
            if custom is not None and _module_file(custom, self.role.module) is None:
                self.log_error(fl_ctx, _missing_file_message(self.role, custom), fire_event=False)
        instance = self._instance
        if isinstance(instance, FLComponent):
            try:
                with self._user_context(fl_ctx):
                    instance.handle_event(event_type, fl_ctx)
            except Exception as exc:
                self.log_error(
                    fl_ctx,
                    f"{self.role.class_name}.handle_event({event_type}) raised:\n{format_traceback(exc)}",
                    fire_event=False,
                )

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Run the user's ``execute`` and pass its reply on; turn any exception into a sanitized reply.

        A reply whose return code is not OK keeps only its headers (see :func:`withhold_payload`).
        """
        try:
            prepare_before_task(fl_ctx, task_name, self, abort_signal)  # never run on an unprepared cohort
            with self._user_context(fl_ctx) as backend:
                instance = self._get_instance(fl_ctx, backend)
                result = self._call_app(instance, task_name, shareable, fl_ctx, abort_signal)
            if not isinstance(result, Shareable):
                raise FlipAppError(
                    f"{self.role.class_name}.execute must return a Shareable (e.g. make_reply(...) or "
                    f"dxo.to_shareable()), got {type(result).__name__}."
                )
        except (Exception, SystemExit) as exc:  # a user's sys.exit() must not take the client down
            self.log_error(
                fl_ctx,
                f"{self.role.class_name} failed on task {task_name!r}:\n{format_traceback(exc)}",
                fire_event=False,
            )
            return make_reply(
                ReturnCode.EXECUTION_EXCEPTION, headers={FlipHeaders.EXCEPTION: self._safe_text(fl_ctx, exc)}
            )
        reported = result.get_header(FlipHeaders.EXCEPTION)
        if reported is not None:
            result.set_header(FlipHeaders.EXCEPTION, self._safe_text(fl_ctx, str(reported)))
        return_code = result.get_return_code()
        if return_code != ReturnCode.OK and withhold_payload(result):
            self.log_warning(
                fl_ctx,
                f"{self.role.class_name} returned {str(return_code)[:64]!r} for task {task_name!r} with a payload; "
                "it was removed: a failed result leaves the site with its return code and headers only.",
                fire_event=False,
            )
        return result

    def _call_app(
        self, instance: Any, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal
    ) -> Any:
        """Hand one task to the user's object (inside the job's backend context); its reply is checked after."""
        return instance.execute(task_name, shareable, fl_ctx, abort_signal)

    # ------------------------------------------------------------------ the user's object

    @contextmanager
    def _user_context(self, fl_ctx: FLContext) -> Iterator[FLIPBase]:
        """Make the job's backend and run folder current, so FLIP() and prepared_cohort() find them."""
        backend = get_flip_backend(fl_ctx, self._flip_id)
        with using_backend(backend), using_run_dir(job_run_dir(fl_ctx)):
            yield backend

    def _get_instance(self, fl_ctx: FLContext, backend: FLIPBase) -> Any:
        with self._lock:
            if self._instance is None:
                cls = load_app_class(job_custom_dir(fl_ctx), self.role)
                kwargs = constructor_kwargs(cls, self.role, {**self._standard_args, **self._app_args}, backend)
                unknown = sorted(set(self._app_args) - set(kwargs))
                if unknown:
                    raise FlipAppError(
                        f"{self.role.class_name} does not accept app_args {', '.join(unknown)}: add them to its "
                        "constructor or remove them from the runner's app_args."
                    )
                instance = cls(**kwargs)
                if not callable(getattr(instance, "execute", None)):
                    raise FlipAppError(
                        f"{self.role.class_name} in {self.role.module}.py must define "
                        "execute(self, task_name, shareable, fl_ctx, abort_signal) returning a Shareable "
                        "(subclass nvflare.apis.executor.Executor)."
                    )
                self.log_info(fl_ctx, f"Built {self.role.class_name} from {self.role.module}.py.")
                self._instance = instance
            return self._instance

    # ------------------------------------------------------------------ sanitizing

    def _safe_text(self, fl_ctx: FLContext, what: BaseException | str) -> str:
        """``what`` (an exception's traceback, or text) sanitized; if sanitizing fails, a bare summary."""
        try:
            sanitizer = self._sanitizer(fl_ctx)
            return sanitizer.exception(what) if isinstance(what, BaseException) else sanitizer.text(what)
        except Exception as exc:
            self.log_error(fl_ctx, f"Sanitizing the exception text failed:\n{format_traceback(exc)}", fire_event=False)
            kind = type(what).__name__ if isinstance(what, BaseException) else "error"
            return f"{self.role.class_name} failed with {kind} (details withheld: see the client's log)."

    def _sanitizer(self, fl_ctx: FLContext) -> Sanitizer:
        query = self._standard_args.get("query")
        project_id = self._standard_args.get("project_id")
        custom = job_custom_dir(fl_ctx)
        return Sanitizer(
            identifiers=cohort_identifiers(job_run_dir(fl_ctx), self._redact_columns),
            query=query if isinstance(query, str) else None,
            secrets=[project_id if isinstance(project_id, str) else None],
            code_roots=[custom] if custom is not None else [],
            max_chars=self._max_exception_chars,
        )


class TrainerRunner(_AppRunner):
    """Runs ``FLIP_TRAINER`` from the job's ``custom/trainer.py``.

    Args:
        train_task_name: Name of the training task.
        submit_model_task_name: Name of the task asking for the best local model.
        exclude_vars: Variables to exclude when loading the global model (passed to the trainer).
        project_id: The encrypted project id, normally ``"{project_id}"``.
        query: The cohort SQL, normally ``"{query}"``.
        app_args: Extra keyword arguments for ``FLIP_TRAINER`` (e.g. ``{"lr": 0.01}``).
        flip_id: Id of the job's FlipBackend component.
        max_exception_chars: Cap on the exception text sent to the hub.
        redact_columns: Dataframe columns whose values are also redacted from exception text
            (the cohort's accession ids always are).
    """

    role = AppRole("trainer", "FLIP_TRAINER", "training")

    def __init__(
        self,
        train_task_name: str = AppConstants.TASK_TRAIN,
        submit_model_task_name: str = AppConstants.TASK_SUBMIT_MODEL,
        exclude_vars: Any = None,
        project_id: str = "",
        query: str = "",
        app_args: dict[str, Any] | None = None,
        flip_id: str = DEFAULT_FLIP_ID,
        max_exception_chars: int = DEFAULT_MAX_CHARS,
        redact_columns: list[str] | None = None,
    ) -> None:
        super().__init__(
            standard_args={
                "train_task_name": train_task_name,
                "submit_model_task_name": submit_model_task_name,
                "exclude_vars": exclude_vars,
                "project_id": project_id,
                "query": query,
            },
            app_args=app_args,
            flip_id=flip_id,
            max_exception_chars=max_exception_chars,
            redact_columns=redact_columns,
        )


class ValidatorRunner(_AppRunner):
    """Runs ``FLIP_VALIDATOR`` from the job's ``custom/validator.py``.

    Args:
        validate_task_name: Name of the validation task.
        project_id: The encrypted project id, normally ``"{project_id}"``.
        query: The cohort SQL, normally ``"{query}"``.
        app_args: Extra keyword arguments for ``FLIP_VALIDATOR``.
        flip_id: Id of the job's FlipBackend component.
        max_exception_chars: Cap on the exception text sent to the hub.
        redact_columns: Dataframe columns whose values are also redacted from exception text.
    """

    role = AppRole("validator", "FLIP_VALIDATOR", "training")

    def __init__(
        self,
        validate_task_name: str = AppConstants.TASK_VALIDATION,
        project_id: str = "",
        query: str = "",
        app_args: dict[str, Any] | None = None,
        flip_id: str = DEFAULT_FLIP_ID,
        max_exception_chars: int = DEFAULT_MAX_CHARS,
        redact_columns: list[str] | None = None,
    ) -> None:
        super().__init__(
            standard_args={"validate_task_name": validate_task_name, "project_id": project_id, "query": query},
            app_args=app_args,
            flip_id=flip_id,
            max_exception_chars=max_exception_chars,
            redact_columns=redact_columns,
        )


class EvaluatorRunner(_AppRunner):
    """Runs ``FLIP_EVALUATOR`` from the job's ``custom/evaluator.py``.

    An evaluation task arrives in one of two shapes: FLIP's (one task carrying every model, a
    COLLECTION DXO mapping each model name to a WEIGHTS DXO, as EvaluateModels sends it) or
    NVFlare's GlobalModelEval's (one WEIGHTS DXO per task, older job configs). An evaluator is
    written for one of them; ``models_per_call`` says how the runner bridges the two:

    - ``"auto"`` (default): a task is handed over as it comes; if the evaluator answers a COLLECTION
      task with ``BAD_TASK_DATA`` (it expects one model's WEIGHTS), the runner hands it the models
      one at a time from then on (as ``"one"``);
    - ``"all"``: a task is handed over as it comes; a single WEIGHTS task is first wrapped in a
      COLLECTION holding that one model under its name (FLIP evaluators then find it by name);
    - ``"one"``: a COLLECTION task is handed over one model at a time (a WEIGHTS DXO with the
      model's name in the ``model_owner`` header and cookie and in the DXO meta ``model_name``);
      the metrics come back as one COLLECTION of METRICS DXOs. A model whose evaluation fails is
      named in the reply's ``flip_model_failures`` header (its sanitized error text in the
      ``exception`` header) while the others' metrics go on; if every model fails, the reply is the
      failure itself.

    Args:
        evaluate_task_name: Name of the evaluation task.
        project_id: The encrypted project id, normally ``"{project_id}"``.
        query: The cohort SQL, normally ``"{query}"``.
        app_args: Extra keyword arguments for ``FLIP_EVALUATOR``.
        flip_id: Id of the job's FlipBackend component.
        max_exception_chars: Cap on the exception text sent to the hub.
        redact_columns: Dataframe columns whose values are also redacted from exception text.
        models_per_call: ``"auto"``, ``"all"`` or ``"one"`` (above).
    """

    role = AppRole("evaluator", "FLIP_EVALUATOR", "evaluation")

    def __init__(
        self,
        evaluate_task_name: str = FlipTasks.EVALUATE,
        project_id: str = "",
        query: str = "",
        app_args: dict[str, Any] | None = None,
        flip_id: str = DEFAULT_FLIP_ID,
        max_exception_chars: int = DEFAULT_MAX_CHARS,
        redact_columns: list[str] | None = None,
        models_per_call: str = "auto",
    ) -> None:
        super().__init__(
            standard_args={"evaluate_task_name": evaluate_task_name, "project_id": project_id, "query": query},
            app_args=app_args,
            flip_id=flip_id,
            max_exception_chars=max_exception_chars,
            redact_columns=redact_columns,
        )
        if models_per_call not in MODELS_PER_CALL:
            raise FlipAppError(
                f"EvaluatorRunner: models_per_call must be one of {', '.join(MODELS_PER_CALL)}, "
                f"got {models_per_call!r}."
            )
        self._models_per_call = models_per_call
        self._one_at_a_time = models_per_call == "one"

    def _call_app(
        self, instance: Any, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal
    ) -> Any:
        """Hand the task over in the shape the evaluator reads (see the class docstring)."""
        models = weights_collection(shareable)
        if models is None:
            if self._models_per_call == "all":
                shareable = as_collection(shareable)
            return instance.execute(task_name, shareable, fl_ctx, abort_signal)
        if self._one_at_a_time:
            return self._one_by_one(instance, task_name, shareable, models, fl_ctx, abort_signal)
        result = instance.execute(task_name, shareable, fl_ctx, abort_signal)
        if (
            self._models_per_call == "auto"
            and isinstance(result, Shareable)
            and result.get_return_code(ReturnCode.OK) == ReturnCode.BAD_TASK_DATA
        ):
            self.log_info(
                fl_ctx,
                f"{self.role.class_name} answered BAD_TASK_DATA to the {len(models)} model(s) in one task: it "
                "reads one model's WEIGHTS per call, so it gets them one at a time (set models_per_call to say so).",
            )
            self._one_at_a_time = True
            return self._one_by_one(instance, task_name, shareable, models, fl_ctx, abort_signal)
        return result

    def _one_by_one(
        self,
        instance: Any,
        task_name: str,
        task: Shareable,
        models: dict[str, DXO],
        fl_ctx: FLContext,
        abort_signal: Signal,
    ) -> Shareable:
        metrics: dict[str, DXO] = {}
        failures: dict[str, str] = {}
        texts: list[str] = []
        for name, weights in models.items():
            if abort_signal.triggered:
                return make_reply(ReturnCode.TASK_ABORTED)
            try:
                reply = instance.execute(task_name, one_model_task(task, name, weights), fl_ctx, abort_signal)
                if not isinstance(reply, Shareable):
                    raise FlipAppError(
                        f"{self.role.class_name}.execute must return a Shareable, got {type(reply).__name__}."
                    )
            except (Exception, SystemExit) as exc:
                self.log_error(
                    fl_ctx,
                    f"{self.role.class_name} failed on model {name!r}:\n{format_traceback(exc)}",
                    fire_event=False,
                )
                failures[name] = ReturnCode.EXECUTION_EXCEPTION
                texts.append(f"Model {name!r}: {self._safe_text(fl_ctx, exc)}")
                continue
            return_code = reply.get_return_code(ReturnCode.OK)
            if return_code == ReturnCode.TASK_ABORTED:
                return make_reply(ReturnCode.TASK_ABORTED)
            dxo = _metrics_dxo(reply) if return_code == ReturnCode.OK else None
            if dxo is not None:
                metrics[name] = dxo
                continue
            failures[name] = str(return_code) if return_code != ReturnCode.OK else ReturnCode.EXECUTION_RESULT_ERROR
            reported = reply.get_header(FlipHeaders.EXCEPTION)
            if reported is not None:
                texts.append(f"Model {name!r}: {self._safe_text(fl_ctx, str(reported))}")
        headers = {FlipHeaders.EXCEPTION: "\n".join(texts)} if texts else None
        if not metrics:
            codes = set(failures.values())
            return make_reply(codes.pop() if len(codes) == 1 else ReturnCode.EXECUTION_EXCEPTION, headers=headers)
        result = DXO(data_kind=DataKind.COLLECTION, data=metrics).to_shareable()
        if failures:
            result.set_header(FlipHeaders.MODEL_FAILURES, failures)
        for key, value in (headers or {}).items():
            result.set_header(key, value)
        return result


#: The values of EvaluatorRunner's ``models_per_call``.
MODELS_PER_CALL = ("auto", "all", "one")


def weights_collection(task: Shareable) -> dict[str, DXO] | None:
    """The models of a FLIP evaluation task (a COLLECTION of WEIGHTS DXOs), or None for any other task."""
    try:
        dxo = from_shareable(task)
    except (TypeError, ValueError, KeyError):
        return None
    if dxo.data_kind != DataKind.COLLECTION or not isinstance(dxo.data, dict) or not dxo.data:
        return None
    if not all(isinstance(sub, DXO) and sub.data_kind == DataKind.WEIGHTS for sub in dxo.data.values()):
        return None
    return {str(name): sub for name, sub in dxo.data.items()}


def one_model_task(task: Shareable, name: str, weights: DXO) -> Shareable:
    """One model of a FLIP evaluation task as the task GlobalModelEval would send for it."""
    weights.set_meta_prop(MODEL_NAME_META, name)
    single = weights.to_shareable()
    for key, value in (task.get(ReservedHeaderKey.HEADERS) or {}).items():
        single.set_header(key, value)
    single.set_header(AppConstants.MODEL_OWNER, name)
    single.add_cookie(AppConstants.MODEL_OWNER, name)
    return single


def as_collection(task: Shareable) -> Shareable:
    """A single-model WEIGHTS task (GlobalModelEval's) as a FLIP evaluation task holding that model by name.

    The name is the DXO meta's ``model_name``, else the ``model_owner`` header without its ``SRV_``
    prefix. Any other task is returned unchanged.
    """
    try:
        dxo = from_shareable(task)
    except (TypeError, ValueError, KeyError):
        return task
    if dxo.data_kind != DataKind.WEIGHTS:
        return task
    name = dxo.get_meta_prop(MODEL_NAME_META) or str(task.get_header(AppConstants.MODEL_OWNER, "") or "")
    name = str(name).removeprefix("SRV_") or "global_model"
    wrapped = DXO(data_kind=DataKind.COLLECTION, data={name: dxo}).to_shareable()
    for key, value in (task.get(ReservedHeaderKey.HEADERS) or {}).items():
        wrapped.set_header(key, value)
    return wrapped


def _metrics_dxo(reply: Shareable) -> DXO | None:
    try:
        dxo = from_shareable(reply)
    except (TypeError, ValueError, KeyError):
        return None
    return dxo if dxo.data_kind == DataKind.METRICS and isinstance(dxo.data, dict) else None


# ---------------------------------------------------------------------- loading the user's class


def load_app_class(custom_dir: Path | None, role: AppRole) -> type:
    """Import ``role.module`` from the job's ``custom/`` folder and return ``role.class_name``.

    The module is imported under its own name (so the app's other modules and pickles keep
    working) unless a different module of that name is already loaded, in which case this job's
    file is loaded under a private name.

    Raises:
        FlipAppError: The file or the class is missing.
    """
    if custom_dir is None:
        try:
            module = importlib.import_module(role.module)
        except ModuleNotFoundError as exc:
            if exc.name != role.module:
                raise
            raise FlipAppError(
                f"{role.module}.py not found on the Python path: a FLIP {role.job_kind} app must contain "
                f"{role.module}.py defining class {role.class_name} in the job's custom folder."
            ) from None
    else:
        path = _module_file(custom_dir, role.module)
        if path is None:
            raise FlipAppError(_missing_file_message(role, custom_dir))
        module = _import_from(custom_dir, role.module, path)
    cls = getattr(module, role.class_name, None)
    if not inspect.isclass(cls):
        raise FlipAppError(
            f"{role.module}.py in the job's custom folder does not define class {role.class_name}: a FLIP "
            f"{role.job_kind} app must define it (an NVFlare Executor with "
            "execute(task_name, shareable, fl_ctx, abort_signal))."
        )
    return cls


def constructor_kwargs(cls: type, role: AppRole, offered: dict[str, Any], backend: FLIPBase) -> dict[str, Any]:
    """The keyword arguments of ``offered`` that ``cls`` accepts, plus ``flip=backend`` if it asks for it.

    Raises:
        FlipAppError: The constructor needs an argument nobody provides.
    """
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return dict(offered)
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if k in params or takes_any}
    if "flip" in params:
        kwargs["flip"] = backend
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise FlipAppError(
            f"Cannot build {role.class_name}: {exc}. The runner provides {', '.join(sorted(offered))} "
            "and 'flip' (the job's backend) to constructors that name them; pass other arguments with app_args."
        ) from None
    return kwargs


def _module_file(custom_dir: Path, module: str) -> Path | None:
    for candidate in (custom_dir / f"{module}.py", custom_dir / module / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _missing_file_message(role: AppRole, custom_dir: Path) -> str:
    return (
        f"{role.module}.py not found in the job's custom folder ({custom_dir}): a FLIP {role.job_kind} app must "
        f"contain {role.module}.py defining class {role.class_name}."
    )


def _import_from(custom_dir: Path, name: str, path: Path) -> ModuleType:
    loaded = sys.modules.get(name)
    if loaded is not None and _same_file(loaded, path):
        return loaded
    if str(custom_dir) not in sys.path:
        sys.path.insert(0, str(custom_dir))
    importlib.invalidate_caches()
    if loaded is None:
        module = importlib.import_module(name)
        if _same_file(module, path):
            return module
    # Another module of that name is loaded (another job, or an installed package): load ours privately.
    private = f"_flip_app_{abs(hash(str(path.resolve())))}_{name}"
    if private in sys.modules:
        return sys.modules[private]
    spec = importlib.util.spec_from_file_location(private, path)
    if spec is None or spec.loader is None:
        raise FlipAppError(f"Cannot import {path.name} from the job's custom folder.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[private] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(private, None)
        raise
    return module


def _same_file(module: ModuleType, path: Path) -> bool:
    file = getattr(module, "__file__", None)
    try:
        return file is not None and Path(file).resolve() == path.resolve()
    except OSError:
        return False
