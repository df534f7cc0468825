"""FlipRecipe: what every FLIP recipe shares (FLIP's keyword arguments, the dev/prod rule, export, version).

A recipe describes its server and client apps as data (:mod:`flip_nvflare.recipes.spec`); this
base turns the description into NVFlare's :class:`~nvflare.job_config.api.FedJob`, so
``recipe.job.add_file_to_clients(...)``, ``recipe.execute(SimEnv(...))``, ``recipe.export(dir)`` and
NVFlare's ``--export --export-dir`` flags work as they do for FLIP's recipes.

The dev/prod rule is the job templates' one, fail-closed:

- ``flip_mode="dev"`` or ``"prod"`` is written into both apps' configs.
- Without ``flip_mode``, ``execute(SimEnv(...))`` runs in dev (as FLIP's recipes do: local data
  from ``DEV_DATAFRAME`` / ``DEV_IMAGES_DIR`` unless ``dev_dataframe`` / ``dev_images_dir`` are
  given; those variables only locate the data, they never choose the mode).
- Without ``flip_mode``, ``execute(PocEnv(...))`` / ``execute(ProdEnv(...))`` is refused, and an
  exported job carries no mode: a site refuses to build it until the deployer sets one.

Every job records the flip-nvflare version it was built with (``meta.json``
``custom_props.flip_nvflare_version``); a site whose flip-nvflare cannot run it refuses it at
START_RUN. The job carries no copy of flip-nvflare's code: sites run the version they installed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType
from nvflare.recipe.spec import ExecEnv, Recipe

from flip_nvflare.constants import FlipMode, JobType
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.jobs.identity import CUSTOM_PROPS, MODEL_ID_PROP, VERSION_PROP, installed_version
from flip_nvflare.recipes.spec import AppSpec, Component, configured

#: NVFlare's exchange formats and transfer types a recipe accepts (the names NVFlare's configs use).
EXCHANGE_FORMATS = ("numpy", "pytorch", "raw")
TRANSFER_TYPES = ("FULL", "DIFF")
#: Server component ids every FLIP training job has (the hub widgets find each other by these).
_HUB_WIDGETS = (
    Component("status_reporter", "flip_nvflare.components.StatusReporter"),
    Component("metrics_forwarder", "flip_nvflare.components.MetricsForwarder"),
    Component("progress_reporter", "flip_nvflare.components.ProgressReporter"),
    Component("exception_forwarder", "flip_nvflare.components.ExceptionForwarder"),
    Component("site_loss_reporter", "flip_nvflare.components.SiteLossReporter", {"policy": "{on_site_lost}"}),
    Component("privacy_ledger", "flip_nvflare.components.PrivacyLedger"),
)

#: What a dev simulator run uses for an empty project id / query (dev data ignores both).
DEV_PROJECT_ID = "dev-project"
DEV_QUERY = "SELECT * FROM dev_cohort"
#: The Python an external-process script is started with at a site (the site's ``python3`` on its PATH).
SITE_PYTHON = "python3"

#: The Client API execution modes a recipe offers (NVFlare's names).
EXECUTION_MODES = ("in_process", "external_process")


@dataclass(frozen=True)
class PercentilePrivacy:
    """The percentile privacy filter's settings, as FLIP's recipes take them.

    Attributes:
        gamma: Absolute bound on each shared value of the update.
        percentile: Values of the update below this percentile (by magnitude) are not shared.
        off: Turn the filter off (the site's own privacy policy still applies).
    """

    gamma: float = 0.01
    percentile: int = 10
    off: bool = False


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FlipConfigError(f"{name} must be a whole number >= 1, got {value!r}.")
    return value


def _non_negative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise FlipConfigError(f"{name} must be a finite number >= 0, got {value!r}.")
    return value


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; else an error naming them."""
    if value not in choices:
        raise FlipConfigError(f"{name} must be {' or '.join(choices)}, got {value!r}.")
    return str(value)


def _text(name: str, value: object, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise FlipConfigError(f"{name} must be {'a' if empty else 'a non-empty'} string, got {type(value).__name__}.")
    if "\n" in value or "\r" in value or "\x00" in value:
        raise FlipConfigError(f"{name} must be one line (no newline or NUL characters).")
    return value


def _task_name(name: str, value: object) -> str:
    text = _text(name, value, empty=False)
    if text != text.strip() or " " in text:
        raise FlipConfigError(f"{name} must be a task name without spaces, got {text!r}.")
    return text


def _script(name: str, value: object) -> str:
    """FLIP's rule: ``trainer.py`` means ``custom/trainer.py``; an explicit ``custom/`` prefix is kept."""
    text = _text(name, value, empty=False)
    if not text.endswith(".py"):
        raise FlipConfigError(f"{name} must name a Python script (a .py file), got {text!r}.")
    parts = Path(text).parts
    if Path(text).is_absolute() or ".." in parts:
        raise FlipConfigError(f"{name} must be a path inside the job's custom/ folder, got {text!r}.")
    return text if parts[0] == "custom" else f"custom/{text}"


class FlipRecipe(Recipe):
    """The base of FLIP's recipes (see the module docstring).

    Args:
        min_clients: Sites that must take part (FedJob's ``min_clients`` and the workflows').
        model_id: The model's id on the hub, for runs that know it (SimEnv, PocEnv); written to
            ``meta.json`` ``custom_props.model_id``. FLIP's hub writes the real one when it deploys.
        project_id: The project's encrypted id (client config ``project_id``; ``{project_id}`` in
            the script arguments resolves to it).
        query: The cohort query (client config ``query``; scripts read it from there).
        flip_mode: ``"dev"`` or ``"prod"`` (see the module docstring).
        dev_dataframe: Dev mode: the cohort CSV (else ``DEV_DATAFRAME``).
        dev_images_dir: Dev mode: one image folder per accession (else ``DEV_IMAGES_DIR``).
        execution_mode: ``"in_process"`` (the script runs on a thread of the site's job process)
            or ``"external_process"`` (in its own Python process).
        heart_beat_timeout: External process only: seconds without a heartbeat before the script
            is considered dead.
        gpus: GPUs each site must have free for this job (``meta.json`` ``resource_spec``).
        gpu_mem: GiB of memory each of those GPUs must have free.
    """

    job_type: ClassVar[JobType]
    job_name: ClassVar[str]

    def __init__(
        self,
        *,
        min_clients: int,
        model_id: str | None,
        project_id: str,
        query: str,
        flip_mode: str | None,
        dev_dataframe: str | None,
        dev_images_dir: str | None,
        execution_mode: str,
        heart_beat_timeout: float | None,
        gpus: int | None,
        gpu_mem: float | None,
    ) -> None:
        self.min_clients = _positive_int("min_clients", min_clients)
        self.model_id = None if model_id in (None, "") else self._checked_model_id(model_id)
        self.project_id = _text("project_id", project_id)
        self.query = _text("query", query.strip() if isinstance(query, str) else query)
        self.flip_mode = None if flip_mode is None else self._checked_mode(flip_mode)
        self.dev_dataframe = None if dev_dataframe is None else _text("dev_dataframe", str(dev_dataframe), empty=False)
        self.dev_images_dir = (
            None if dev_images_dir is None else _text("dev_images_dir", str(dev_images_dir), empty=False)
        )
        self.execution_mode = _choice("execution_mode", execution_mode, EXECUTION_MODES)
        if heart_beat_timeout is not None and execution_mode != "external_process":
            heart_beat_timeout = None  # NVFlare's in-process executor has no heartbeat (FLIP passes one anyway)
        self.heart_beat_timeout = (
            None if heart_beat_timeout is None else _non_negative("heart_beat_timeout", heart_beat_timeout)
        )
        self.resource_spec = self._resources(gpus, gpu_mem)
        server, client = self.apps()
        super().__init__(self._build_job(server, client))

    # ------------------------------------------------------------------ what subclasses provide

    def apps(self) -> tuple[AppSpec, AppSpec]:
        """The server app and the client app of this recipe."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API

    @property
    def job(self) -> FedJob:
        """The recipe's FedJob (add files with ``recipe.job.add_file_to_clients(path)``)."""
        return self._job

    def process_env(self, env: ExecEnv) -> None:
        """Apply the dev/prod rule for ``env`` (see the module docstring).

        Raises:
            FlipConfigError: A POC or production environment and no ``flip_mode``.
        """
        from nvflare.recipe.poc_env import PocEnv
        from nvflare.recipe.sim_env import SimEnv

        if isinstance(env, (SimEnv, PocEnv)):
            self._use_this_python()  # the sites run on this machine, with this Python
        if isinstance(env, SimEnv):
            if self.flip_mode is None:
                self._set_params({"flip_mode": FlipMode.DEV.value})
            if self.flip_mode in (None, FlipMode.DEV.value):
                self._fill_dev_placeholders()
            _install_site_policy(Path(env.workspace_root) / self._job.name)
            return
        if self.flip_mode is None:
            raise FlipConfigError(
                f"{type(self).__name__} has no flip_mode, and {type(env).__name__} is not the simulator: pass "
                'flip_mode="prod" (or "dev" for a POC run on local data) to the recipe.'
            )

    def export(self, job_dir: str | Path, **kwargs: Any) -> None:
        """Write the job to ``job_dir/<job name>/`` (meta.json, app/config, app/custom).

        An exported job is for sites to run: it gets none of the simulator's settings, whatever
        environment is passed (NVFlare's ``--export`` flag passes the one the job.py built, often
        ``SimEnv``), so it carries no ``flip_mode`` unless the recipe was given one, and an
        external-process command starts the site's ``python3``. ``app/custom/`` exists even when no
        file was added, for tools that copy the app files in afterwards (as FLIP's tutorials do).

        Args:
            job_dir: The folder to write the job into.
            **kwargs: NVFlare's ``server_exec_params`` / ``client_exec_params``; ``env`` is ignored.
        """
        kwargs.pop("env", None)
        super().export(str(job_dir), **kwargs)
        (Path(job_dir) / self._job.name / "app" / "custom").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ building the FedJob

    def _build_job(self, server: AppSpec, client: AppSpec) -> FedJob:
        props: dict[str, Any] = {VERSION_PROP: installed_version()}
        if self.model_id is not None:
            props[MODEL_ID_PROP] = self.model_id
        meta: dict[str, Any] = {CUSTOM_PROPS: props}
        if self.resource_spec:
            meta["resource_spec"] = self.resource_spec
        job = FedJob(name=self.job_name, min_clients=self.min_clients, meta_props=meta)
        job.set_app_packages(["flip_nvflare"])  # sites run their installed flip-nvflare: never copy it
        raw: dict[str, list[Component]] = {"server": [], "client": []}
        _add_app(job, server, "server", raw["server"])
        self._executors = _add_app(job, client, "client", raw["client"])
        _finish_configs_with(job, raw)
        return job

    def _fill_dev_placeholders(self) -> None:
        """Give a dev simulator run placeholders for an empty project id or query (FLIP's tutorials ship them empty).

        Dev data ignores both, but every FLIP component needs them set, as on FLIP's hub.
        """
        params: dict[str, Any] = {}
        if not self.project_id.strip():
            params["project_id"] = DEV_PROJECT_ID
        if not self.query.strip():
            params["query"] = DEV_QUERY
        if params:
            self._add_to_client_apps(params)

    def _use_this_python(self) -> None:
        """External-process commands start ``python3`` (the site's); on this machine, use this interpreter."""
        for executor in self._executors:
            command = executor.__dict__.get("command")
            if isinstance(command, str) and command.startswith(f"{SITE_PYTHON} "):
                executor.__dict__["command"] = f"{sys.executable} {command[len(SITE_PYTHON) + 1 :]}"

    def _set_params(self, params: dict[str, Any]) -> None:
        self._job.to_server(dict(params))
        self._add_to_client_apps(dict(params))

    def _server_params(self, global_rounds: int) -> dict[str, Any]:
        """The server config's top-level keys (FLIP's hub rewrites model_id, rounds and sites when it deploys)."""
        return {
            "format_version": 2,
            "model_id": "",
            "global_rounds": global_rounds,
            "min_clients": self.min_clients,
            "participating_clients": None,
            "ignore_result_error": False,
            **self._mode_params(),
            "on_site_lost": "continue",
            "dead_client_grace_period": 120,
            "dead_client_check_lead_time": 30,
            "server": {"task_request_interval": 0.5},
        }

    def _client_params(self) -> dict[str, Any]:
        """The client config's top-level keys (the hub rewrites project_id and query)."""
        return {"format_version": 2, "project_id": self.project_id, "query": self.query, **self._mode_params()}

    def _mode_params(self) -> dict[str, Any]:
        return {} if self.flip_mode is None else {"flip_mode": self.flip_mode}

    def _backend(self, *, server: bool) -> Component:
        args: dict[str, Any] = {"mode": "{flip_mode}"}
        if server:
            args["model_id"] = "{model_id}"
        else:
            if self.dev_dataframe is not None:
                args["dev_dataframe"] = self.dev_dataframe
            if self.dev_images_dir is not None:
                args["dev_images_dir"] = self.dev_images_dir
        return Component("flip", "flip_nvflare.backend.FlipBackend", args)

    def _script_executor_args(self, script: str, script_args: str, tasks: dict[str, str]) -> dict[str, Any]:
        """ClientApiRunner's arguments for ``script`` in this recipe's execution mode."""
        args: dict[str, Any] = {"execution_mode": self.execution_mode}
        if self.execution_mode == "in_process":
            args["task_script_path"] = script
            args["task_script_args"] = script_args
        else:
            command = f"{SITE_PYTHON} -u -m flip_nvflare.executors.script {script}"
            args["command"] = f"{command} {script_args}".strip()
            if self.heart_beat_timeout is not None:
                args["heartbeat_timeout"] = self.heart_beat_timeout
        args.update(tasks)
        return args

    def _client_components(self) -> list[Component]:
        components = [self._backend(server=False)]
        if self.execution_mode == "in_process":
            # the in-process Client API fires analytics locally: forward them to the server's MetricsForwarder
            components.append(
                Component(
                    "analytics_to_server",
                    "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent",
                    {"events_to_convert": ["analytix_log_stats"], "fed_event_prefix": "fed."},
                )
            )
        return components

    @staticmethod
    def _checked_model_id(model_id: object) -> str:
        from flip_nvflare.core.base import check_model_id
        from flip_nvflare.errors import FlipError

        try:
            return check_model_id(model_id)
        except FlipError as exc:
            raise FlipConfigError(f"model_id: {exc}") from None

    @staticmethod
    def _checked_mode(flip_mode: object) -> str:
        try:
            return FlipMode(flip_mode).value
        except ValueError:
            raise FlipConfigError(f"flip_mode must be 'dev' or 'prod', got {flip_mode!r}.") from None

    @staticmethod
    def _resources(gpus: int | None, gpu_mem: float | None) -> dict[str, Any]:
        """NVFlare's ``resource_spec`` for ``gpus`` per site (the same rule as ``job create --gpus``)."""
        from flip_nvflare.jobs.resources import gpu_resource_spec

        if gpus is None:
            if gpu_mem is not None:
                raise FlipConfigError("gpu_mem needs gpus: pass gpus=N too.")
            return {}
        return gpu_resource_spec(None, gpus, gpu_mem)


def _add_app(job: FedJob, app: AppSpec, side: str, raw: list[Component]) -> list[Any]:
    """Add ``app`` to ``job`` through stand-ins; components naming the app's own code go to ``raw``.

    Returns:
        The executors' stand-ins.
    """
    executors: list[Any] = []
    add = job.to_server if side == "server" else job.to_clients
    add(dict(app.params))
    for component in app.components:
        if component.path.startswith("models."):  # the app's own code: not importable where the job is built
            raw.append(component)
            continue
        add(configured(component.path, component.args), id=component.id)
    for workflow in app.workflows:
        job.to_server(configured(workflow.path, workflow.args), id=workflow.id)
    for executor in app.executors:
        stand_in = configured(executor.path, executor.args)
        job.to_clients(stand_in, tasks=list(executor.tasks))
        executors.append(stand_in)
    for filter_type, chains in (
        (FilterType.TASK_DATA, app.task_data_filters),
        (FilterType.TASK_RESULT, app.task_result_filters),
    ):
        for tasks, filters in chains:
            for item in filters:
                add(configured(item.path, item.args), filter_type=filter_type, tasks=list(tasks))
    return executors


def _finish_configs_with(job: FedJob, raw: dict[str, list[Component]]) -> None:
    """Have every config FedJob writes (export or simulator) include the app-code components of ``raw``."""
    config = job.job
    generate: Callable[[str], Any] = config.generate_job_config

    def generate_and_finish(job_root: str) -> Any:
        result = generate(job_root)
        folder = Path(job_root) / job.name
        for app_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for side, name in (("server", "config_fed_server.json"), ("client", "config_fed_client.json")):
                path = app_dir / "config" / name
                if raw[side] and path.is_file():
                    data = json.loads(path.read_text(encoding="utf-8"))
                    known = {c.get("id") for c in data.get("components", [])}
                    extra = [{"id": c.id, "path": c.path, "args": c.args} for c in raw[side] if c.id not in known]
                    data["components"] = extra + list(data.get("components", []))
                    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return result

    config.generate_job_config = generate_and_finish


def _install_site_policy(workspace: Path) -> None:
    """Give a simulator workspace the component allow list a trust configures for FLIP jobs."""
    from flip_nvflare.jobs.allow_list import site_allow_list

    local = workspace / "local"
    resources = local / "resources.json"
    data: dict[str, Any] = {"format_version": 2}
    if resources.is_file():
        data = json.loads(resources.read_text(encoding="utf-8"))
        if "class_allow_list" in data:
            return
    data["class_allow_list"] = site_allow_list()
    local.mkdir(parents=True, exist_ok=True)
    tmp = resources.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, resources)


def preparer_args() -> dict[str, Any]:
    """CohortPreparer for a Client API job: the cohort is checked and saved; the script fetches its images."""
    return {"project_id": "{project_id}", "query": "{query}", "download_images": False}
