"""Small helpers the client-side components share: where the job's folders are, which backend it uses."""

from __future__ import annotations

from pathlib import Path

from nvflare.apis.fl_context import FLContext

from flip_nvflare.core.base import FLIPBase
from flip_nvflare.core.dev import FLIPStandardDev
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.errors import FlipConfigError


def job_run_dir(fl_ctx: FLContext) -> Path:
    """The client's run folder of the current job (``<workspace>/<job_id>``)."""
    workspace = fl_ctx.get_engine().get_workspace()
    return Path(workspace.get_run_dir(fl_ctx.get_job_id()))


def job_custom_dir(fl_ctx: FLContext) -> Path | None:
    """The job app's ``custom/`` folder on this client, if the engine can tell."""
    try:
        workspace = fl_ctx.get_engine().get_workspace()
        return Path(workspace.get_app_custom_dir(fl_ctx.get_job_id()))
    except Exception:
        return None


def site_name(fl_ctx: FLContext) -> str:
    """This client's name (``site-1``)."""
    return str(fl_ctx.get_identity_name() or "site")


def backend_mode(backend: FLIPBase) -> str:
    """``dev``, ``prod`` or ``custom`` (another FLIPBase implementation)."""
    if isinstance(backend, FLIPStandardDev):
        return "dev"
    if isinstance(backend, FLIPStandardProd):
        return "prod"
    return "custom"


def net_dir(backend: FLIPBase) -> Path | None:
    """``<IMAGES_DIR>/<NET_ID>`` of a prod backend, or ``None`` if unknown (downloads then cannot be tracked)."""
    if not isinstance(backend, FLIPStandardProd):
        return None
    try:
        settings = backend.trust_settings("imaging-api")
    except FlipConfigError:
        return None
    if settings.images_dir is None or not settings.net_id:
        return None
    return settings.images_dir / settings.net_id


def config_text(name: str, value: object, where: str) -> str:
    """``value`` if it is a non-empty string; else a clear error naming the config key.

    NVFlare turns an undefined ``"{project_id}"`` reference into ``None``, so this is where a job
    config missing its top-level ``project_id`` or ``query`` is caught.
    """
    if not isinstance(value, str) or not value.strip() or value.strip() == "{" + name + "}":
        raise FlipConfigError(
            f"{where} needs {name!r}: add the top-level key {name!r} to config_fed_client.json (the hub "
            f'writes it at deployment; for local runs set any placeholder) and pass "{name}": "{{{name}}}" '
            "in the component's args."
        )
    return value
