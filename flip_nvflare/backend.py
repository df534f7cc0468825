"""FlipBackend: the one component that decides dev or prod and builds the job's FLIP backend.

Job configs carry a top-level ``"flip_mode": "dev" | "prod"`` and a component
``{"id": "flip", "path": "flip_nvflare.backend.FlipBackend", "args": {"mode": "{flip_mode}"}}``
(on the server also ``"model_id": "{model_id}"``). Every other FLIP component takes ``flip_id``
(default ``"flip"``) and asks the engine for it through :func:`get_flip_backend` or, for the
server's hub widgets, :func:`get_hub_session`.

Prod secrets never come from the config: they are read from the environment. A prod job whose
settings are incomplete fails at START_RUN with a message naming each missing variable. Dev mode
fails closed in a provisioned (secure) deployment unless ``allow_dev_in_secure_mode`` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.server_engine_spec import ServerEngineSpec

from flip_nvflare.args import json_bool, positive_number
from flip_nvflare.components.session import HubSession, SessionSettings, TrustNames
from flip_nvflare.constants import DEFAULT_FLIP_ID, FlipEvents, FlipMode
from flip_nvflare.core.base import FLIPBase, check_model_id
from flip_nvflare.core.dev import FLIPStandardDev
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.core.settings import (
    SettingsReader,
    read_hub_settings,
    read_results_settings,
    read_trust_settings,
)
from flip_nvflare.errors import FlipConfigError, FlipError
from flip_nvflare.executors.sanitize import sanitize_hub_text
from flip_nvflare.jobs.identity import check_job_version, resolve_model_id
from flip_nvflare.workspace import job_custom_dir, job_run_dir

_SESSION_HOLDER = "FlipBackend"
T = TypeVar("T")


def _check_mode(raw: object) -> FlipMode:
    if raw is None or str(raw).strip() in ("", "{flip_mode}"):
        raise FlipConfigError(
            'The job config sets no flip_mode: add the top-level key "flip_mode": "dev" or "prod" '
            "to config_fed_server.json and config_fed_client.json, and pass "
            '"mode": "{flip_mode}" to the FlipBackend component.'
        )
    try:
        return FlipMode(str(raw).strip().lower())
    except ValueError:
        raise FlipConfigError(f"flip_mode must be 'dev' or 'prod', got {raw!r}.") from None


class FlipBackend(FLComponent):
    """Builds the FLIP backend (dev or prod) of a job from its ``flip_mode``.

    On the server it also builds the hub session every hub widget shares (see :meth:`session`).

    Args:
        mode: ``"dev"`` or ``"prod"``, normally ``"{flip_mode}"`` (the job config's top-level key).
        model_id: Server only: the model's id on the hub, normally ``"{model_id}"``. Needed by
            every hub widget (StatusReporter, MetricsForwarder...).
        dev_dataframe: Dev mode: the cohort CSV (else ``DEV_DATAFRAME``).
        dev_images_dir: Dev mode: one folder per accession (else ``DEV_IMAGES_DIR``).
        dev_output_dir: Dev mode: where the hub ledger and results zips go (else
            ``DEV_OUTPUT_DIR``, else ``flip_dev/`` in the job's run folder).
        allow_dev_in_secure_mode: Let dev mode run in a provisioned (secure) deployment.
        hub_api: ``"h1"`` or ``"h2"`` (else ``FLIP_HUB_API``; default ``h1``). Not a secret.
        http_timeout: Seconds per HTTP attempt (else ``FLIP_HTTP_TIMEOUT``; default 30).
        check_settings: Check prod settings for this site's role at START_RUN.
        trust_names: Server: ``{client_name: trust_name}`` overrides of the default rule
            (``site-N`` -> ``Trust_N``; other names unchanged).
        hub_concurrency: Server: metrics and logs sent to the hub at once (default 8).
        max_pending_metrics: Server: metrics and progress events allowed to wait for the hub;
            beyond that new ones are dropped and counted (default 50,000).
        drain_timeout: Server: seconds allowed at the end of the run to deliver what is still
            queued for the hub (default 60).
    """

    def __init__(
        self,
        mode: str = "",
        model_id: str | None = None,
        dev_dataframe: str | None = None,
        dev_images_dir: str | None = None,
        dev_output_dir: str | None = None,
        allow_dev_in_secure_mode: bool = False,
        hub_api: str | None = None,
        http_timeout: float | None = None,
        check_settings: bool = True,
        trust_names: Mapping[str, str] | None = None,
        hub_concurrency: int = 8,
        max_pending_metrics: int = 50_000,
        drain_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        self._mode = _check_mode(mode)
        self._model_id_arg = model_id
        if model_id is not None and str(model_id).strip() not in ("", "{model_id}"):
            self._checked_model_id()  # a malformed id fails when the job is built, not at the first status
        self._dev_dataframe = dev_dataframe
        self._dev_images_dir = dev_images_dir
        self._dev_output_dir = dev_output_dir
        self._allow_dev_in_secure_mode = json_bool("FlipBackend", "allow_dev_in_secure_mode", allow_dev_in_secure_mode)
        self._hub_api = hub_api
        self._http_timeout = http_timeout
        self._check_settings = json_bool("FlipBackend", "check_settings", check_settings)
        self._trust_names = TrustNames(trust_names)
        self._session_settings = SessionSettings(
            concurrency=int(positive_number("FlipBackend", "hub_concurrency", hub_concurrency)),
            max_pending=int(positive_number("FlipBackend", "max_pending_metrics", max_pending_metrics)),
            drain_timeout=positive_number("FlipBackend", "drain_timeout", drain_timeout),
        )
        if hub_api is not None:
            SettingsReader({"FLIP_HUB_API": hub_api}).hub_api()  # raises a clear error if not h1/h2
        self._backend: FLIPBase | None = None
        self._session: HubSession | None = None
        self._failure: FlipError | None = None
        self._lock = threading.RLock()

    @property
    def mode(self) -> FlipMode:
        """The job's mode (checked when the component was built)."""
        return self._mode

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Build and check the backend at START_RUN, note failures, close at END_RUN."""
        if event_type == EventType.START_RUN:
            try:
                self._once(fl_ctx, lambda: check_job_version(fl_ctx.get_prop(FLContextKey.JOB_META)))
                self.get(fl_ctx)
                if _on_server(fl_ctx) and (self._model_id_arg is not None or _has_hub_widgets(fl_ctx)):
                    self.session(fl_ctx)
            except FlipError:
                pass  # reported (and the run stopped) where it was raised
        elif event_type in (EventType.FATAL_SYSTEM_ERROR, FlipEvents.PREPARATION_FAILED):
            session = self._current_session()
            if session is not None:
                reason = fl_ctx.get_prop(FLContextKey.EVENT_DATA, None)
                default = "a client's preparation failed" if event_type == FlipEvents.PREPARATION_FAILED else ""
                text = reason if isinstance(reason, str) and reason else default or "fatal error"
                session.journal.mark_failed(sanitize_hub_text(text))
        elif event_type == EventType.END_RUN:
            session = self._current_session()
            if session is not None:
                session.release(_SESSION_HOLDER)
            else:
                with self._lock:
                    backend = self._backend
                if backend is not None:
                    backend.close()

    def get(self, fl_ctx: FLContext) -> FLIPBase:
        """The job's backend, built (and its settings checked) on first use.

        Raises:
            FlipError: The backend cannot be built; the first time, the run is also stopped
                (FATAL_SYSTEM_ERROR) with the reason.
        """
        with self._lock:
            if self._backend is None:
                self._backend = self._once(fl_ctx, lambda: self._build(fl_ctx))
            return self._backend

    def session(self, fl_ctx: FLContext) -> HubSession:
        """The server's hub session (backend, ordered background delivery, run journal), built once.

        Raises:
            FlipError: Not on the server, no valid ``model_id``, or the backend is unusable; the
                first time, the run is also stopped with the reason.
        """
        with self._lock:
            if self._session is None:
                backend = self.get(fl_ctx)
                self._session = self._once(fl_ctx, lambda: self._new_session(fl_ctx, backend))
                self._session.hold(_SESSION_HOLDER)
            return self._session

    def _new_session(self, fl_ctx: FLContext, backend: FLIPBase) -> HubSession:
        if not _on_server(fl_ctx):
            raise FlipConfigError(
                "FLIP hub widgets (StatusReporter, MetricsForwarder, ...) run on the server only: "
                "remove them from config_fed_client.json."
            )
        return HubSession(
            backend,
            model_id=self._checked_model_id(fl_ctx),
            trust_names=self._trust_names,
            hub_api=backend.hub_api,
            settings=self._session_settings,
            flip_mode=self._mode.value,
        )

    def _once(self, fl_ctx: FLContext, build: Callable[[], T]) -> T:
        """Run ``build``; on a FLIP error, report it and stop the run the first time, re-raise it always."""
        if self._failure is not None:
            raise self._failure
        try:
            return build()
        except FlipError as exc:
            self._failure = exc
            self.log_error(fl_ctx, f"FLIP backend not usable: {exc}", fire_event=False)
            self.system_panic(f"FLIP backend not usable: {exc}", fl_ctx)
            raise

    def _current_session(self) -> HubSession | None:
        with self._lock:
            return self._session

    def _checked_model_id(self, fl_ctx: FLContext | None = None) -> str:
        raw = self._model_id_arg
        if raw is None or str(raw).strip() in ("", "{model_id}"):
            if fl_ctx is None:
                raise FlipConfigError(
                    'The FlipBackend component has no model_id: add the top-level key "model_id" (the hub writes it '
                    'when it deploys the job) to config_fed_server.json and pass "model_id": "{model_id}" to the '
                    "FlipBackend component."
                )
            return resolve_model_id(
                custom_dir=job_custom_dir(fl_ctx), job_meta=fl_ctx.get_prop(FLContextKey.JOB_META), mode=self._mode
            )
        try:
            return check_model_id(raw)
        except FlipError as exc:
            raise FlipConfigError(f"FlipBackend model_id is not usable: {exc}") from None

    def _build(self, fl_ctx: FLContext) -> FLIPBase:
        on_server = _on_server(fl_ctx)
        backend = build_backend(
            self._mode,
            on_server=on_server,
            secure_mode=bool(fl_ctx.get_prop(FLContextKey.SECURE_MODE, False)),
            run_dir=job_run_dir(fl_ctx),
            dev_dataframe=self._dev_dataframe,
            dev_images_dir=self._dev_images_dir,
            dev_output_dir=self._dev_output_dir,
            allow_dev_in_secure_mode=self._allow_dev_in_secure_mode,
            hub_api=self._hub_api,
            http_timeout=self._http_timeout,
            check_settings=self._check_settings,
        )
        if isinstance(backend, FLIPStandardDev):
            output_dir = self._dev_output_dir or job_run_dir(fl_ctx) / "flip_dev"
            self.log_info(fl_ctx, f"FLIP backend: dev (hub calls recorded in {output_dir})")
        else:
            self.log_info(fl_ctx, f"FLIP backend: prod ({'server' if on_server else 'client'} settings checked)")
        return backend


def build_backend(
    mode: FlipMode,
    *,
    on_server: bool,
    secure_mode: bool,
    run_dir: Path,
    dev_dataframe: str | None = None,
    dev_images_dir: str | None = None,
    dev_output_dir: str | None = None,
    allow_dev_in_secure_mode: bool = False,
    hub_api: str | None = None,
    http_timeout: float | None = None,
    check_settings: bool = True,
) -> FLIPBase:
    """Build the FLIP backend of one site's job: the rule FlipBackend and Client API scripts share.

    Args:
        mode: The job's ``flip_mode`` (already checked).
        on_server: Whether this is the FL server (decides which prod settings are checked).
        secure_mode: Whether the site is a provisioned (secure) deployment.
        run_dir: The job's run folder on this site (dev output goes to ``flip_dev/`` there by default).
        dev_dataframe: Dev mode: the cohort CSV (else ``DEV_DATAFRAME``).
        dev_images_dir: Dev mode: one folder per accession (else ``DEV_IMAGES_DIR``).
        dev_output_dir: Dev mode: where the hub ledger and results go (else ``DEV_OUTPUT_DIR`` or run_dir).
        allow_dev_in_secure_mode: Let dev mode run in a provisioned deployment.
        hub_api: ``"h1"`` or ``"h2"`` (else ``FLIP_HUB_API``).
        http_timeout: Seconds per HTTP attempt (else ``FLIP_HTTP_TIMEOUT``).
        check_settings: Check this role's prod settings now (every missing variable named at once).

    Raises:
        FlipConfigError: Dev mode in a secure deployment without the explicit allowance, or
            prod settings missing.
    """
    if mode is FlipMode.DEV:
        if secure_mode and not allow_dev_in_secure_mode:
            raise FlipConfigError(
                "flip_mode is 'dev' but this is a provisioned (secure) deployment: dev mode would "
                "never report to the hub. Set flip_mode to 'prod', or pass "
                '"allow_dev_in_secure_mode": true to the FlipBackend component if this is intended.'
            )
        output_dir = dev_output_dir or run_dir / "flip_dev"
        return FLIPStandardDev(dataframe_csv=dev_dataframe, images_dir=dev_images_dir, output_dir=output_dir)
    if check_settings:
        _check_prod_settings(on_server, hub_api, http_timeout)
    return FLIPStandardProd(hub_api=hub_api, http_timeout=http_timeout)


def _on_server(fl_ctx: FLContext) -> bool:
    return isinstance(fl_ctx.get_engine(), ServerEngineSpec)


def _has_hub_widgets(fl_ctx: FLContext) -> bool:
    """Whether the server app has a hub widget (then the session, and the model id, are needed at START_RUN)."""
    from flip_nvflare.components.widget import HubWidget

    engine = fl_ctx.get_engine()
    components = engine.get_all_components() if hasattr(engine, "get_all_components") else {}
    return any(isinstance(c, HubWidget) for c in (components or {}).values())


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


def _flip_component(fl_ctx: FLContext, flip_id: str) -> FlipBackend:
    component = fl_ctx.get_engine().get_component(flip_id)
    if component is None:
        raise FlipConfigError(
            f"This job has no component with id {flip_id!r}: add "
            '{"id": "flip", "path": "flip_nvflare.backend.FlipBackend", '
            '"args": {"mode": "{flip_mode}"}} to the config\'s components.'
        )
    if not isinstance(component, FlipBackend):
        raise FlipConfigError(
            f"Component {flip_id!r} is a {type(component).__name__}, not flip_nvflare.backend.FlipBackend."
        )
    return component


def get_flip_backend(fl_ctx: FLContext, flip_id: str = DEFAULT_FLIP_ID) -> FLIPBase:
    """Return the job's FLIP backend from the component ``flip_id``.

    Raises:
        FlipConfigError: The job has no such component, or it is not a FlipBackend.
    """
    return _flip_component(fl_ctx, flip_id).get(fl_ctx)


def get_hub_session(fl_ctx: FLContext, flip_id: str = DEFAULT_FLIP_ID) -> HubSession:
    """Return the server's hub session from the FlipBackend component ``flip_id``.

    Raises:
        FlipConfigError: No such component, not on the server, no model_id, or unusable settings.
    """
    return _flip_component(fl_ctx, flip_id).session(fl_ctx)
