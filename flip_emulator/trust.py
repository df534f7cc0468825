"""The emulated trust: data-access-api (``/cohort/dataframe``) and imaging-api (download, upload).

Both answer on one port and check the trust key. Order of checks on every route: the key (401),
the body (422), the network id (404), identifiers (422), the project envelope (400), then the work.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from flip_emulator.admin import admin_router
from flip_emulator.asgi import ServiceMiddleware, install_common
from flip_emulator.envelope import EnvelopeError
from flip_emulator.imaging import ImagingError, is_safe_segment
from flip_emulator.sql import QueryFailed, QueryRejected
from flip_emulator.state import TRUST_KEY_HEADER, Emulator

#: The real service's fixed refusal: identical for an empty cohort and a small one.
BELOW_THRESHOLD_DETAIL = "Cohort is too small for row-level data to be released."
_SEGMENT_RULE = "a single path segment of letters, digits, '.', '_', '~' or '-' (not '.' or '..')"


class DataframeQuery(BaseModel):
    """Body of ``POST /cohort/dataframe``."""

    model_config = ConfigDict(extra="ignore")
    encrypted_project_id: str
    query: str


class DownloadRequest(BaseModel):
    """Body of ``POST /download/images/{net_id}``."""

    model_config = ConfigDict(extra="ignore")
    encrypted_central_hub_project_id: str
    accession_id: str


class UploadRequest(BaseModel):
    """Body of ``PUT /upload/images/{net_id}``."""

    model_config = ConfigDict(extra="ignore")
    encrypted_central_hub_project_id: str
    accession_id: str
    scan_id: str
    resource_id: str
    files: list[str]
    exist_ok: bool = False


def create_trust_app(emulator: Emulator) -> FastAPI:
    """Build the trust's FastAPI app."""
    app = FastAPI(title="FLIP emulator: trust (data-access-api, imaging-api)", docs_url="/docs", redoc_url=None)
    install_common(app, emulator, "trust")

    def require_trust_key(key: str | None = Header(default=None, alias=TRUST_KEY_HEADER)) -> None:
        problem = emulator.trust_key_problem(key)
        if problem is not None:
            raise HTTPException(status_code=401, detail=problem)

    router = APIRouter(dependencies=[Depends(require_trust_key)])

    def open_project(envelope: str) -> str | None:
        try:
            return emulator.open_envelope(envelope)
        except EnvelopeError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None

    def check_net(net_id: str) -> None:
        if net_id != emulator.config.net_id:
            raise HTTPException(status_code=404, detail="Resource not found: this trust has no such network id.")

    def check_segment(name: str, value: str) -> None:
        if not is_safe_segment(value):
            # The value is not repeated: an accession id may identify a patient.
            raise HTTPException(status_code=422, detail=f"{name} must be {_SEGMENT_RULE}.")

    @router.post("/cohort/dataframe")
    async def cohort_dataframe(body: DataframeQuery) -> JSONResponse:
        received = time.time()
        status, rows, project = 500, None, None
        try:
            project = open_project(body.encrypted_project_id)
            try:
                result = await run_in_threadpool(emulator.cohorts.run, body.query)
            except QueryRejected as exc:
                raise HTTPException(status_code=400, detail=str(exc)) from None
            except QueryFailed as exc:
                raise HTTPException(status_code=500, detail=str(exc)) from None
            if result.subjects is None or result.subjects < emulator.settings.threshold:
                raise HTTPException(status_code=403, detail=BELOW_THRESHOLD_DETAIL)
            status, rows = 200, result.rows
            return JSONResponse(result.columns)
        except HTTPException as exc:
            status = exc.status_code
            raise
        finally:
            emulator.store.record_cohort(
                project_id=project,
                query_sha256=hashlib.sha256(body.query.encode("utf-8")).hexdigest(),
                query_chars=len(body.query),
                status_code=status,
                rows=rows,
                received_at=received,
            )

    @router.post("/download/images/{net_id}")
    async def download_images(
        net_id: str,
        body: DownloadRequest,
        assessor_type: Literal["scan", "assessor"] = Query(...),
        resource_type: Literal["DICOM", "NIFTI", "SEG", "ALL"] = Query(...),
    ) -> dict[str, str]:
        received = time.time()
        check_net(net_id)
        check_segment("accession_id", body.accession_id)
        accession = body.accession_id
        status, cached, path, started = 500, False, None, received
        try:
            open_project(body.encrypted_central_hub_project_id)
            expected = "assessor" if resource_type == "SEG" else "scan"
            if assessor_type != expected:
                raise HTTPException(
                    status_code=404,
                    detail=f"Resource not found: {resource_type} data is requested with assessor_type={expected}.",
                )
            images = emulator.images
            try:
                await run_in_threadpool(emulator.wait_for_images)
                files = await run_in_threadpool(images.files, accession, resource_type)
            except ImagingError as exc:
                raise HTTPException(status_code=exc.status_code, detail=exc.detail) from None
            destination = images.destination(accession)
            started = time.time()
            cached = await run_in_threadpool(images.is_cached, files, destination)
            if not cached:
                gate = emulator.download_gate()
                if gate is not None:
                    await gate.acquire()
                try:
                    started = time.time()
                    cached = await run_in_threadpool(images.is_cached, files, destination)
                    if not cached:
                        if emulator.settings.download_latency:
                            await asyncio.sleep(emulator.settings.download_latency)
                        try:
                            await run_in_threadpool(images.copy, files, destination)
                        except OSError:
                            raise HTTPException(
                                status_code=500, detail="Download failed: the images could not be stored."
                            ) from None
                finally:
                    if gate is not None:
                        gate.release()
            status, path = 200, str(destination)
            return {"path": str(destination)}
        except HTTPException as exc:
            status = exc.status_code
            raise
        finally:
            emulator.store.record_download(
                net_id=net_id,
                accession_id=accession,
                resource_type=resource_type,
                assessor_type=assessor_type,
                status_code=status,
                cached=cached,
                path=path,
                received_at=received,
                started_at=started,
            )

    @router.put("/upload/images/{net_id}")
    async def upload_images(net_id: str, body: UploadRequest) -> list[str]:
        received = time.time()
        check_net(net_id)
        for name in ("accession_id", "scan_id", "resource_id"):
            check_segment(name, getattr(body, name))
        status = 500
        try:
            open_project(body.encrypted_central_hub_project_id)
            base = emulator.urls.get("trust", "http://127.0.0.1") + "/xnat"
            try:
                await run_in_threadpool(emulator.wait_for_images)
                urls: list[str] = await run_in_threadpool(
                    lambda: emulator.images.upload(
                        body.accession_id,
                        body.scan_id,
                        body.resource_id,
                        list(body.files),
                        exist_ok=body.exist_ok,
                        url_base=base,
                    )
                )
            except ImagingError as exc:
                raise HTTPException(status_code=exc.status_code, detail=exc.detail) from None
            status = 200
            return urls
        except HTTPException as exc:
            status = exc.status_code
            raise
        finally:
            emulator.store.record_upload(
                net_id=net_id,
                accession_id=body.accession_id,
                scan_id=body.scan_id,
                resource_id=body.resource_id,
                files=list(body.files),
                exist_ok=body.exist_ok,
                status_code=status,
                received_at=received,
            )

    app.include_router(router)
    app.include_router(admin_router(emulator))
    app.add_middleware(ServiceMiddleware, emulator=emulator, service="trust")
    return app
