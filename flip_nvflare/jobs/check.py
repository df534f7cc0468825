"""Check a FLIP app folder against what its job type needs, reporting every problem at once.

A FLIP app is the folder of user code that becomes a job's ``custom/`` folder. What it must hold:

- standard and fed_opt: ``trainer.py`` (class ``FLIP_TRAINER``), ``validator.py`` (class
  ``FLIP_VALIDATOR``), ``models.py`` (function ``get_model``) and ``config.json`` with
  ``LOCAL_ROUNDS`` and ``GLOBAL_ROUNDS`` (integers in 1..1000; without ``GLOBAL_ROUNDS`` the job runs
  :data:`DEFAULT_GLOBAL_ROUNDS` round, as FLIP's hub fills it in, and :func:`app_defaults` says so);
- evaluation: ``evaluator.py`` (class ``FLIP_EVALUATOR``) and ``config.json`` with ``models``
  (``{"name": {"checkpoint": "file.pt"}, ...}``) and ``evaluation_output``.

The user's code is parsed, never imported or run: checking an app needs neither its
dependencies nor trust in it.

:func:`check_job` checks a job folder (``job create``'s or ``nvflare job create``'s): its app, and
whether its ``min_clients`` leaves sites out of training (:func:`min_clients_warning`).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from flip_nvflare.constants import JobType
from flip_nvflare.jobs.templates import as_job_type

CONFIG_FILE = "config.json"
ROUNDS_RANGE = (1, 1000)
#: Federated rounds of a training app whose ``config.json`` has no ``GLOBAL_ROUNDS`` (FLIP's hub default).
DEFAULT_GLOBAL_ROUNDS = 1
#: Dev-data layout: ``<dev data>/<site>/cohort.csv`` and ``<dev data>/<site>/images/<accession>/``.
DEV_COHORT = "cohort.csv"
DEV_IMAGES = "images"
#: A job folder's app, its configs and its meta (the layout ``job create`` and ``nvflare job create`` write).
JOB_APP = "app"
JOB_SERVER_CONFIG = "config_fed_server.json"
JOB_CLIENT_CONFIG = "config_fed_client.json"
JOB_META = "meta.conf"
#: How many site names a message lists before "and N more".
NAMED_SITES = 8
#: Names a model to evaluate may have (they become file names on the server).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class AppProblem:
    """One thing wrong with an app, and how to fix it.

    Attributes:
        what: What is wrong (``"trainer.py is missing"``).
        fix: What to do about it.
    """

    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}: {self.fix}"


@dataclass(frozen=True)
class RequiredSymbol:
    """A class or function an app file must define at its top level."""

    file: str
    name: str
    kind: str  # "class" or "function"
    purpose: str

    def describe(self) -> str:
        """How to add it, for a problem's ``fix``."""
        if self.kind == "class":
            return (
                f"define class {self.name} in {self.file} ({self.purpose}; an nvflare.apis.executor.Executor "
                "subclass with execute(task_name, shareable, fl_ctx, abort_signal))"
            )
        return f"define function {self.name}() in {self.file} ({self.purpose})"


_TRAINING_SYMBOLS = (
    RequiredSymbol("trainer.py", "FLIP_TRAINER", "class", "local training, one round per 'train' task"),
    RequiredSymbol("validator.py", "FLIP_VALIDATOR", "class", "answers 'validate' tasks with metrics"),
    RequiredSymbol("models.py", "get_model", "function", "returns the torch.nn.Module the server starts from"),
)
_EVALUATION_SYMBOLS = (
    RequiredSymbol("evaluator.py", "FLIP_EVALUATOR", "class", "answers 'evaluate' tasks with metrics per model"),
)

#: What each job type needs from an app.
REQUIRED_SYMBOLS: dict[JobType, tuple[RequiredSymbol, ...]] = {
    JobType.STANDARD: _TRAINING_SYMBOLS,
    JobType.FED_OPT: _TRAINING_SYMBOLS,
    JobType.EVALUATION: _EVALUATION_SYMBOLS,
}

_MODEL = RequiredSymbol("models.py", "get_model", "function", "returns the torch.nn.Module the server starts from")
#: What each job type needs from a Client API app: its script (``flare.init()``, ``flare.receive()``...),
#: and for training the model the server starts from.
CLIENT_API_SCRIPTS: dict[JobType, str] = {
    JobType.STANDARD: "trainer.py",
    JobType.FED_OPT: "trainer.py",
    JobType.EVALUATION: "evaluator.py",
}
#: The checkpoint a Client API evaluation app without ``models`` evaluates (FLIP's convention).
CLIENT_API_CHECKPOINT = "model.pt"


def check_app(
    app_dir: str | Path,
    job_type: str | JobType,
    *,
    checkpoints_dir: str | Path | None = None,
    style: str = "executor",
) -> list[AppProblem]:
    """Every problem that keeps ``app_dir`` from being a FLIP app of ``job_type`` (empty: none).

    Args:
        app_dir: The app folder (what becomes the job's ``custom/``).
        job_type: ``standard``, ``evaluation`` or ``fed_opt``.
        checkpoints_dir: Evaluation: the folder holding the checkpoints named in ``models``
            (default: the app folder).
        style: ``"executor"`` (FLIP_TRAINER... classes) or ``"client_api"`` (scripts: ``trainer.py``
            or ``evaluator.py`` using NVFlare's Client API; a training app also needs ``models.py``
            with ``get_model``; an evaluation app without ``models`` evaluates ``model.pt``).
    """
    kind = as_job_type(job_type)
    app = Path(app_dir)
    if not app.is_dir():
        return [AppProblem(f"{app} is not a folder", "pass the folder holding your FLIP app's files")]
    problems: list[AppProblem] = []
    if style == "client_api":
        problems.extend(_check_script(app, CLIENT_API_SCRIPTS[kind]))
        if kind is not JobType.EVALUATION:
            problems.extend(_check_symbol(app, _MODEL))
    else:
        for symbol in REQUIRED_SYMBOLS[kind]:
            problems.extend(_check_symbol(app, symbol))
    config, config_problems = _read_config(app)
    problems.extend(config_problems)
    if config is not None:
        if kind is JobType.EVALUATION:
            checkpoints = Path(checkpoints_dir) if checkpoints_dir else app
            if style == "client_api" and "models" not in config:
                if not (checkpoints / CLIENT_API_CHECKPOINT).is_file():
                    problems.append(
                        AppProblem(
                            f"no model to evaluate: {CONFIG_FILE} has no models and there is no "
                            f"{CLIENT_API_CHECKPOINT}",
                            f"add {CLIENT_API_CHECKPOINT} (the model's state_dict) or name the models in "
                            f'{CONFIG_FILE}: "models": {{"my_model": {{"checkpoint": "my_model.pt"}}}}',
                        )
                    )
            else:
                problems.extend(_check_evaluation_config(config, checkpoints))
        else:
            problems.extend(_check_training_config(config))
    return problems


def _check_script(app: Path, name: str) -> list[AppProblem]:
    """A Client API script: present and valid Python (it is parsed, never run)."""
    path = app / name
    if not path.is_file():
        return [
            AppProblem(
                f"{name} is missing",
                f"add the Client API script {name} (flare.init(), then flare.receive() / flare.send() in a loop)",
            )
        ]
    try:
        ast.parse(path.read_bytes(), filename=name)
    except SyntaxError as exc:
        return [AppProblem(f"{name} does not parse (line {exc.lineno}: {exc.msg})", "fix the syntax error")]
    except (OSError, ValueError) as exc:
        return [AppProblem(f"{name} cannot be read ({type(exc).__name__})", "make it a readable Python file")]
    return []


def app_defaults(app_dir: str | Path, job_type: str | JobType) -> list[str]:
    """What a job of ``job_type`` fills in for keys the app's ``config.json`` leaves out, one sentence each.

    A training app without ``GLOBAL_ROUNDS`` runs :data:`DEFAULT_GLOBAL_ROUNDS` round, as FLIP's hub
    fills it in when it deploys the app.
    """
    if as_job_type(job_type) is JobType.EVALUATION:
        return []
    config, _ = _read_config(Path(app_dir))
    if config is None or "GLOBAL_ROUNDS" in config:
        return []
    return [
        f"{CONFIG_FILE} has no GLOBAL_ROUNDS: the job runs {DEFAULT_GLOBAL_ROUNDS} federated round, as FLIP's hub "
        f'fills it in (add "GLOBAL_ROUNDS": N for more)'
    ]


def evaluation_checkpoints(app_dir: str | Path) -> dict[str, str]:
    """Model name -> checkpoint file name, from the app's ``config.json`` ``models`` (well-formed entries only)."""
    config, _ = _read_config(Path(app_dir))
    models = config.get("models") if config else None
    if not isinstance(models, dict):
        return {}
    result: dict[str, str] = {}
    for name, entry in models.items():
        checkpoint = entry.get("checkpoint") if isinstance(entry, dict) else None
        if isinstance(checkpoint, str) and _plain_relative(checkpoint):
            result[str(name)] = checkpoint
    return result


# ---------------------------------------------------------------------- python files


def _check_symbol(app: Path, symbol: RequiredSymbol) -> list[AppProblem]:
    path = app / symbol.file
    if not path.is_file():
        return [AppProblem(f"{symbol.file} is missing", f"add {symbol.file} and {symbol.describe()}")]
    try:
        tree = ast.parse(path.read_bytes(), filename=symbol.file)
    except SyntaxError as exc:
        return [
            AppProblem(
                f"{symbol.file} does not parse (line {exc.lineno}: {exc.msg})",
                f"fix the syntax error; it must {symbol.describe()}",
            )
        ]
    except (OSError, ValueError) as exc:
        return [AppProblem(f"{symbol.file} cannot be read ({type(exc).__name__})", "make it a readable Python file")]
    found = _top_level_definitions(tree).get(symbol.name)
    if found is None:
        return [AppProblem(f"{symbol.file} does not define {symbol.name}", symbol.describe())]
    if symbol.kind == "class" and found == "function":
        return [AppProblem(f"{symbol.name} in {symbol.file} is a function, not a class", symbol.describe())]
    return []


def _top_level_definitions(tree: ast.Module) -> dict[str, str]:
    """Names bound at module level: ``class``, ``function``, or ``other`` (assignments, imports)."""
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = "class"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = "function"
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name_node in ast.walk(target):
                    if isinstance(name_node, ast.Name):
                        names[name_node.id] = "other"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = "other"
    return names


# ---------------------------------------------------------------------- config.json


def _read_config(app: Path) -> tuple[dict[str, Any] | None, list[AppProblem]]:
    path = app / CONFIG_FILE
    if not path.is_file():
        return None, [AppProblem(f"{CONFIG_FILE} is missing", f"add {CONFIG_FILE} with the app's hyper-parameters")]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return None, [AppProblem(f"{CONFIG_FILE} is not valid JSON ({exc})", "fix it so it parses as a JSON object")]
    except OSError as exc:
        return None, [AppProblem(f"{CONFIG_FILE} cannot be read ({type(exc).__name__})", "make it readable")]
    if not isinstance(data, dict):
        return None, [AppProblem(f"{CONFIG_FILE} is not a JSON object", 'make it an object, e.g. {"LOCAL_ROUNDS": 1}')]
    return data, []


def _check_training_config(config: dict[str, Any]) -> list[AppProblem]:
    problems: list[AppProblem] = []
    low, high = ROUNDS_RANGE
    for key, meaning in (("LOCAL_ROUNDS", "local epochs per round"), ("GLOBAL_ROUNDS", "federated rounds")):
        value = config.get(key)
        if key == "GLOBAL_ROUNDS" and key not in config:
            continue  # FLIP's hub fills in DEFAULT_GLOBAL_ROUNDS (see app_defaults)
        if key not in config:
            problems.append(
                AppProblem(f"{CONFIG_FILE} has no {key}", f'add "{key}": N ({meaning}, an integer in {low}..{high})')
            )
        elif isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(
                AppProblem(f"{CONFIG_FILE} {key} is {value!r}", f"set it to an integer in {low}..{high} ({meaning})")
            )
    if "IGNORE_RESULT_ERROR" in config and not isinstance(config["IGNORE_RESULT_ERROR"], bool):
        problems.append(
            AppProblem(f"{CONFIG_FILE} IGNORE_RESULT_ERROR is {config['IGNORE_RESULT_ERROR']!r}", "use true or false")
        )
    weights = config.get("AGGREGATION_WEIGHTS")
    if weights is not None and not (
        isinstance(weights, dict) and all(isinstance(k, str) and _number(v) and v >= 0 for k, v in weights.items())
    ):
        problems.append(
            AppProblem(
                f"{CONFIG_FILE} AGGREGATION_WEIGHTS is not a map of client names to weights",
                'use e.g. {"site-1": 1.0, "site-2": 0.5} (numbers >= 0)',
            )
        )
    return problems


def _check_evaluation_config(config: dict[str, Any], checkpoints_dir: Path) -> list[AppProblem]:
    problems: list[AppProblem] = []
    example = '"models": {"my_model": {"checkpoint": "my_model.pt"}}'
    models = config.get("models")
    if "models" not in config:
        problems.append(AppProblem(f"{CONFIG_FILE} has no models", f"add the models to evaluate: {example}"))
    elif not isinstance(models, dict) or not models:
        problems.append(AppProblem(f"{CONFIG_FILE} models is empty or not an object", f"name each model: {example}"))
    else:
        for name, entry in models.items():
            problems.extend(_check_model_entry(str(name), entry, checkpoints_dir))
    output = config.get("evaluation_output")
    if "evaluation_output" not in config:
        problems.append(
            AppProblem(
                f"{CONFIG_FILE} has no evaluation_output",
                'describe what the evaluator reports, e.g. "evaluation_output": {"metrics": ["accuracy"]}',
            )
        )
    elif not isinstance(output, (dict, list)) or not output:
        problems.append(
            AppProblem(
                f"{CONFIG_FILE} evaluation_output is empty or not an object",
                'e.g. "evaluation_output": {"metrics": ["accuracy"]}',
            )
        )
    return problems


def _check_model_entry(name: str, entry: object, checkpoints_dir: Path) -> list[AppProblem]:
    problems: list[AppProblem] = []
    if not MODEL_NAME.fullmatch(name):
        problems.append(
            AppProblem(
                f"model name {name!r} in {CONFIG_FILE} models is not usable",
                "use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        )
    checkpoint = entry.get("checkpoint") if isinstance(entry, dict) else None
    if not isinstance(checkpoint, str) or not checkpoint:
        problems.append(
            AppProblem(
                f"model {name!r} in {CONFIG_FILE} names no checkpoint",
                f'give it a checkpoint file: "{name}": {{"checkpoint": "{name}.pt"}}',
            )
        )
    elif not _plain_relative(checkpoint):
        problems.append(
            AppProblem(
                f"model {name!r}: checkpoint {checkpoint!r} points outside the checkpoints folder",
                "name a file inside the checkpoints folder (a relative path without '..')",
            )
        )
    elif not (checkpoints_dir / checkpoint).is_file():
        problems.append(
            AppProblem(
                f"model {name!r}: checkpoint {checkpoint} not found in {checkpoints_dir}",
                "put the file there, or pass the folder holding it with --checkpoints",
            )
        )
    return problems


def _plain_relative(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not path.is_absolute() and ".." not in path.parts and ":" not in name


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_problems(app_dir: str | Path, job_type: str | JobType, problems: Sequence[AppProblem]) -> str:
    """A report of ``problems`` for people: one line each, with what to add."""
    kind = as_job_type(job_type).value
    if not problems:
        return f"{app_dir}: a valid FLIP {kind} app."
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    lines = [f"{app_dir} is not a valid FLIP {kind} app ({count}):"]
    lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines)


# ---------------------------------------------------------------------- sites and min_clients


def name_sites(sites: Sequence[str]) -> str:
    """``site-1, site-2, ...`` for a message: the first :data:`NAMED_SITES`, then how many more."""
    shown = list(sites[:NAMED_SITES])
    more = len(sites) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def min_clients_warning(min_clients: int, sites: Sequence[str] | int, *, training: bool = True) -> str | None:
    """What is lost when ``min_clients`` is below the number of sites taking part; ``None`` when nothing is.

    Args:
        min_clients: The job's ``min_clients`` (0 or less: every site, nothing lost).
        sites: The sites taking part (names, or only how many).
        training: A training job (each round aggregates the first ``min_clients`` results); else an
            evaluation job (only the preparation stops waiting early).
    """
    count = sites if isinstance(sites, int) else len(sites)
    if min_clients <= 0 or min_clients >= count:
        return None
    which = "" if isinstance(sites, int) else f" ({name_sites(sites)})"
    if training:
        return (
            f"min_clients is {min_clients} but {count} sites take part{which}: each round aggregates only the first "
            f"{min_clients} results that arrive and the other sites' work is discarded, so some sites may never "
            f"train and their trusts' metrics never reach the hub. Set min_clients to {count} to train on every site."
        )
    return (
        f"min_clients is {min_clients} but {count} sites take part{which}: the run goes on once {min_clients} have "
        "prepared their data; each of the others prepares before its first evaluation, or refuses it if it cannot. "
        f"Set min_clients to {count} to wait for every site."
    )


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders the numbers inside names by value (``site-2`` before ``site-10``)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


def dev_data_sites(folder: str | Path) -> tuple[str, ...]:
    """The sites of a dev-data folder: its sub-folders holding a ``cohort.csv``, in natural order."""
    base = Path(folder)
    if not base.is_dir():
        return ()
    names = [p.parent.name for p in base.glob(f"*/{DEV_COHORT}") if p.is_file()]
    return tuple(sorted(names, key=natural_key))


# ---------------------------------------------------------------------- job folders


@dataclass(frozen=True)
class JobCheck:
    """What :func:`check_job` found in a job folder.

    Attributes:
        job_dir: The job folder.
        job_type: Its job type (given, or read from its server workflows).
        problems: What keeps it from running (its app's problems included).
        warnings: What will lose work if it runs as it is (e.g. ``min_clients`` below the sites).
        notes: What could not be checked, and why.
        min_clients: The ``min_clients`` its workflows use, if one is set.
        sites: The sites known to take part (``participating_clients``, or the dev data's site folders).
    """

    job_dir: Path
    job_type: JobType
    problems: list[AppProblem]
    warnings: list[str]
    notes: list[str]
    min_clients: int | None
    sites: tuple[str, ...] | None

    @property
    def app_dir(self) -> Path:
        """The job's app code (what ``check_app`` checked)."""
        return self.job_dir / JOB_APP / "custom"


def is_job_dir(folder: str | Path) -> bool:
    """Whether ``folder`` is an NVFlare job folder of the layout ``job create`` writes."""
    base = Path(folder)
    has_meta = any((base / f"meta{ext}").is_file() for ext in (".conf", ".json", ".yml"))
    return has_meta and (base / JOB_APP / "config" / JOB_SERVER_CONFIG).is_file()


def check_job(job_dir: str | Path, job_type: str | JobType | None = None, *, sites: int | None = None) -> JobCheck:
    """Check a job folder: its app (as :func:`check_app`) and whether ``min_clients`` leaves sites out.

    The sites taking part are ``participating_clients`` when the server config lists them, else the
    site folders of the dev data its client config reads (``job create --dev-data``), else
    ``sites`` (how many will run it); with none of them, the check is left to the job's start.

    Args:
        job_dir: The job folder.
        job_type: The job type; default: read from the server config's workflows.
        sites: How many sites will run the job (overrides what the configs say).
    """
    folder = Path(job_dir)
    server, problems = _read_job_config(folder, JOB_SERVER_CONFIG)
    client, client_problems = _read_job_config(folder, JOB_CLIENT_CONFIG)
    problems += client_problems
    kind = as_job_type(job_type) if job_type is not None else _job_type_of(server or {})
    custom = folder / JOB_APP / "custom"
    checkpoints = _checkpoint_dir_of(server or {}) if kind is JobType.EVALUATION else None
    if kind is JobType.EVALUATION and checkpoints is None:
        checkpoints = custom
    problems += check_app(custom, kind, checkpoints_dir=checkpoints)
    min_clients = _min_clients_of(server or {})
    names = _participants_of(server or {}) or _dev_sites_of(client or {}) or None
    count = sites if sites is not None else (len(names) if names else None)
    warnings: list[str] = []
    notes: list[str] = []
    if min_clients is not None and count is not None:
        if names and min_clients > len(names):
            problems.append(
                AppProblem(
                    f"min_clients is {min_clients} but only {len(names)} sites take part ({name_sites(names)})",
                    f"set min_clients to at most {len(names)}: the run can never start",
                )
            )
        labelled: Sequence[str] | int = names if names and len(names) == count else count
        warning = min_clients_warning(min_clients, labelled, training=kind is not JobType.EVALUATION)
        if warning:
            warnings.append(warning)
    elif count is None:
        notes.append(
            "the sites that take part are not in the job (no participating_clients, no dev data): the server checks "
            "min_clients against the connected sites when the job starts; pass --sites N to check now."
        )
    return JobCheck(folder, kind, problems, warnings, notes, min_clients, tuple(names) if names else None)


def _read_job_config(folder: Path, name: str) -> tuple[dict[str, Any] | None, list[AppProblem]]:
    path = folder / JOB_APP / "config" / name
    if not path.is_file():
        return None, [AppProblem(f"{JOB_APP}/config/{name} is missing", "point at a job folder made by job create")]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, [AppProblem(f"{JOB_APP}/config/{name} cannot be read ({type(exc).__name__})", "fix the file")]
    if not isinstance(data, dict):
        return None, [AppProblem(f"{JOB_APP}/config/{name} is not a JSON object", "fix the file")]
    return data, []


def _items(config: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = config.get(key)
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _job_type_of(server: dict[str, Any]) -> JobType:
    paths = [str(item.get("path", "")) for item in (*_items(server, "workflows"), *_items(server, "components"))]
    if any(p.endswith(("InitEvaluation", "EvaluateModels", "GlobalModelEval")) for p in paths):
        return JobType.EVALUATION
    if any("fedopt" in p.lower() for p in paths):
        return JobType.FED_OPT
    return JobType.STANDARD


def _resolve(server: dict[str, Any], value: object) -> object:
    """A ``"{key}"`` reference replaced by the top-level key's value, as NVFlare does."""
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return server.get(value[1:-1])
    return value


def _min_clients_of(server: dict[str, Any]) -> int | None:
    values = [_resolve(server, w.get("args", {}).get("min_clients")) for w in _items(server, "workflows")]
    numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    if numbers:
        return min(numbers)
    top = server.get("min_clients")
    return top if isinstance(top, int) and not isinstance(top, bool) and top > 0 else None


def _participants_of(server: dict[str, Any]) -> tuple[str, ...]:
    value = server.get("participating_clients")
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(dict.fromkeys(value))
    return ()


def _dev_sites_of(client: dict[str, Any]) -> tuple[str, ...]:
    marker = "/{SITE_NAME}/"
    for component in _items(client, "components"):
        dataframe = component.get("args", {}).get("dev_dataframe") if isinstance(component.get("args"), dict) else None
        if isinstance(dataframe, str) and marker in dataframe:
            return dev_data_sites(dataframe.split(marker, 1)[0])
    return ()


def _checkpoint_dir_of(server: dict[str, Any]) -> Path | None:
    for component in _items(server, "components"):
        args = component.get("args")
        if isinstance(args, dict) and isinstance(args.get("checkpoint_dir"), str) and args["checkpoint_dir"]:
            return Path(args["checkpoint_dir"])
    return None
