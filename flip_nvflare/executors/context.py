"""Small helpers the client-side components share: where the job's folders are, which backend it uses."""

from __future__ import annotations

from nvflare.apis.fl_context import FLContext

from flip_nvflare.errors import FlipConfigError


def site_name(fl_ctx: FLContext) -> str:
    """This client's name (``site-1``)."""
    return str(fl_ctx.get_identity_name() or "site")


def config_text(name: str, value: object, where: str) -> str:
    """``value`` if it is a non-empty string; else a clear error naming the config key.

    NVFlare turns an undefined ``"{project_id}"`` reference into ``None``, so this is where a job
    config missing its top-level ``project_id`` or ``query`` is caught.
    """
    if isinstance(value, str) and not value.strip():
        raise FlipConfigError(
            f"{where} needs {name!r}, and the job config's top-level {name!r} is empty: FLIP's hub writes it at "
            "deployment; for a local run set any placeholder (a recipe's project_id= / query=, or FLIP's "
            "FLIP_PROJECT_ID / FLIP_QUERY in a tutorial's job.py)."
        )
    if not isinstance(value, str) or value.strip() == "{" + name + "}":
        raise FlipConfigError(
            f"{where} needs {name!r}: add the top-level key {name!r} to config_fed_client.json (the hub "
            f'writes it at deployment; for local runs set any placeholder) and pass "{name}": "{{{name}}}" '
            "in the component's args."
        )
    return value
