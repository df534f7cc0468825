"""The FLIP backend of a Client API script running in its own process (what ``FLIP()`` returns there).

An in-process script gets the backend its ClientApiRunner made current. A script NVFlare runs as
a separate process has no component to ask, so it builds the same backend from what the job wrote
into its client app (never from an environment variable that could turn a prod job into dev):

- the app's ``config/config_fed_client.json`` is found next to the script (``custom/SCRIPT`` ->
  ``config/``) or in the current folder (NVFlare starts the process in the app folder);
- its FlipBackend component (id ``flip``) gives the mode and the dev-data settings, with the
  config's ``{variables}`` resolved from its top-level keys, as NVFlare resolves them;
- whether the site is a provisioned (secure) deployment comes from NVFlare's Client API bootstrap
  file, so dev mode is refused there as it is in the job process;
- the trust's prod settings come from the site's environment, as in the job process.

The backend is built once per process.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from flip_nvflare.core.base import FLIPBase
from flip_nvflare.errors import FlipConfigError

CLIENT_CONFIG = "config_fed_client.json"
_BACKEND_PATH = "flip_nvflare.backend.FlipBackend"
_BOOTSTRAP_ENV = "NVFLARE_CLIENT_API_BOOTSTRAP"
_VARIABLE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")

_lock = threading.Lock()
_built: FLIPBase | None = None


def find_client_config() -> Path | None:
    """The client app config of the running script, if it runs inside a job's app folder."""
    candidates: list[Path] = []
    main = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if main:
        script = Path(main).resolve()
        candidates += [script.parent.parent / "config" / CLIENT_CONFIG]
    candidates.append(Path.cwd() / "config" / CLIENT_CONFIG)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def script_backend() -> FLIPBase | None:
    """The backend of the job this process's script belongs to, or None outside a job's app folder.

    Raises:
        FlipConfigError: The app config names no usable FlipBackend, or the backend cannot be built.
    """
    global _built
    with _lock:
        if _built is None:
            config = find_client_config()
            if config is None:
                return None
            _built = backend_from_client_config(config)
        return _built


def backend_from_client_config(config: Path) -> FLIPBase:
    """Build the backend a client app config describes (see the module docstring).

    Raises:
        FlipConfigError: Unreadable config, no FlipBackend component, no or bad ``flip_mode``, dev
            mode in a secure deployment, or missing prod settings.
    """
    from flip_nvflare.backend import _check_mode, build_backend

    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FlipConfigError(f"The job's client config {config} cannot be read ({type(exc).__name__}).") from None
    args = _backend_args(data, config)
    app_dir = config.parent.parent
    return build_backend(
        _check_mode(args.get("mode")),
        on_server=False,
        secure_mode=_secure_mode(),
        run_dir=app_dir.parent,
        dev_dataframe=_optional_text(args, "dev_dataframe"),
        dev_images_dir=_optional_text(args, "dev_images_dir"),
        dev_output_dir=_optional_text(args, "dev_output_dir"),
        allow_dev_in_secure_mode=args.get("allow_dev_in_secure_mode") is True,
        hub_api=_optional_text(args, "hub_api"),
        http_timeout=args.get("http_timeout") if isinstance(args.get("http_timeout"), (int, float)) else None,
        check_settings=args.get("check_settings") is not False,
    )


def _backend_args(data: object, config: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FlipConfigError(f"The job's client config {config} is not a JSON object.")
    for component in data.get("components") or []:
        if isinstance(component, dict) and component.get("path") == _BACKEND_PATH:
            raw = component.get("args") or {}
            if not isinstance(raw, dict):
                raise FlipConfigError("The FlipBackend component's args in the client config are not a JSON object.")
            return {key: _resolve(value, data) for key, value in raw.items()}
    raise FlipConfigError(
        f"The job's client config has no {_BACKEND_PATH} component, so FLIP() cannot tell dev from prod: add "
        '{"id": "flip", "path": "flip_nvflare.backend.FlipBackend", "args": {"mode": "{flip_mode}"}} to its '
        "components and the top-level key flip_mode."
    )


def _resolve(value: object, data: dict[str, Any]) -> object:
    """A ``"{name}"`` argument replaced by the config's top-level ``name`` (left as is when there is none).

    ``{SITE_NAME}`` inside a string becomes this site's name, as NVFlare resolves it in the job process.
    """
    if isinstance(value, str):
        match = _VARIABLE.match(value.strip())
        if match and match.group(1) in data:
            return data[match.group(1)]
        if "{SITE_NAME}" in value:
            site = _bootstrap().get("site_name")
            if isinstance(site, str) and site and "/" not in site and site not in (".", ".."):
                return value.replace("{SITE_NAME}", site)
    return value


def _optional_text(args: dict[str, Any], key: str) -> str | None:
    value = args.get(key)
    return value if isinstance(value, str) and value.strip() else None


def _bootstrap() -> dict[str, Any]:
    """NVFlare's Client API bootstrap of this process ({} when not started by NVFlare; None values if unreadable)."""
    bootstrap = os.environ.get(_BOOTSTRAP_ENV)
    if not bootstrap:
        return {}
    try:
        data = json.loads(Path(bootstrap).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"unreadable": True}
    return data if isinstance(data, dict) else {"unreadable": True}


def _secure_mode() -> bool:
    """Whether NVFlare started this process for a secure (provisioned) site; True if its bootstrap is unreadable."""
    data = _bootstrap()
    if not data:
        return False
    return data.get("unreadable") is True or data.get("secure_mode") is not False


def forget() -> None:
    """Drop the built backend (tests)."""
    global _built
    with _lock:
        _built = None
