"""FlipBackend: the one component that decides dev or prod and builds the job's FLIP backend.

Job configs carry a top-level ``"flip_mode": "dev" | "prod"`` and a component
``{"id": "flip", "path": "flip_nvflare.components.FlipBackend", "args": {"mode": "{flip_mode}"}}``.
Every other FLIP component takes ``flip_id`` (default ``"flip"``) and asks the engine for it
through :func:`get_flip_backend`.

Prod secrets never come from the config: they are read from the environment. A prod job whose
settings are incomplete fails at START_RUN with a message naming each missing variable. Dev mode
fails closed in a provisioned (secure) deployment unless ``allow_dev_in_secure_mode`` is set.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.server_engine_spec import ServerEngineSpec

from flip_nvflare.constants import DEFAULT_FLIP_ID, FlipMode
from flip_nvflare.core.base import FLIPBase
from flip_nvflare.core.settings import (
    SettingsReader,
    read_hub_settings,
    read_results_settings,
    read_trust_settings,
)
from flip_nvflare.core.standard import FLIPStandardDev, FLIPStandardProd
from flip_nvflare.errors import FlipConfigError, FlipError


class FlipBackend(FLComponent):
    """Builds the FLIP backend (dev or prod) of a job from its ``flip_mode``.

    Args:
        mode: ``"dev"`` or ``"prod"``, normally ``"{flip_mode}"`` (the job config's top-level key).
        dev_dataframe: Dev mode: the cohort CSV (else ``DEV_DATAFRAME``).
        dev_images_dir: Dev mode: one folder per accession (else ``DEV_IMAGES_DIR``).
        dev_output_dir: Dev mode: where the hub ledger and results zips go (else
            ``DEV_OUTPUT_DIR``, else ``flip_dev/`` in the job's run folder).
        allow_dev_in_secure_mode: Let dev mode run in a provisioned (secure) deployment.
        hub_api: ``"h1"`` or ``"h2"`` (else ``FLIP_HUB_API``; default ``h1``). Not a secret.
        http_timeout: Seconds per HTTP attempt (else ``FLIP_HTTP_TIMEOUT``; default 30).
        check_settings: Check prod settings for this site's role at START_RUN.
    """

    def __init__(
        self,
        mode: str = "",
        dev_dataframe: str | None = None,
        dev_images_dir: str | None = None,
        dev_output_dir: str | None = None,
        allow_dev_in_secure_mode: bool = False,
        hub_api: str | None = None,
        http_timeout: float | None = None,
        check_settings: bool = True,
    ) -> None:
        super().__init__()
        self._mode_arg = mode
        self._dev_dataframe = dev_dataframe
        self._dev_images_dir = dev_images_dir
        self._dev_output_dir = dev_output_dir
        self._allow_dev_in_secure_mode = allow_dev_in_secure_mode
        self._hub_api = hub_api
        self._http_timeout = http_timeout
        self._check_settings = check_settings
        self._backend: FLIPBase | None = None
        self._lock = threading.Lock()

    @property
    def mode(self) -> FlipMode:
        """The checked mode; a clear error if the config's ``flip_mode`` is missing or wrong."""
        raw = self._mode_arg
        if raw is None or str(raw).strip() == "" or str(raw).strip() == "{flip_mode}":
            raise FlipConfigError(
                'The job config sets no flip_mode: add the top-level key "flip_mode": "dev" or "prod" '
                'to config_fed_server.json and config_fed_client.json, and pass "mode": "{flip_mode}" '
                "to the FlipBackend component."
            )
        try:
            return FlipMode(str(raw).strip().lower())
        except ValueError:
            raise FlipConfigError(f"flip_mode must be 'dev' or 'prod', got {raw!r}.") from None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Build and check the backend at START_RUN; close it at END_RUN."""
        if event_type == EventType.START_RUN:
            try:
                self.get(fl_ctx)
            except FlipError as exc:
                self.log_error(fl_ctx, f"FLIP backend not usable: {exc}")
                self.system_panic(f"FLIP backend not usable: {exc}", fl_ctx)
        elif event_type == EventType.END_RUN:
            with self._lock:
                backend = self._backend
            if backend is not None:
                backend.close()

    def get(self, fl_ctx: FLContext) -> FLIPBase:
        """The job's backend, built (and its settings checked) on first use."""
        with self._lock:
            if self._backend is None:
                self._backend = self._build(fl_ctx)
                from flip_nvflare.client import register_job_backend

                register_job_backend(self._backend)
            return self._backend

    def _build(self, fl_ctx: FLContext) -> FLIPBase:
        mode = self.mode
        on_server = isinstance(fl_ctx.get_engine(), ServerEngineSpec)
        if mode is FlipMode.DEV:
            if fl_ctx.get_prop(FLContextKey.SECURE_MODE, False) and not self._allow_dev_in_secure_mode:
                raise FlipConfigError(
                    "flip_mode is 'dev' but this is a provisioned (secure) deployment: dev mode would "
                    "never report to the hub. Set flip_mode to 'prod', or pass "
                    '"allow_dev_in_secure_mode": true to the FlipBackend component if this is intended.'
                )
            output_dir = self._dev_output_dir or _run_dir(fl_ctx) / "flip_dev"
            return FLIPStandardDev(
                dataframe_csv=self._dev_dataframe, images_dir=self._dev_images_dir, output_dir=output_dir
            )
        backend = FLIPStandardProd(hub_api=self._hub_api, http_timeout=self._http_timeout)
        if self._check_settings:
            _check_prod_settings(on_server, self._hub_api, self._http_timeout)
        self.log_info(fl_ctx, f"FLIP backend: prod ({'server' if on_server else 'client'} settings checked)")
        return backend


def _check_prod_settings(on_server: bool, hub_api: str | None, http_timeout: float | None) -> None:
    """Read every setting this role needs now, reporting all missing ones in one error."""
    reader = SettingsReader({"FLIP_HUB_API": hub_api, "FLIP_HTTP_TIMEOUT": http_timeout})
    problems: list[str] = []
    checks: list[Any]
    if on_server:
        checks = [lambda: read_hub_settings(reader), lambda: read_results_settings(reader)]
    else:
        checks = [
            lambda: read_trust_settings(reader, service="data-access-api"),
            lambda: read_trust_settings(reader, service="imaging-api"),
        ]
    for check in checks:
        try:
            check()
        except FlipConfigError as exc:
            if str(exc) not in problems:
                problems.append(str(exc))
    if problems:
        raise FlipConfigError(" ".join(problems))


def _run_dir(fl_ctx: FLContext) -> Path:
    engine = fl_ctx.get_engine()
    workspace = engine.get_workspace()
    return Path(workspace.get_run_dir(fl_ctx.get_job_id()))


def get_flip_backend(fl_ctx: FLContext, flip_id: str = DEFAULT_FLIP_ID) -> FLIPBase:
    """Return the job's FLIP backend from the component ``flip_id``.

    Raises:
        FlipConfigError: The job has no such component, or it is not a FlipBackend.
    """
    component = fl_ctx.get_engine().get_component(flip_id)
    if component is None:
        raise FlipConfigError(
            f"This job has no component with id {flip_id!r}: add "
            '{"id": "flip", "path": "flip_nvflare.components.FlipBackend", '
            '"args": {"mode": "{flip_mode}"}} to the config\'s components.'
        )
    if not isinstance(component, FlipBackend):
        raise FlipConfigError(
            f"Component {flip_id!r} is a {type(component).__name__}, not flip_nvflare.components.FlipBackend."
        )
    return component.get(fl_ctx)
