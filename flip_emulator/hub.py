"""The emulated Central Hub: flip-api's status, metrics and logs routes, for hub generation H1 or H2.

============================================  =====================================================
H1                                            H2
============================================  =====================================================
status ``TRAINING_STARTED``                   ``RUNNING``; also ``RESULTS_UPLOAD_FAILED``
metrics ``{trust, global_round|globalRound,   ``{fl_client_name, global_round, label, result,
label, result}``                              x_value?, x_label?}`` (``site-N`` resolves to ``Trust_N``)
logs ``{trust, log}``; unlinked trust -> 400  ``{fl_client_name?, log, success}`` or a typed event
                                              ``{event_type, global_round>=1, details<=8192 B}``
every status applies                          PREPARED/RUNNING/ERROR/RESULTS_* after STOPPED are
                                              ignored (still 200)
============================================  =====================================================

Each generation ignores fields it does not know, so a body carrying both ``trust`` and
``fl_client_name`` suits both.

Every write route honours ``Idempotency-Key`` (see :mod:`flip_emulator.idempotency`): a repeat of a
successful request gets the same answer (with ``Idempotent-Replayed: true``) and is not recorded
again; the same key with a different request gets 422; a key that is not a UUID gets 400.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Header, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from flip_emulator.admin import admin_router
from flip_emulator.asgi import ServiceMiddleware, install_common
from flip_emulator.idempotency import REPLAYED_HEADER, Answer, check_key, request_digest
from flip_emulator.state import HUB_KEY_HEADER, Emulator
from flip_emulator.store import ModelInfo
from flip_nvflare.constants import IDEMPOTENCY_KEY_HEADER, HubApi

H1_STATUSES = ("PENDING", "INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED", "ERROR", "STOPPED")
H2_STATUSES = (
    "PENDING",
    "INITIATED",
    "PREPARED",
    "RUNNING",
    "RESULTS_UPLOADED",
    "RESULTS_UPLOAD_FAILED",
    "ERROR",
    "STOPPED",
)
#: On H2, these are ignored once a model is STOPPED.
H2_IGNORED_AFTER_STOP = frozenset({"PREPARED", "RUNNING", "ERROR", "RESULTS_UPLOADED", "RESULTS_UPLOAD_FAILED"})
EVENT_TYPES = ("ROUND_STARTED", "CLIENT_RESULT_RECEIVED", "ROUND_AGGREGATED", "JOB_WAITING_FOR_RESOURCES")
ROUNDLESS_EVENTS = frozenset({"JOB_WAITING_FOR_RESOURCES"})
MAX_DETAILS_BYTES = 8192
_SITE = re.compile(r"site-(\d+)")


def statuses_of(hub_api: HubApi) -> tuple[str, ...]:
    """The status names a hub generation accepts."""
    return H2_STATUSES if hub_api is HubApi.H2 else H1_STATUSES


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class H1Metric(_Body):
    """An H1 metrics body."""

    trust: str = Field(min_length=1)
    global_round: int = Field(ge=0, validation_alias=AliasChoices("global_round", "globalRound"))
    label: str = Field(min_length=1)
    result: float = Field(allow_inf_nan=False)


class H2Metric(_Body):
    """An H2 metrics body."""

    fl_client_name: str = Field(min_length=1)
    global_round: int = Field(ge=0)
    label: str = Field(min_length=1)
    result: float = Field(allow_inf_nan=False)
    x_value: float | None = Field(default=None, allow_inf_nan=False)
    x_label: str | None = Field(default=None, min_length=1, max_length=64)


class H1Log(_Body):
    """An H1 logs body."""

    trust: str = Field(min_length=1)
    log: str


class H2Log(_Body):
    """An H2 logs body: free text (``log``) or a typed progress event (``event_type``)."""

    fl_client_name: str | None = None
    log: str | None = None
    success: bool = True
    event_type: (
        Literal["ROUND_STARTED", "CLIENT_RESULT_RECEIVED", "ROUND_AGGREGATED", "JOB_WAITING_FOR_RESOURCES"] | None
    ) = None
    global_round: int | None = None
    details: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> H2Log:
        if (self.log is None) == (self.event_type is None):
            raise ValueError("exactly one of 'log' and 'event_type' must be given")
        if self.event_type is not None:
            if self.event_type not in ROUNDLESS_EVENTS and self.global_round is None:
                raise ValueError(f"{self.event_type} needs global_round (1-based, >= 1)")
            if self.global_round is not None and self.global_round < 1:
                raise ValueError("global_round of a progress event is 1-based: it must be >= 1")
            size = len(json.dumps(self.details or {}, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
            if size > MAX_DETAILS_BYTES:
                raise ValueError(f"details must be JSON of at most {MAX_DETAILS_BYTES} bytes (got {size})")
        return self


def _parse(model: type[_Body], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_input=False, include_url=False)]
        ) from None


def create_hub_app(emulator: Emulator) -> FastAPI:
    """Build the hub's FastAPI app."""
    app = FastAPI(title="FLIP emulator: Central Hub (flip-api)", docs_url="/docs", redoc_url=None)
    install_common(app, emulator, "hub")

    def require_hub_key(key: str | None = Header(default=None, alias=HUB_KEY_HEADER)) -> None:
        problem = emulator.hub_key_problem(key)
        if problem is not None:
            raise HTTPException(status_code=401, detail=problem)

    router = APIRouter(prefix="/api", dependencies=[Depends(require_hub_key)])

    def once(route: str, model_id: uuid.UUID, key: str | None, request: Any, handle: Callable[[], Answer]) -> Response:
        """Handle a write, or (for a key already seen) answer it as the first request with that key."""
        if key is None:
            answer = handle()
        else:
            try:
                checked = check_key(key)
            except ValueError as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from None
            answer = emulator.idempotency.run(route, str(model_id), checked, request_digest(request), handle)
        headers = {REPLAYED_HEADER: "true"} if answer.replayed else None
        return Response(answer.body, answer.status_code, headers=headers, media_type=answer.media_type)

    def model_or_404(model_id: uuid.UUID) -> ModelInfo:
        info = emulator.store.model(str(model_id))
        if info is None:
            if not emulator.settings.open:
                raise HTTPException(status_code=404, detail=f"Model {model_id} not found.")
            info = emulator.store.register_model(
                str(model_id), [], project_id=emulator.default_project_id, registered_by="open"
            )
        return info

    def linked_trust(info: ModelInfo, name: str, *, resolve_sites: bool) -> str | None:
        candidates = [name]
        match = _SITE.fullmatch(name)
        if resolve_sites and match:
            candidates.insert(0, f"Trust_{match.group(1)}")
        for candidate in candidates:
            if candidate in info.trusts:
                return candidate
        if emulator.settings.open:
            emulator.store.register_model(info.model_id, [candidates[0]], project_id=None, registered_by="open")
            return candidates[0]
        return None

    @router.put("/model/{model_id}/status/{status}")
    def set_status(
        model_id: uuid.UUID, status: str, key: str | None = Header(default=None, alias=IDEMPOTENCY_KEY_HEADER)
    ) -> Response:
        return once("hub.status", model_id, key, status, lambda: _set_status(model_id, status))

    def _set_status(model_id: uuid.UUID, status: str) -> Answer:
        hub_api = emulator.settings.hub_api
        allowed = statuses_of(hub_api)
        if status not in allowed:
            raise HTTPException(
                status_code=422,
                detail=f"Unknown status {status[:40]!r} for hub API {hub_api.value}; use one of {', '.join(allowed)}.",
            )
        info = model_or_404(model_id)
        applied = not (hub_api is HubApi.H2 and info.status == "STOPPED" and status in H2_IGNORED_AFTER_STOP)
        emulator.store.record_status(info.model_id, status, applied=applied, hub_api=hub_api.value)
        return Answer.json(200, {"success": "status set"})

    @router.post("/model/{model_id}/metrics", status_code=204)
    def post_metrics(
        model_id: uuid.UUID,
        body: dict[str, Any] = Body(...),  # noqa: B008
        key: str | None = Header(default=None, alias=IDEMPOTENCY_KEY_HEADER),
    ) -> Response:
        return once("hub.metrics", model_id, key, body, lambda: _post_metrics(model_id, body))

    def _post_metrics(model_id: uuid.UUID, body: dict[str, Any]) -> Answer:
        hub_api = emulator.settings.hub_api
        if hub_api is HubApi.H1:
            h1 = _parse(H1Metric, body)
            name, fl_client, x_value, x_label = h1.trust, None, None, None
            metric: H1Metric | H2Metric = h1
        else:
            h2 = _parse(H2Metric, body)
            name, fl_client, x_value, x_label = h2.fl_client_name, h2.fl_client_name, h2.x_value, h2.x_label
            metric = h2
        info = model_or_404(model_id)
        trust = linked_trust(info, name, resolve_sites=hub_api is HubApi.H2)
        if trust is None:
            raise HTTPException(status_code=400, detail=f"{name[:64]!r} is not linked to model {info.model_id}.")
        emulator.store.record_metric(
            info.model_id,
            trust=trust,
            fl_client_name=fl_client,
            global_round=metric.global_round,
            label=metric.label,
            result=metric.result,
            x_value=x_value,
            x_label=x_label,
            hub_api=hub_api.value,
        )
        return Answer(204)

    @router.post("/model/{model_id}/logs")
    def post_logs(
        model_id: uuid.UUID,
        body: dict[str, Any] = Body(...),  # noqa: B008
        key: str | None = Header(default=None, alias=IDEMPOTENCY_KEY_HEADER),
    ) -> Response:
        return once("hub.logs", model_id, key, body, lambda: _post_logs(model_id, body))

    def _post_logs(model_id: uuid.UUID, body: dict[str, Any]) -> Answer:
        hub_api = emulator.settings.hub_api
        if hub_api is HubApi.H1:
            h1 = _parse(H1Log, body)
            info = model_or_404(model_id)
            trust = linked_trust(info, h1.trust, resolve_sites=False)
            if trust is None:
                raise HTTPException(
                    status_code=400, detail=f"{h1.trust[:64]!r} is not linked to model {info.model_id}."
                )
            emulator.store.record_log(
                info.model_id,
                trust=trust,
                fl_client_name=None,
                log=h1.log,
                success=bool(body["success"]) if isinstance(body.get("success"), bool) else True,
                event_type=None,
                global_round=None,
                details=None,
                hub_api=hub_api.value,
            )
        else:
            h2 = _parse(H2Log, body)
            info = model_or_404(model_id)
            trust = None
            if h2.fl_client_name:
                match = _SITE.fullmatch(h2.fl_client_name)
                guess = f"Trust_{match.group(1)}" if match else h2.fl_client_name
                trust = guess if guess in info.trusts else None
            emulator.store.record_log(
                info.model_id,
                trust=trust,
                fl_client_name=h2.fl_client_name,
                log=h2.log,
                success=h2.success,
                event_type=h2.event_type,
                global_round=h2.global_round,
                details=(h2.details or {}) if h2.event_type else None,
                hub_api=hub_api.value,
            )
        return Answer.json(200, {"detail": "Created"})

    app.include_router(router)
    app.include_router(admin_router(emulator))
    app.add_middleware(ServiceMiddleware, emulator=emulator, service="hub")
    return app
