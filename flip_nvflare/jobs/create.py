"""Build an NVFlare job folder from a FLIP template and a FLIP app.

The result has the structure ``nvflare job create -j JOB -w job_templates/<name> -sd APP``
produces (``meta.conf``, ``app/config/config_fed_{server,client}.json``, ``app/custom/<app files>``)
and runs in NVFlare's simulator, a POC or a real deployment. Unlike ``nvflare job create`` it
prints no deprecation warnings, never reads or writes the user's NVFlare configuration, checks the
app first, and fills in what the app and the options say:

- ``flip_mode`` (``dev`` or ``prod``) in both configs;
- the server's ``global_rounds`` from the app's ``GLOBAL_ROUNDS`` (1 without it, as FLIP's hub
  fills it in; a note says so) and, when set there,
  ``ignore_result_error`` and the aggregator's weights (as FLIP's hub does);
- optional ``model_id``, ``min_clients``, ``project_id`` and ``query``;
- dev data (``--dev-data DIR``): each site reads ``DIR/<site>/cohort.csv`` and
  ``DIR/<site>/images/<accession_id>/`` (the site name is NVFlare's ``{SITE_NAME}``), and the
  site folders found there are the job's ``participating_clients`` and, unless ``min_clients`` is
  given, its ``min_clients`` (so every site trains every round);
- GPUs (``--gpus N [--gpu-mem GiB]``, else the app's ``config.json`` ``RESOURCE_SPEC`` as FLIP
  reads it): NVFlare's ``resource_spec`` in ``meta.conf``, one entry per dev-data site or NVFlare's
  ``@default`` wildcard (see :mod:`flip_nvflare.jobs.resources`);
- evaluation: the checkpoints stay on the server. They are not copied into ``custom/`` (which is
  deployed to every client); the model locator reads them from the checkpoints folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flip_nvflare.constants import FlipMode, JobType
from flip_nvflare.core.base import check_model_id
from flip_nvflare.errors import FlipConfigError, FlipError, FlipJobError
from flip_nvflare.jobs.check import (
    CONFIG_FILE,
    DEFAULT_GLOBAL_ROUNDS,
    DEV_COHORT,
    DEV_IMAGES,
    JOB_APP,
    JOB_CLIENT_CONFIG,
    JOB_META,
    JOB_SERVER_CONFIG,
    app_defaults,
    check_app,
    dev_data_sites,
    evaluation_checkpoints,
    format_problems,
    min_clients_warning,
    name_sites,
)
from flip_nvflare.jobs.identity import CUSTOM_PROPS, VERSION_PROP, installed_version
from flip_nvflare.jobs.resources import (
    APP_CONFIG_KEY,
    GpuRequest,
    app_gpu_request,
    check_gpu_request,
    gpu_resource_spec,
)
from flip_nvflare.jobs.templates import TEMPLATE_NAMES, as_job_type, template_dir

#: Component ids the templates use (and this module edits).
FLIP_COMPONENT_ID = "flip"
MODEL_LOCATOR_ID = "model_locator"
AGGREGATOR_ID = "aggregator"
#: Files and folders of an app folder that never go into a job.
IGNORED_NAMES = ("__pycache__", "*.pyc", ".git", ".ipynb_checkpoints", ".DS_Store")


@dataclass(frozen=True)
class JobRequest:
    """What job to build.

    Attributes:
        job_type: ``standard``, ``evaluation`` or ``fed_opt``.
        app_dir: The FLIP app folder (becomes the job's ``custom/``).
        job_dir: The job folder to create.
        mode: ``dev`` (local files, a ledger instead of the hub) or ``prod`` (the FLIP services).
        dev_data: Dev mode: folder with one sub-folder per site (``<site>/cohort.csv``,
            ``<site>/images/``).
        checkpoints_dir: Evaluation: folder on the server holding the checkpoints the app's
            ``models`` name (default: the app folder).
        model_id: The model's id on the hub (a UUID); default: the template's.
        project_id: The project's encrypted id for the clients; default: the template's.
        query: The cohort query; default: the template's.
        min_clients: Clients needed to run. Default: with ``dev_data``, the number of site folders
            there (every site trains every round); otherwise the template's (2). In prod, FLIP's
            hub writes its own ``min_clients`` when it deploys the job.
        force: Replace an existing job folder.
        gpus: GPUs each site must give the job (NVFlare's ``resource_spec``); default: the app's
            ``config.json`` ``RESOURCE_SPEC``, else none.
        gpu_mem: GiB of memory each of those GPUs must have (needs ``gpus``, and named sites:
            ``dev_data``).
        style: ``"executor"`` (FLIP_TRAINER... classes) or ``"client_api"`` (Client API scripts; the
            ``*_client_api`` templates, which the recipes export).
    """

    job_type: JobType
    app_dir: Path
    job_dir: Path
    mode: FlipMode = FlipMode.DEV
    dev_data: Path | None = None
    checkpoints_dir: Path | None = None
    model_id: str | None = None
    project_id: str | None = None
    query: str | None = None
    min_clients: int | None = None
    force: bool = False
    gpus: int | None = None
    gpu_mem: float | None = None
    style: str = "executor"


@dataclass(frozen=True)
class CreatedJob:
    """A job folder :func:`build_job` wrote, and what it decided on the way.

    Attributes:
        job_dir: The job folder.
        min_clients: The job's ``min_clients`` (server config and ``meta.conf``).
        sites: The sites that take part (``participating_clients``), when known: the site folders
            of the dev data. ``None`` means every client that connects (prod: FLIP's hub decides).
        notes: What was filled in and why, one sentence each (``job create`` prints them).
        warnings: Settings that will lose work, e.g. ``min_clients`` below the number of sites.
        resource_spec: NVFlare's ``resource_spec`` written into ``meta.conf`` (``{}``: no GPU asked for).
    """

    job_dir: Path
    min_clients: int
    sites: tuple[str, ...] | None
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    resource_spec: dict[str, Any] = field(default_factory=dict)


def create_job(request: JobRequest) -> Path:
    """Create the job folder described by ``request`` and return it (see :func:`build_job`).

    Raises:
        FlipJobError: The app is not valid for the job type (every problem is listed), an option
            is wrong, or the job folder exists (and ``force`` is not set).
    """
    return build_job(request).job_dir


def build_job(request: JobRequest) -> CreatedJob:
    """Create the job folder described by ``request``; also say what was decided and what to watch.

    With dev data, the site folders found there become the job's ``participating_clients`` and,
    unless ``request.min_clients`` is set, its ``min_clients``. A ``min_clients`` below the number
    of sites is allowed but warned about: each round would aggregate only the first results.

    Raises:
        FlipJobError: The app is not valid for the job type (every problem is listed), an option
            is wrong, or the job folder exists (and ``force`` is not set).
    """
    job_type = as_job_type(request.job_type)
    app_dir = Path(request.app_dir).resolve()
    checkpoints = _checkpoints_dir(request, app_dir) if job_type is JobType.EVALUATION else None
    problems = check_app(app_dir, job_type, checkpoints_dir=checkpoints, style=request.style)
    if problems:
        raise FlipJobError(format_problems(app_dir, job_type, problems))
    sites = _check_options(request)
    app_config = _load_json(app_dir / CONFIG_FILE)
    gpu, gpu_origin, resource_spec = _gpu_spec(request, app_config, sites)
    template = template_dir(job_type, request.style)
    job_dir = _prepare_job_dir(Path(request.job_dir), request.force, app_dir)

    server = _load_json(template / JOB_SERVER_CONFIG)
    client = _load_json(template / JOB_CLIENT_CONFIG)
    _fill_server(server, request, job_type, app_config, checkpoints)
    _fill_client(client, request)
    if request.style == "client_api" and job_type is not JobType.EVALUATION:
        _apply_flip_app_keys(server, client, app_config)
    min_clients = _fill_sites(server, request, sites)

    config_dir = job_dir / JOB_APP / "config"
    custom_dir = job_dir / JOB_APP / "custom"
    config_dir.mkdir(parents=True)
    skipped = set(evaluation_checkpoints(app_dir).values()) if job_type is JobType.EVALUATION else set()
    _copy_app(app_dir, custom_dir, skipped)
    _write_json(config_dir / JOB_SERVER_CONFIG, server)
    _write_json(config_dir / JOB_CLIENT_CONFIG, client)
    meta = _load_meta(template)
    meta["name"] = job_dir.name
    meta["min_clients"] = min_clients
    meta.setdefault(CUSTOM_PROPS, {})[VERSION_PROP] = installed_version()
    if resource_spec:
        meta["resource_spec"] = resource_spec
    _write_json(job_dir / JOB_META, meta)
    warning = min_clients_warning(min_clients, sites, training=job_type is not JobType.EVALUATION) if sites else None
    return CreatedJob(
        job_dir=job_dir,
        min_clients=min_clients,
        sites=sites,
        notes=(
            *app_defaults(app_dir, job_type),
            *_site_notes(request, sites, min_clients),
            *_gpu_notes(request, gpu, gpu_origin, sites),
        ),
        warnings=(warning,) if warning else (),
        resource_spec=dict(meta.get("resource_spec") or {}),
    )


# ---------------------------------------------------------------------- options


def _check_options(request: JobRequest) -> tuple[str, ...] | None:
    """Check the options; return the dev data's sites (``None`` without dev data)."""
    problems: list[str] = []
    mode = FlipMode(request.mode)
    sites: tuple[str, ...] | None = None
    if request.dev_data is not None:
        if mode is not FlipMode.DEV:
            problems.append("--dev-data only applies to dev mode; drop it or use --mode dev.")
        else:
            problems.extend(_dev_data_problems(Path(request.dev_data)))
            sites = dev_data_sites(Path(request.dev_data)) or None
    if request.model_id is not None:
        try:
            check_model_id(request.model_id)
        except FlipError as exc:
            problems.append(str(exc))
    if request.min_clients is not None and (
        isinstance(request.min_clients, bool) or not isinstance(request.min_clients, int) or request.min_clients < 1
    ):
        problems.append(f"min_clients must be an integer >= 1, got {request.min_clients!r}.")
    elif request.min_clients is not None and sites and request.min_clients > len(sites):
        problems.append(
            f"--min-clients {request.min_clients} is more than the {len(sites)} site(s) in --dev-data "
            f"({name_sites(sites)}): the run could never start; use at most {len(sites)} or add site folders."
        )
    for name, value in (("project_id", request.project_id), ("query", request.query)):
        if value is not None and not str(value).strip():
            problems.append(f"{name} must not be empty.")
    if problems:
        raise FlipJobError("Cannot create the job:\n" + "\n".join(f"  - {p}" for p in problems))
    return sites


def _gpu_spec(
    request: JobRequest, app_config: dict[str, Any], sites: Sequence[str] | None
) -> tuple[GpuRequest | None, str, dict[str, Any]]:
    """The job's GPU request, where it came from, and its ``resource_spec`` (``{}`` for none).

    ``--gpus`` / ``--gpu-mem`` win over the app's ``config.json`` ``RESOURCE_SPEC`` (as a request
    given at submission wins at FLIP's hub).

    Raises:
        FlipJobError: The request is invalid (every problem is named).
    """
    try:
        if request.gpus is not None:
            gpu: GpuRequest | None = check_gpu_request(request.gpus, request.gpu_mem)
            origin = "--gpus"
        elif request.gpu_mem is not None:
            raise FlipConfigError("--gpu-mem needs --gpus (the number of GPUs per site).")
        else:
            gpu, origin = app_gpu_request(app_config), f"config.json {APP_CONFIG_KEY}"
        spec = gpu_resource_spec(sites, gpu.gpus, gpu.gpu_mem) if gpu is not None else {}
    except FlipConfigError as exc:
        raise FlipJobError(f"Cannot create the job:\n  - {exc}") from None
    return gpu, origin, spec


def _gpu_notes(request: JobRequest, gpu: GpuRequest | None, origin: str, sites: Sequence[str] | None) -> list[str]:
    if gpu is None:
        return []
    where = f"at each of {name_sites(sites)}" if sites else "at every site (NVFlare's @default entry)"
    note = (
        f"resource_spec: {gpu.describe()} {where} (from {origin}); each site's NVFlare resource manager holds "
        "the job until they are free (the simulator does not)."
    )
    if FlipMode(request.mode) is FlipMode.PROD:
        note += (
            " In prod, FLIP's hub writes resource_spec itself: the GPU request given at submission, else "
            f"config.json {APP_CONFIG_KEY}, else its default."
        )
    return [note]


def _dev_data_problems(folder: Path) -> list[str]:
    if not folder.is_dir():
        return [f"--dev-data {folder} is not a folder."]
    sites = [p.parent.name for p in sorted(folder.glob(f"*/{DEV_COHORT}"))]
    if not sites:
        return [
            f"--dev-data {folder} holds no site data: put each site's cohort in <folder>/<site>/{DEV_COHORT} "
            f"and its images in <folder>/<site>/{DEV_IMAGES}/<accession_id>/ (site names as NVFlare's, e.g. site-1)."
        ]
    return [
        f"--dev-data: {folder / site / DEV_IMAGES} is missing (one sub-folder per accession_id)."
        for site in sites
        if not (folder / site / DEV_IMAGES).is_dir()
    ]


def _checkpoints_dir(request: JobRequest, app_dir: Path) -> Path:
    folder = Path(request.checkpoints_dir).resolve() if request.checkpoints_dir is not None else app_dir
    if not folder.is_dir():
        raise FlipJobError(f"The checkpoints folder {folder} does not exist.")
    return folder


# ---------------------------------------------------------------------- configs


def _fill_server(
    server: dict[str, Any],
    request: JobRequest,
    job_type: JobType,
    app_config: dict[str, Any],
    checkpoints: Path | None,
) -> None:
    server["flip_mode"] = FlipMode(request.mode).value
    if request.model_id is not None:
        server["model_id"] = check_model_id(request.model_id)
    if job_type is JobType.EVALUATION:
        _component_args(server, MODEL_LOCATOR_ID)["checkpoint_dir"] = str(checkpoints)
        return
    server["global_rounds"] = int(app_config.get("GLOBAL_ROUNDS", DEFAULT_GLOBAL_ROUNDS))
    if isinstance(app_config.get("IGNORE_RESULT_ERROR"), bool):
        server["ignore_result_error"] = app_config["IGNORE_RESULT_ERROR"]
    weights = app_config.get("AGGREGATION_WEIGHTS")
    if isinstance(weights, dict) and weights:
        _component_args(server, AGGREGATOR_ID)["aggregation_weights"] = dict(weights)


def _fill_client(client: dict[str, Any], request: JobRequest) -> None:
    client["flip_mode"] = FlipMode(request.mode).value
    if request.project_id is not None:
        client["project_id"] = request.project_id
    if request.query is not None:
        client["query"] = request.query
    if request.dev_data is not None:
        root = Path(request.dev_data).resolve()
        args = _component_args(client, FLIP_COMPONENT_ID)
        args["dev_dataframe"] = f"{root}/{{SITE_NAME}}/{DEV_COHORT}"
        args["dev_images_dir"] = f"{root}/{{SITE_NAME}}/{DEV_IMAGES}"


def _apply_flip_app_keys(server: dict[str, Any], client: dict[str, Any], app_config: dict[str, Any]) -> None:
    """What FLIP's hub adds to a Client API training job from the app's config.json, as the recipes' arguments do.

    ``BEST_MODEL_METRIC`` (with ``BEST_MODEL_METRIC_MINIMIZE``) adds NVFlare's best-model selector;
    ``AGGREGATE_ONLY_REGEX`` sends only the matching parameters (before the privacy filter).

    Raises:
        FlipJobError: A key has the wrong type or an unusable value.
    """
    metric = app_config.get("BEST_MODEL_METRIC")
    if metric is not None:
        minimize = app_config.get("BEST_MODEL_METRIC_MINIMIZE", False)
        if not isinstance(metric, str) or not metric.strip() or not isinstance(minimize, bool):
            raise FlipJobError(
                "Cannot create the job:\n  - config.json BEST_MODEL_METRIC must be a metric name and "
                "BEST_MODEL_METRIC_MINIMIZE true or false."
            )
        if int(server.get("global_rounds", 1)) <= 1:
            raise FlipJobError(
                "Cannot create the job:\n  - config.json BEST_MODEL_METRIC needs GLOBAL_ROUNDS > 1 (the best model "
                "is chosen among the rounds' global models, and NVFlare's selector skips the first)."
            )
        selector: dict[str, Any] = {"key_metric": metric}
        if minimize:
            selector["negate_key_metric"] = True
        server["components"].append(
            {
                "id": "model_selector",
                "path": "nvflare.app_common.widgets.intime_model_selector.IntimeModelSelector",
                "args": selector,
            }
        )
    regex = app_config.get("AGGREGATE_ONLY_REGEX")
    if regex not in (None, ""):
        import re

        try:
            re.compile(str(regex))
        except re.error as exc:
            raise FlipJobError(f"Cannot create the job:\n  - config.json AGGREGATE_ONLY_REGEX: {exc}.") from None
        for chain in client.get("task_result_filters", []):
            if "train" in chain.get("tasks", []):
                chain["filters"].insert(
                    0,
                    {
                        "path": "nvflare.app_common.filters.exclude_vars.ExcludeVars",
                        "args": {"exclude_vars": f"^(?!.*(?:{regex}))"},
                    },
                )


def _fill_sites(server: dict[str, Any], request: JobRequest, sites: Sequence[str] | None) -> int:
    """Set ``participating_clients`` and ``min_clients`` from the dev sites and options; return ``min_clients``."""
    if sites:
        server["participating_clients"] = list(sites)
    if request.min_clients is not None:
        server["min_clients"] = request.min_clients
    elif sites:
        server["min_clients"] = len(sites)
    value = server.get("min_clients")
    if isinstance(value, bool) or not isinstance(value, int):
        raise FlipConfigError(f"The job template's min_clients is {value!r}, not an integer; reinstall flip-nvflare.")
    return value


def _site_notes(request: JobRequest, sites: Sequence[str] | None, min_clients: int) -> list[str]:
    """Where ``min_clients`` and the participating sites came from, for people."""
    mode = FlipMode(request.mode)
    if sites:
        where = f"the {len(sites)} site folder(s) in {Path(request.dev_data or '.').resolve()}"
        taking_part = f"participating_clients: {name_sites(sites)} (from {where})"
        if request.min_clients is None:
            return [
                f"{taking_part}; min_clients {min_clients}, one per site, so every site trains every round "
                "(--min-clients overrides it). Run the simulator with these names, e.g. -n "
                f"{len(sites)} for site-1..site-{len(sites)}."
            ]
        return [f"{taking_part}; min_clients {min_clients} (from --min-clients)."]
    origin = "from --min-clients" if request.min_clients is not None else "the template's"
    if mode is FlipMode.PROD:
        return [
            f"min_clients {min_clients} ({origin}). In prod, FLIP's hub writes min_clients and "
            "participating_clients (top-level keys) when it deploys the job."
        ]
    return [
        f"min_clients {min_clients} ({origin}); every client that connects takes part. Run exactly "
        f"{min_clients} client(s), or set --min-clients to the number you run: a round aggregates only the "
        "first min_clients results."
    ]


def _component_args(config: dict[str, Any], component_id: str) -> dict[str, Any]:
    for component in config.get("components", []):
        if isinstance(component, dict) and component.get("id") == component_id:
            args: dict[str, Any] = component.setdefault("args", {})
            return args
    raise FlipConfigError(f"The job template has no component {component_id!r}; reinstall flip-nvflare.")


# ---------------------------------------------------------------------- files


def _prepare_job_dir(job_dir: Path, force: bool, app_dir: Path) -> Path:
    job_dir = job_dir.resolve()
    if job_dir == app_dir or app_dir.is_relative_to(job_dir):
        raise FlipJobError(f"The job folder {job_dir} must not contain the app folder {app_dir}.")
    if job_dir.exists() and any(job_dir.iterdir()):
        if not force:
            raise FlipJobError(f"The job folder {job_dir} exists and is not empty; choose another or pass --force.")
        if not _looks_like_job(job_dir):
            raise FlipJobError(
                f"--force refused: {job_dir} does not look like an NVFlare job folder (no meta.conf or meta.json); "
                "remove it yourself if it should go."
            )
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    return job_dir


def _looks_like_job(folder: Path) -> bool:
    return any((folder / f"meta{ext}").is_file() for ext in (".conf", ".json", ".yml"))


def _copy_app(app_dir: Path, custom_dir: Path, skipped: Iterable[str]) -> None:
    skipped_files = {(app_dir / name).resolve() for name in skipped}
    ignore_names = shutil.ignore_patterns(*IGNORED_NAMES)

    def ignore(folder: str, names: list[str]) -> set[str]:
        ignored = set(ignore_names(folder, names))
        ignored.update(name for name in names if (Path(folder) / name).resolve() in skipped_files)
        return ignored

    shutil.copytree(app_dir, custom_dir, ignore=ignore)


def _load_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise FlipConfigError(f"{path} is not a JSON object.")
    return data


def _load_meta(template: Path) -> dict[str, Any]:
    from pyhocon import ConfigFactory  # NVFlare's own config reader

    meta = ConfigFactory.parse_file(str(template / JOB_META))
    plain: dict[str, Any] = json.loads(json.dumps(meta.as_plain_ordered_dict()))
    return plain


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def template_name(job_type: str | JobType) -> str:
    """The template folder name of ``job_type`` (``flip_standard``...)."""
    return TEMPLATE_NAMES[as_job_type(job_type)]
