"""Who a job is: its model id on the hub, and the flip-nvflare version it was built with.

Both travel in the job itself, so a job built by a recipe needs neither at build time:

- **model id**, resolved when the job starts: a UUID the hub wrote into the server config
  (``"model_id"``), else ``FLIP_MODEL_ID`` in the app's ``custom/config.json``, else
  ``meta.json``'s ``custom_props.model_id`` (where FLIP's recipes and FLIP's hub put it). A prod
  job with none of them fails at START_RUN; a dev job uses :data:`DEV_MODEL_ID`.
- **version**: ``meta.json``'s ``custom_props.flip_nvflare_version``, written by the recipes and
  ``job create``. A site whose installed flip-nvflare cannot run jobs of that version refuses the
  job at START_RUN (see :func:`compatible`).

Nothing here imports NVFlare.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flip_nvflare.constants import FlipMode
from flip_nvflare.core.base import check_model_id
from flip_nvflare.errors import FlipConfigError, FlipError

#: The meta.json key holding FLIP's job properties (FLIP's recipes and hub use the same).
CUSTOM_PROPS = "custom_props"
#: Key of the model id inside ``custom_props``.
MODEL_ID_PROP = "model_id"
#: Key of the flip-nvflare version the job was built with, inside ``custom_props``.
VERSION_PROP = "flip_nvflare_version"
#: Key of the model id in the app's ``custom/config.json``.
CONFIG_MODEL_ID = "FLIP_MODEL_ID"
#: The model id of dev jobs that name none: all zeros, so nobody mistakes it for a hub's.
DEV_MODEL_ID = "00000000-0000-0000-0000-000000000000"

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.\d+)?(?:[.+-][0-9A-Za-z.+-]*)?")


def installed_version() -> str:
    """The installed flip-nvflare version (``0+unknown`` when the package metadata is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flip-nvflare")
    except PackageNotFoundError:
        return "0+unknown"


def compatible(built_with: str, installed: str) -> bool:
    """Whether a site with flip-nvflare ``installed`` can run a job built with ``built_with``.

    The rule is semantic versioning's: the same major version, and for 0.x releases (where a
    minor release may change job configs) the same minor version too. Patch releases never matter.
    """
    built, have = _VERSION.fullmatch(built_with), _VERSION.fullmatch(installed)
    if built is None or have is None:
        return False
    if built.group(1) != have.group(1):
        return False
    return built.group(1) != "0" or built.group(2) == have.group(2)


def custom_props(job_meta: object) -> Mapping[str, Any]:
    """``custom_props`` of a job's meta (empty when absent or not a mapping)."""
    if isinstance(job_meta, Mapping):
        props = job_meta.get(CUSTOM_PROPS)
        if isinstance(props, Mapping):
            return props
    return {}


def check_job_version(job_meta: object, installed: str | None = None) -> None:
    """Refuse a job built with a flip-nvflare version this site cannot run.

    A job that records no version (built by hand, or by ``nvflare job create``) is accepted.

    Raises:
        FlipConfigError: The recorded version is malformed or incompatible; the message names both
            versions and what to do.
    """
    recorded = custom_props(job_meta).get(VERSION_PROP)
    if recorded is None:
        return
    have = installed or installed_version()
    if not isinstance(recorded, str) or _VERSION.fullmatch(recorded) is None:
        raise FlipConfigError(
            f"meta.json custom_props.{VERSION_PROP} must be a version such as '0.1.0', got {str(recorded)[:40]!r}: "
            "rebuild the job with flip-nvflare."
        )
    if not compatible(recorded, have):
        raise FlipConfigError(
            f"This job was built with flip-nvflare {recorded}, and this site runs flip-nvflare {have}, which "
            "cannot run it (the major version, and for 0.x the minor version, must match). Rebuild the job "
            f"with flip-nvflare {have}, or install a matching flip-nvflare at every site."
        )


def resolve_model_id(*, custom_dir: Path | None, job_meta: object, mode: FlipMode) -> str:
    """The job's model id when the server config names none (see the module docstring).

    Raises:
        FlipConfigError: A place that names an id holds no UUID, or (prod) no place names one.
    """
    config = custom_dir / "config.json" if custom_dir is not None else None
    if config is not None and config.is_file():
        try:
            app_config = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FlipConfigError(f"custom/config.json cannot be read as JSON ({type(exc).__name__}).") from None
        if isinstance(app_config, dict) and app_config.get(CONFIG_MODEL_ID) not in (None, ""):
            return _checked(app_config[CONFIG_MODEL_ID], f"custom/config.json {CONFIG_MODEL_ID}")
    from_meta = custom_props(job_meta).get(MODEL_ID_PROP)
    if from_meta not in (None, ""):
        return _checked(from_meta, f"meta.json custom_props.{MODEL_ID_PROP}")
    if mode is FlipMode.DEV:
        return DEV_MODEL_ID
    raise FlipConfigError(
        'This prod job names no model id: the hub writes it into config_fed_server.json ("model_id") when it '
        f"deploys the job; for a job deployed another way, set {CONFIG_MODEL_ID} in the app's config.json or "
        f"custom_props.{MODEL_ID_PROP} in meta.json (the recipes' model_id= argument writes the latter)."
    )


def _checked(value: object, where: str) -> str:
    try:
        return check_model_id(value)
    except FlipError as exc:
        raise FlipConfigError(f"{where} is not usable: {exc}") from None
