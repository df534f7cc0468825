"""Admin routes, served by both services under ``/admin`` (each can control and read everything).

Register models, issue project envelopes, set faults and down windows, change settings at run
time, and read what the services received. Who may call them:

- When ``--admin-key`` (``FLIP_EMULATOR_ADMIN_KEY``) is set, every admin request needs it in
  ``X-Emulator-Admin-Key`` (401 without it or with another value), from any address and any
  ``Host``.
- Otherwise only this machine may: the client's address must be a loopback one, its ``Host`` header
  must name a loopback address or ``localhost`` on the port it connected to, and an ``Origin``
  header, if sent, must name such an address too (:func:`local_admin_problem`). Anything else gets
  403. This keeps out other machines (with ``--host 0.0.0.0``), and web pages in a local browser:
  one that makes its own domain name resolve to 127.0.0.1 (DNS rebinding) still sends that name in
  ``Host``, and one that posts to ``http://127.0.0.1:PORT`` sends its own ``Origin``.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, Literal
from urllib.parse import urlsplit
from xml.etree import ElementTree

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Request
from pydantic import BaseModel, Field

from flip_emulator.config import EmulatorConfigError, check_model_id
from flip_emulator.faults import PATTERNS, FaultSpec, check_pattern
from flip_emulator.state import ADMIN_KEY_HEADER, Emulator, RuntimeSettings
from flip_nvflare.constants import HubApi
from flip_nvflare.core.settings import is_loopback_host


class ModelRegistration(BaseModel):
    """Body of ``POST /admin/models``."""

    model_id: str
    trusts: list[str] = Field(min_length=1)
    project_id: str | None = Field(default=None, min_length=1, max_length=200)


class ProjectRequest(BaseModel):
    """Body of ``POST /admin/projects``."""

    project_id: str = Field(min_length=1, max_length=200)


class DownRequest(BaseModel):
    """Body of ``POST /admin/down``."""

    service: Literal["hub", "trust"]
    seconds: float = Field(gt=0, le=3600)
    mode: Literal["refuse", "503"] = "refuse"


class SettingsPatch(BaseModel):
    """Body of ``PATCH /admin/settings`` (fields left out keep their value)."""

    hub_api: Literal["h1", "h2"] | None = None
    open: bool | None = None
    threshold: int | None = Field(default=None, ge=1)
    download_concurrency: int | None = Field(default=None, ge=0)
    download_latency: float | None = Field(default=None, ge=0, le=3600)
    path_prefix: str | None = Field(default=None, pattern=r"^(/[A-Za-z0-9._~-]+)*$")


class ResetRequest(BaseModel):
    """Body of ``POST /admin/reset``."""

    images: bool = True


def describe(emulator: Emulator) -> dict[str, Any]:
    """What a client needs to know about the running emulator (keys excluded)."""
    config = emulator.config
    return {
        "urls": dict(emulator.urls),
        "net_id": config.net_id,
        "images_dir": str(config.images_dir),
        "data_dir": str(config.data_dir),
        "synthetic_dir": str(emulator.synthetic.root),
        "bucket": config.bucket if "s3" in emulator.urls else None,
        "settings": emulator.settings.as_dict(),
        "project_id": emulator.default_project_id,
        "encrypted_project_id": emulator.default_envelope,
        "population": {
            "seed": emulator.synthetic.seed,
            "subjects": emulator.synthetic.subjects,
            "studies": emulator.synthetic.studies,
        },
        "routes": list(PATTERNS),
    }


def list_results(emulator: Emulator, model_id: str) -> list[str]:
    """Keys of the result objects stored for ``model_id`` in the emulator's S3 bucket."""
    import httpx

    from flip_emulator.config import parse_bucket

    endpoint = emulator.urls.get("s3")
    if endpoint is None:
        raise HTTPException(status_code=409, detail="No S3 server runs with this emulator (start it with --s3).")
    bucket, prefix = parse_bucket(emulator.config.bucket)
    key_prefix = f"{prefix}/{model_id}/" if prefix else f"{model_id}/"
    response = httpx.get(f"{endpoint}/{bucket}", params={"list-type": "2", "prefix": key_prefix}, timeout=10)
    response.raise_for_status()
    root = ElementTree.fromstring(response.content)
    return sorted(el.text or "" for el in root.iter() if el.tag.endswith("}Key") or el.tag == "Key")


_LOCAL_NAMES = frozenset({"localhost"})


def _is_loopback_ip(text: str) -> bool:
    """A loopback address (not a name: ``localhost`` is checked apart, as a Host header's name)."""
    return text.lower() != "localhost" and is_loopback_host(text)


def _split_host(authority: str, default_port: int) -> tuple[str, int] | None:
    """``(host, port)`` of a ``Host`` value (``name``, ``name:port``, ``[v6]:port``), or None if malformed."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, rest = authority[1:end], authority[end + 1 :]
        if host.count(":") < 2:
            return None
    else:
        host, colon, port_text = authority.partition(":")
        rest = colon + port_text
    if not rest:
        return host.lower(), default_port
    port_text = rest[1:]
    if not rest.startswith(":") or not port_text.isdigit() or len(port_text) > 5:
        return None
    return host.lower(), int(port_text)


def _names_this_emulator(host: str, port: int, own_port: int) -> bool:
    return port == own_port and (host in _LOCAL_NAMES or _is_loopback_ip(host))


def local_admin_problem(
    *, client_host: str | None, host_header: str | None, origin: str | None, port: int
) -> str | None:
    """Why an admin request without an admin key is refused (``None`` if it may proceed).

    It may if it comes from a loopback address, names a loopback address or ``localhost`` on
    ``port`` in ``Host``, and sends no ``Origin`` or one that names such an address on ``port``.

    Args:
        client_host: The client's address (``None`` if unknown).
        host_header: The ``Host`` header (``None`` if missing).
        origin: The ``Origin`` header (``None`` if missing).
        port: The port the request came in on.
    """
    hint = (
        f"Admin routes without {ADMIN_KEY_HEADER} answer only this machine: connect to 127.0.0.1, [::1] or "
        f"localhost on port {port} and name it so in Host; or start the emulator with --admin-key and send it."
    )
    if client_host is None or not _is_loopback_ip(client_host):
        return f"Refused: the client is not on this machine. {hint}"
    parsed = _split_host(host_header.strip(), 80) if host_header else None
    if parsed is None or not _names_this_emulator(*parsed, port):
        return f"Refused: the Host header does not name this emulator. {hint}"
    if origin is not None:
        parts = urlsplit(origin.strip())
        default = 443 if parts.scheme == "https" else 80
        named = _split_host(parts.netloc, default) if parts.scheme in ("http", "https") and parts.netloc else None
        if named is None or not _names_this_emulator(*named, port):
            return f"Refused: a request from a web page of another origin. {hint}"
    return None


def admin_router(emulator: Emulator) -> APIRouter:
    """The admin routes over ``emulator`` (access rules in the module docstring)."""
    key_required = emulator.admin_key_problem(None) is not None

    def require_admin(request: Request, key: str | None = Header(default=None, alias=ADMIN_KEY_HEADER)) -> None:
        if key_required:
            problem = emulator.admin_key_problem(key)
            if problem is not None:
                raise HTTPException(status_code=401, detail=problem)
            return
        server = request.scope.get("server")
        problem = local_admin_problem(
            client_host=request.client.host if request.client is not None else None,
            host_header=request.headers.get("host"),
            origin=request.headers.get("origin"),
            port=int(server[1]) if server and server[1] is not None else -1,
        )
        if problem is not None:
            raise HTTPException(status_code=403, detail=problem)

    router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], include_in_schema=True)

    @router.get("/info")
    def info() -> dict[str, Any]:
        return describe(emulator)

    @router.get("/models")
    def models() -> list[dict[str, Any]]:
        return [asdict(m) for m in emulator.store.models()]

    @router.post("/models")
    def register(body: ModelRegistration) -> dict[str, Any]:
        try:
            model = emulator.register_model(body.model_id, body.trusts, project_id=body.project_id)
        except EmulatorConfigError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return {"model": asdict(model), "encrypted_project_id": emulator.seal(model.project_id or "")}

    @router.post("/projects")
    def project(body: ProjectRequest) -> dict[str, str]:
        return {"project_id": body.project_id, "encrypted_project_id": emulator.seal(body.project_id)}

    @router.get("/faults")
    def faults() -> dict[str, Any]:
        return emulator.faults.current()

    @router.put("/faults/{route}")
    def set_fault(route: str, body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:  # noqa: B008
        try:
            check_pattern(route)
            spec = FaultSpec.from_mapping(body)
        except (TypeError, ValueError) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        emulator.faults.set(route, spec)
        return {"route": route, **spec.as_dict()}

    @router.delete("/faults")
    def clear_faults() -> dict[str, str]:
        emulator.clear_faults()
        return {"detail": "All faults and down windows cleared."}

    @router.delete("/faults/{route}")
    def clear_fault(route: str) -> dict[str, str]:
        try:
            emulator.clear_faults(route)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return {"detail": f"Fault of {route} cleared."}

    @router.post("/down")
    def down(body: DownRequest) -> dict[str, Any]:
        emulator.faults.set_down(body.service, body.seconds, body.mode)
        if body.mode == "refuse":
            control = emulator.controls.get(body.service)
            if control is None:
                raise HTTPException(status_code=409, detail=f"The {body.service} cannot be stopped from here.")
            control.go_down(body.seconds)
        return body.model_dump()

    @router.get("/settings")
    def get_settings() -> dict[str, Any]:
        return emulator.settings.as_dict()

    @router.patch("/settings")
    def patch_settings(body: SettingsPatch) -> dict[str, Any]:
        current = emulator.settings
        emulator.settings = RuntimeSettings(
            hub_api=HubApi(body.hub_api) if body.hub_api else current.hub_api,
            open=current.open if body.open is None else body.open,
            threshold=body.threshold or current.threshold,
            download_concurrency=current.download_concurrency
            if body.download_concurrency is None
            else body.download_concurrency,
            download_latency=current.download_latency if body.download_latency is None else body.download_latency,
            path_prefix=current.path_prefix if body.path_prefix is None else body.path_prefix,
        )
        return emulator.settings.as_dict()

    @router.get("/records/{model_id}")
    def records(model_id: str) -> dict[str, Any]:
        try:
            canonical = check_model_id(model_id)
        except EmulatorConfigError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        records = emulator.store.records(canonical)
        return replace(records, duplicates=emulator.idempotency.duplicates(canonical)).to_json()

    @router.get("/results/{model_id}")
    def results(model_id: str) -> list[str]:
        try:
            canonical = check_model_id(model_id)
        except EmulatorConfigError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return list_results(emulator, canonical)

    @router.get("/downloads")
    def downloads() -> list[dict[str, Any]]:
        return [asdict(d) for d in emulator.store.downloads()]

    @router.get("/uploads")
    def uploads() -> list[dict[str, Any]]:
        return [asdict(u) for u in emulator.store.uploads()]

    @router.get("/cohort-queries")
    def cohort_queries() -> list[dict[str, Any]]:
        return [asdict(c) for c in emulator.store.cohort_queries()]

    @router.get("/requests")
    def requests(service: Literal["hub", "trust"] | None = None) -> list[dict[str, Any]]:
        return [asdict(r) for r in emulator.store.requests(service)]

    @router.post("/reset")
    def reset(body: ResetRequest | None = None) -> dict[str, str]:
        emulator.reset(images=body.images if body is not None else True)
        return {"detail": "Records, faults, run-time models and settings reset."}

    return router
