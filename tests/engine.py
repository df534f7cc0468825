"""A mock NVFlare engine for unit tests of components, the way NVFlare's own unit tests build one.

The engine is a ``MagicMock`` with the spec of NVFlare's server (or client) engine, so
``isinstance(engine, ServerEngineSpec)`` holds, around real NVFlare pieces: a ``FLContextManager``
makes the contexts (sticky props, job id, identity), a real ``Workspace`` in a temporary folder
answers the folder questions, and ``fire_event`` hands every event to the registered components,
as NVFlare's runners do, while recording it with the props components set for each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

from nvflare.apis.client import Client
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext, FLContextManager
from nvflare.apis.server_engine_spec import ServerEngineSpec
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.apis.workspace import Workspace
from nvflare.private.fed.client.client_engine_executor_spec import ClientEngineExecutorSpec

from flip_nvflare.backend import FlipBackend
from flip_nvflare.constants import FlipProps
from flip_nvflare.core.base import FLIPBase

JOB_ID = "3f1c9a52-8d0e-4f7b-9c61-2a5e7d4b8c10"
MODEL_ID = "6b0f2d4e-1c3a-4e5f-8a7b-9c0d1e2f3a4b"

#: Every environment variable the prod backends read (cleared by tests that need them unset).
PROD_ENV = (
    "FLIP_API_INTERNAL_URL",
    "INTERNAL_SERVICE_KEY",
    "INTERNAL_SERVICE_KEY_HEADER",
    "UPLOADED_FEDERATED_DATA_BUCKET",
    "DATA_ACCESS_API_URL",
    "IMAGING_API_URL",
    "TRUST_INTERNAL_SERVICE_KEY",
    "TRUST_INTERNAL_SERVICE_KEY_HEADER",
    "NET_ID",
    "IMAGES_DIR",
    "FLIP_HUB_API",
    "FLIP_HTTP_TIMEOUT",
    "DEV_DATAFRAME",
    "DEV_IMAGES_DIR",
    "DEV_OUTPUT_DIR",
)

#: Props recorded with each fired event (what FLIP components read from each other's events).
RECORDED_PROPS = (
    FLContextKey.EVENT_DATA,
    FlipProps.PREPARATION_TARGETS,
    FlipProps.PREPARATION_FAILED_CLIENT,
    FlipProps.PREPARATION_FAILURE,
    FlipProps.PREPARATION_SUMMARY,
    FlipProps.RESULTS_LOCATION,
    FlipProps.RESULTS_FLIP_ID,
)


@dataclass
class FiredEvent:
    """One event a component fired, with the recorded props as they were when it was fired."""

    event_type: str
    props: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> Any:
        return self.props.get(FLContextKey.EVENT_DATA)


class FakeEngine:
    """A ``MagicMock(spec=ServerEngineSpec)`` (or a client engine spec) around a real context manager and workspace.

    Args:
        root: A temporary folder; the workspace is made in ``root/workspace``.
        server: Server engine (else a client engine).
        identity: This site's name.
        clients: Names of the connected clients (server).
        components: Components by id (``engine.get_component``).
        listeners: Components that receive every fired event (besides ``components``).
        secure: Whether this is a provisioned (secure) deployment.
        job_meta: The job's meta.json (``FLContextKey.JOB_META``), if any.
    """

    def __init__(
        self,
        root: Path,
        *,
        server: bool = True,
        identity: str | None = None,
        clients: Iterable[str] = ("site-1", "site-2"),
        components: Mapping[str, object] | None = None,
        listeners: Iterable[FLComponent] = (),
        secure: bool = False,
        job_id: str = JOB_ID,
        job_meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.identity = identity or ("server" if server else "site-1")
        workspace_root = root / "workspace"
        (workspace_root / "startup").mkdir(parents=True, exist_ok=True)
        (workspace_root / "local").mkdir(parents=True, exist_ok=True)
        self.workspace = Workspace(str(workspace_root), site_name=self.identity)
        self.job_id = job_id
        self.components: dict[str, object] = dict(components or {})
        self.listeners: list[FLComponent] = list(listeners)
        self.events: list[FiredEvent] = []
        self.abort_signal = Signal()
        # a client job's components see the ClientRunManager, an engine with this spec
        self.mock = MagicMock(spec=ServerEngineSpec if server else ClientEngineExecutorSpec)
        self.mock.get_component.side_effect = lambda component_id: self.components.get(component_id)
        self.mock.get_workspace.return_value = self.workspace
        if server:
            self.mock.get_clients.return_value = [Client(name, None) for name in clients]
        self.mock.fire_event.side_effect = self._fire
        self.manager = FLContextManager(
            engine=self.mock,
            identity_name=self.identity,
            job_id=job_id,
            public_stickers={FLContextKey.SECURE_MODE: secure, FLContextKey.JOB_META: job_meta},
            private_stickers={FLContextKey.RUN_ABORT_SIGNAL: self.abort_signal},
        )
        self.mock.new_context.side_effect = self.manager.new_context

    @property
    def run_dir(self) -> Path:
        return Path(self.workspace.get_run_dir(self.job_id))

    def new_context(self) -> FLContext:
        return self.manager.new_context()

    def set_clients(self, names: Iterable[str]) -> None:
        self.mock.get_clients.return_value = [Client(name, None) for name in names]

    def _receivers(self) -> list[FLComponent]:
        seen: list[FLComponent] = []
        for component in [*self.components.values(), *self.listeners]:
            if isinstance(component, FLComponent) and all(component is not c for c in seen):
                seen.append(component)
        return seen

    def _fire(self, event_type: str, fl_ctx: FLContext) -> None:
        self.events.append(FiredEvent(event_type, {key: fl_ctx.get_prop(key) for key in RECORDED_PROPS}))
        for component in self._receivers():
            component.handle_event(event_type, fl_ctx)

    def fire(self, event_type: str, fl_ctx: FLContext | None = None, **props: Any) -> FLContext:
        """Fire ``event_type`` to every component, as NVFlare's runner does; ``props`` are set first (private)."""
        fl_ctx = fl_ctx if fl_ctx is not None else self.new_context()
        for key, value in props.items():
            fl_ctx.set_prop(key, value, private=True, sticky=False)
        self._fire(event_type, fl_ctx)
        return fl_ctx

    def event_types(self) -> list[str]:
        return [event.event_type for event in self.events]

    def fired(self, event_type: str) -> list[FiredEvent]:
        return [event for event in self.events if event.event_type == event_type]

    def start_run(self) -> FLContext:
        return self.fire(EventType.START_RUN)

    def end_run(self) -> None:
        self.fire(EventType.ABOUT_TO_END_RUN)
        self.fire(EventType.END_RUN)


def with_peer(fl_ctx: FLContext, client_name: str) -> FLContext:
    """Make ``client_name`` the peer of ``fl_ctx`` (the client whose request or result is being processed)."""
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, client_name, private=False, sticky=False)
    fl_ctx.set_peer_context(peer)
    return fl_ctx


def fed_event_data(origin: str, **values: Any) -> Shareable:
    """A federated event's data as the server receives it from ``origin``."""
    from nvflare.apis.fl_constant import FedEventHeader

    data = Shareable()
    data.update(values)
    data.set_header(FedEventHeader.DIRECTION, "in")
    data.set_header(FedEventHeader.ORIGIN, origin)
    return data


class FixedBackend(FlipBackend):
    """A FlipBackend whose backend is the given in-memory hub (e.g. RecordingHub) instead of a dev or prod one."""

    def __init__(self, hub: FLIPBase, model_id: str = MODEL_ID, **kwargs: Any) -> None:
        super().__init__(mode="dev", model_id=model_id, **kwargs)
        self.hub = hub

    def _build(self, fl_ctx: FLContext) -> FLIPBase:
        return self.hub


def server_job(
    root: Path, *widgets: FLComponent, hub: FLIPBase | None = None, flip_id: str = "flip", **kwargs: Any
) -> tuple[FakeEngine, FLIPBase]:
    """A server engine whose ``flip`` component is a FixedBackend around ``hub``, and ``widgets`` listening."""
    from tests.components.fakes import RecordingHub

    hub = hub if hub is not None else RecordingHub()
    engine = FakeEngine(root, components={flip_id: FixedBackend(hub)}, listeners=widgets, **kwargs)
    return engine, hub


def hub_calls(hub: Any, kind: str | None = None) -> list[tuple[Any, ...]]:
    """The calls a RecordingHub received (``(kind, *args)``), optionally of one kind."""
    return [(method, *args) for method, args, _start, _end in hub.calls if kind is None or method == kind]
