"""FLIPStandardProd: the FLIP methods against the real FLIP services (flip-api, data-access-api, imaging-api, S3)."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flip_nvflare.constants import HubApi, ModelStatus, ResourceType
from flip_nvflare.core.base import (
    FLIPBase,
    ResourceTypes,
    as_model_status,
    as_resource_types,
    capped_log_text,
    check_accession_id,
    check_model_id,
    check_text,
    exception_log_body,
    metric_body,
    progress_event_body,
    remove_inside,
)
from flip_nvflare.core.http import DEFAULT_MAX_BODY_BYTES, ServiceClient
from flip_nvflare.core.results import Progress, check_results_folder, results_key, upload_folder_zip
from flip_nvflare.core.settings import (
    HubSettings,
    ResultsSettings,
    SettingsReader,
    TrustSettings,
    read_hub_settings,
    read_results_settings,
    read_trust_settings,
)
from flip_nvflare.errors import FlipConfigError, FlipInvalidArgument, FlipInvalidResponse
from flip_nvflare.retry import RetryPolicy

if TYPE_CHECKING:
    import httpx
    import pandas as pd

logger = logging.getLogger(__name__)

#: Largest cohort answer read by default: far above a million-row cohort, far below the machine.
DEFAULT_MAX_COHORT_BYTES = 2 * 1024**3


class FLIPStandardProd(FLIPBase):
    """Talks to the real FLIP services over HTTP (flip-api, data-access-api, imaging-api) and S3.

    Every argument is optional: one left as ``None`` is read from the environment variable named
    in brackets when a method that needs it first runs.

    Args:
        flip_api_url: flip-api base URL, routes under ``/api`` (``FLIP_API_INTERNAL_URL``).
        hub_key: The hub's internal service key (``INTERNAL_SERVICE_KEY``).
        hub_key_header: Header for the hub key (``INTERNAL_SERVICE_KEY_HEADER``).
        data_access_api_url: The trust's data-access-api (``DATA_ACCESS_API_URL``).
        imaging_api_url: The trust's imaging-api (``IMAGING_API_URL``).
        trust_key: The trust's internal service key (``TRUST_INTERNAL_SERVICE_KEY``).
        trust_key_header: Header for the trust key (``TRUST_INTERNAL_SERVICE_KEY_HEADER``).
        net_id: The trust's imaging network id (``NET_ID``).
        images_dir: Root of the shared images volume (``IMAGES_DIR``).
        results_bucket: ``s3://bucket[/prefix]`` for results (``UPLOADED_FEDERATED_DATA_BUCKET``).
        http_timeout: Seconds per HTTP attempt (``FLIP_HTTP_TIMEOUT``, default 30).
        hub_api: ``h1`` or ``h2`` (``FLIP_HUB_API``, default ``h1``).
        s3_endpoint_url: S3-compatible endpoint (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``).
        cleanable_dirs: Folders :meth:`cleanup` may delete inside; default ``IMAGES_DIR/NET_ID``.
        retry: Retry policy for transient HTTP failures.
        max_response_bytes: Largest answer read from a service (default 4 MiB); larger ones are
            refused unread.
        max_cohort_bytes: Largest cohort answer read from the data-access-api (default 2 GiB).
        env: Mapping used instead of ``os.environ``.
    """

    def __init__(
        self,
        *,
        flip_api_url: str | None = None,
        hub_key: str | None = None,
        hub_key_header: str | None = None,
        data_access_api_url: str | None = None,
        imaging_api_url: str | None = None,
        trust_key: str | None = None,
        trust_key_header: str | None = None,
        net_id: str | None = None,
        images_dir: str | Path | None = None,
        results_bucket: str | None = None,
        http_timeout: float | None = None,
        hub_api: str | None = None,
        s3_endpoint_url: str | None = None,
        cleanable_dirs: Sequence[str | Path] | None = None,
        retry: RetryPolicy | None = None,
        max_response_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_cohort_bytes: int = DEFAULT_MAX_COHORT_BYTES,
        env: Mapping[str, str] | None = None,
    ) -> None:
        for name, bound in (("max_response_bytes", max_response_bytes), ("max_cohort_bytes", max_cohort_bytes)):
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1024:
                raise FlipConfigError(f"FLIPStandardProd: {name} must be an integer >= 1024, got {bound!r}.")
        self._max_response_bytes = max_response_bytes
        self._max_cohort_bytes = max_cohort_bytes
        self._reader = SettingsReader(
            {
                "FLIP_API_INTERNAL_URL": flip_api_url,
                "INTERNAL_SERVICE_KEY": hub_key,
                "INTERNAL_SERVICE_KEY_HEADER": hub_key_header,
                "DATA_ACCESS_API_URL": data_access_api_url,
                "IMAGING_API_URL": imaging_api_url,
                "TRUST_INTERNAL_SERVICE_KEY": trust_key,
                "TRUST_INTERNAL_SERVICE_KEY_HEADER": trust_key_header,
                "NET_ID": net_id,
                "IMAGES_DIR": str(images_dir) if images_dir is not None else None,
                "UPLOADED_FEDERATED_DATA_BUCKET": results_bucket,
                "FLIP_HTTP_TIMEOUT": http_timeout,
                "FLIP_HUB_API": hub_api,
                "AWS_ENDPOINT_URL_S3": s3_endpoint_url,
            },
            env,
        )
        self._cleanable = [Path(p) for p in cleanable_dirs] if cleanable_dirs is not None else None
        self._retry = retry or RetryPolicy()
        self._lock = threading.Lock()
        self._clients: dict[str, ServiceClient] = {}
        self._hub: HubSettings | None = None
        self._trust: dict[str, TrustSettings] = {}
        self._results: ResultsSettings | None = None
        self._s3: Any = None

    # ---------------------------------------------------------------- what components need

    @property
    def mode(self) -> str:
        """``"prod"``."""
        return "prod"

    @property
    def hub_api(self) -> HubApi:
        """The hub generation of the settings (``FLIP_HUB_API``, default H1)."""
        return self.hub_settings().hub_api

    def images_root(self) -> Path | None:
        """``<IMAGES_DIR>/<NET_ID>``, where the imaging-api puts accession folders; ``None`` if not configured."""
        try:
            settings = self.trust_settings("imaging-api")
        except FlipConfigError:
            return None
        if settings.images_dir is None or not settings.net_id:
            return None
        return settings.images_dir / settings.net_id

    # ---------------------------------------------------------------- settings and clients

    def hub_settings(self) -> HubSettings:
        """The flip-api settings, read and checked on first use."""
        with self._lock:
            if self._hub is None:
                self._hub = read_hub_settings(self._reader)
            return self._hub

    def trust_settings(self, service: str) -> TrustSettings:
        """The trust settings needed for ``service`` (data-access-api or imaging-api)."""
        with self._lock:
            if service not in self._trust:
                self._trust[service] = read_trust_settings(self._reader, service=service)
            return self._trust[service]

    def with_retry(self, retry: RetryPolicy) -> FLIPStandardProd:
        """This backend with another retry policy for its HTTP calls (settings and connections shared).

        The delivery queue on the server and the image downloader use ``with_retry(RetryPolicy.single())``
        so that they alone retry (see :mod:`flip_nvflare.retry`).
        """
        view = copy.copy(self)
        view._retry = retry
        return view

    def _request(self, service: str, method: str, route: str, **kwargs: Any) -> httpx.Response:
        """One call to ``service`` through its pooled client, with this backend's retry policy."""
        return self._client(service).request(method, route, retry=self._retry, **kwargs)

    def _client(self, service: str) -> ServiceClient:
        if service == "flip-api":
            hub = self.hub_settings()
            url, header, key, timeout = hub.url, hub.key_header, hub.key, hub.timeout
        else:
            trust = self.trust_settings(service)
            base = trust.data_access_url if service == "data-access-api" else trust.imaging_url
            assert base is not None  # required by read_trust_settings for this service
            url, header, key, timeout = base, trust.key_header, trust.key, trust.timeout
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                client = ServiceClient(
                    service=service,
                    base_url=url,
                    key_header=header,
                    key=key,
                    timeout=timeout,
                    retry=self._retry,
                    max_body_bytes=self._max_response_bytes,
                )
                self._clients[service] = client
            return client

    def close(self) -> None:
        """Close every pooled HTTP connection."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    # ---------------------------------------------------------------- trust side

    def get_dataframe(self, project_id: str, query: str) -> pd.DataFrame:
        """Fetch the cohort from the trust's data-access-api (see :meth:`FLIPBase.get_dataframe`)."""
        from flip_nvflare.core.frames import dataframe_from_columns_json

        check_text("project_id", project_id)
        check_text("query", query)
        response = self._request(
            "data-access-api",
            "POST",
            "/cohort/dataframe",
            json_body={"encrypted_project_id": project_id, "query": query},
            redact=(query, project_id),
            max_body_bytes=self._max_cohort_bytes,
        )
        t0 = time.monotonic()
        frame = dataframe_from_columns_json(response.content)
        logger.info(
            "data-access-api cohort decoded: %d rows x %d columns in %.0f ms",
            len(frame),
            len(frame.columns),
            (time.monotonic() - t0) * 1000,
        )
        return frame

    def get_by_accession_number(
        self, project_id: str, accession_id: str, resource_type: ResourceTypes = ResourceType.NIFTI
    ) -> Path:
        """Ask the imaging-api to download one accession's images (one call per resource type)."""
        check_text("project_id", project_id)
        check_accession_id(accession_id)
        types = as_resource_types(resource_type)
        settings = self.trust_settings("imaging-api")
        assert settings.net_id is not None
        folder: Path | None = None
        for rt in types:
            response = self._request(
                "imaging-api",
                "POST",
                "/download/images/{net_id}",
                path_params={"net_id": settings.net_id},
                params={"assessor_type": rt.assessor_type, "resource_type": rt.value},
                json_body={"encrypted_central_hub_project_id": project_id, "accession_id": accession_id},
                redact=(accession_id, project_id),
            )
            path = _answer_path(response.content, settings.images_dir, settings.net_id)
            if folder is not None and path != folder:
                raise FlipInvalidResponse("imaging-api returned different folders for resource types of one accession.")
            folder = path
        assert folder is not None
        return folder

    def add_resource(
        self,
        project_id: str,
        accession_id: str,
        scan_id: str,
        resource_id: str,
        files: Sequence[str | Path],
    ) -> list[str]:
        """Stage ``files`` under ``IMAGES_DIR/NET_ID/upload/`` and ask the imaging-api to upload them.

        Returns:
            The XNAT file URLs the imaging-api reports.
        """
        check_text("project_id", project_id)
        check_accession_id(accession_id)
        check_accession_id(scan_id)
        check_accession_id(resource_id)
        if not files:
            raise FlipInvalidArgument("files must list at least one file to upload.")
        settings = self.trust_settings("imaging-api")
        if settings.images_dir is None:
            raise FlipConfigError("Missing setting to upload images: IMAGES_DIR (the shared images volume).")
        assert settings.net_id is not None
        upload_root = settings.images_dir / settings.net_id / "upload"
        staging = upload_root / accession_id / scan_id / resource_id
        relative: list[str] = []
        staged: list[Path] = []
        for item in files:
            source = Path(item)
            if not source.is_file():
                raise FlipInvalidArgument("add_resource: a file to upload does not exist or is not a file.")
            resolved = source.resolve()
            if resolved.is_relative_to(upload_root.resolve()):
                relative.append(resolved.relative_to(upload_root.resolve()).as_posix())
                continue
            staging.mkdir(parents=True, exist_ok=True)
            target = staging / source.name
            shutil.copyfile(source, target)
            staged.append(target)
            relative.append(target.relative_to(upload_root).as_posix())
        response = self._request(
            "imaging-api",
            "PUT",
            "/upload/images/{net_id}",
            path_params={"net_id": settings.net_id},
            json_body={
                "encrypted_central_hub_project_id": project_id,
                "accession_id": accession_id,
                "scan_id": scan_id,
                "resource_id": resource_id,
                "files": relative,
                "exist_ok": False,
            },
            redact=(accession_id, project_id),
        )
        for target in staged:
            target.unlink(missing_ok=True)
        try:
            urls = json.loads(response.content)
        except ValueError:
            raise FlipInvalidResponse("imaging-api upload answer is not JSON.") from None
        if not isinstance(urls, list):
            raise FlipInvalidResponse("imaging-api upload answer is not a list of file URLs.")
        return [str(u) for u in urls]

    def cleanup(self, path: str | Path) -> bool:
        """Delete ``path`` if it lies inside ``cleanable_dirs`` (default ``IMAGES_DIR/NET_ID``)."""
        return remove_inside(path, self._cleanable_roots())

    def _cleanable_roots(self) -> list[Path]:
        if self._cleanable is not None:
            return self._cleanable
        images_dir, net_id = self._reader.raw("IMAGES_DIR"), self._reader.raw("NET_ID")
        if images_dir and net_id:
            return [Path(str(images_dir)) / str(net_id)]
        return []

    # ---------------------------------------------------------------- hub side

    def update_status(self, model_id: str, new_model_status: ModelStatus | str) -> None:
        """Set the model's status on flip-api (status names per hub generation)."""
        model_id = check_model_id(model_id)
        status = as_model_status(new_model_status)
        hub = self.hub_settings()
        self._request(
            "flip-api",
            "PUT",
            "/model/{model_id}/status/{status}",
            path_params={"model_id": model_id, "status": hub.hub_api.status_name(status)},
            idempotent_write=True,
        )

    def send_metrics(
        self,
        client_name: str,
        model_id: str,
        label: str,
        value: float,
        round: int,
        *,
        x_value: float | None = None,
        x_label: str | None = None,
        trust_name: str | None = None,
    ) -> bool:
        """Post one metric to flip-api; the body suits H1 and H2 hubs at once."""
        body = metric_body(client_name, model_id, label, value, round, x_value, x_label, trust_name)
        if body is None:
            return False
        model_id = body.pop("model_id")
        if self.hub_settings().hub_api is not HubApi.H2:  # H1 plots against the round only
            body.pop("x_value", None)
            body.pop("x_label", None)
        self._request(
            "flip-api",
            "POST",
            "/model/{model_id}/metrics",
            path_params={"model_id": model_id},
            json_body=body,
            idempotent_write=True,
        )
        return True

    def send_handled_exception(
        self, formatted_exception: str, client_name: str, model_id: str, *, trust_name: str | None = None
    ) -> None:
        """Record a client's exception text in flip-api's logs for the model."""
        model_id, body = exception_log_body(formatted_exception, client_name, model_id, trust_name)
        self._post_log(model_id, body)

    def send_progress_event(
        self,
        model_id: str,
        event_type: str,
        global_round: int | None,
        details: Mapping[str, Any],
        client_name: str | None = None,
    ) -> None:
        """Post a typed progress event to an H2 hub's logs endpoint.

        Raises:
            FlipConfigError: The hub is not H2 (H1 hubs have no typed events).
        """
        model_id, body = progress_event_body(model_id, event_type, global_round, details, client_name)
        if self.hub_settings().hub_api is not HubApi.H2:
            raise FlipConfigError("Typed progress events need an H2 hub (set FLIP_HUB_API=h2).")
        self._post_log(model_id, body)

    def send_run_log(self, model_id: str, text: str, trust_names: Sequence[str] = ()) -> int:
        """Record a run-level log entry: one entry without a client on H2, one per trust on H1."""
        if self.hub_settings().hub_api is not HubApi.H2:
            return super().send_run_log(model_id, text, trust_names)
        model_id = check_model_id(model_id)
        self._post_log(model_id, {"fl_client_name": None, "log": capped_log_text(text), "success": False})
        return 1

    def _post_log(self, model_id: str, body: dict[str, Any]) -> None:
        """One entry of the model's logs at flip-api (an exception text, or an H2 progress event)."""
        self._request(
            "flip-api",
            "POST",
            "/model/{model_id}/logs",
            path_params={"model_id": model_id},
            json_body=body,
            idempotent_write=True,
        )

    def results_settings(self) -> ResultsSettings:
        """The S3 settings, read and checked on first use."""
        with self._lock:
            if self._results is None:
                self._results = read_results_settings(self._reader)
            return self._results

    def _s3_client(self) -> Any:
        settings = self.results_settings()
        with self._lock:
            if self._s3 is None:
                import boto3
                from botocore.config import Config

                self._s3 = boto3.client(
                    "s3",
                    endpoint_url=settings.endpoint_url,
                    **self._aws_credentials(),
                    config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10),
                )
            return self._s3

    def _aws_credentials(self) -> dict[str, str]:
        """AWS credentials from an explicit ``env`` mapping; boto3 finds its own otherwise."""
        names = {
            "aws_access_key_id": "AWS_ACCESS_KEY_ID",
            "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
            "aws_session_token": "AWS_SESSION_TOKEN",
            "region_name": "AWS_DEFAULT_REGION",
        }
        if not self._reader.has_explicit_env:
            return {}
        found = {arg: self._reader.raw(name) for arg, name in names.items()}
        return {arg: str(value) for arg, value in found.items() if value is not None}

    def upload_results_to_s3(
        self, results_folder: str | Path, model_id: str, *, progress: Progress | None = None
    ) -> str:
        """Zip the folder into ``<prefix>/<model_id>/<YYYYmmdd_HHMMSS>.zip`` in S3, streamed (no temporary file).

        Members that do not compress (model weights, images, archives) are stored, the rest
        deflated; the zip goes up in parts while it is written (see :mod:`flip_nvflare.core.results`).

        Args:
            results_folder: The folder to zip (symlinks in it are skipped, never followed).
            model_id: The model's id.
            progress: Called with (bytes of the files zipped so far, their total) about every percent.

        Returns:
            The ``s3://`` URI of the uploaded object.

        Raises:
            FlipResultsUploadError: Zipping or uploading failed; the folder is left intact.
        """
        from flip_nvflare.errors import FlipResultsUploadError

        model_id = check_model_id(model_id)
        folder = check_results_folder(results_folder)
        settings = self.results_settings()
        key = results_key(settings.prefix, model_id)
        try:
            client = self._s3_client()
            upload_folder_zip(client, folder, settings.bucket, key, progress=progress)
        except FlipResultsUploadError:
            raise
        except Exception as exc:  # zipping or client creation
            raise FlipResultsUploadError(
                f"Preparing the results upload to s3://{settings.bucket}/{key} failed "
                f"({type(exc).__name__}); the results folder was left intact."
            ) from exc
        return f"s3://{settings.bucket}/{key}"


def _answer_path(body: bytes, images_dir: Path | None, net_id: str | None) -> Path:
    """The folder an imaging-api download answer names, if it is strictly inside ``IMAGES_DIR/NET_ID``.

    The answer's ``path`` must be absolute, have no ``..`` part and, with symlinks resolved, lie
    strictly inside this trust's net folder: ``IMAGES_DIR`` itself, the net folder itself, another
    net's folder or anything else outside are refused, and so is every answer when ``IMAGES_DIR``
    or ``NET_ID`` is unset (there is then no folder a download may land in). Messages never name
    the path: it holds an accession id.

    Args:
        body: The answer's JSON body, ``{"path": "<folder>"}``.
        images_dir: ``IMAGES_DIR`` of the settings, if set.
        net_id: ``NET_ID`` of the settings, if set.

    Returns:
        The path as the service gave it.

    Raises:
        FlipInvalidResponse: The answer is not JSON, has no path, or its path is refused.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        raise FlipInvalidResponse("imaging-api download answer is not JSON.") from None
    raw = payload.get("path") if isinstance(payload, dict) else None
    if not isinstance(raw, str) or not raw:
        raise FlipInvalidResponse("imaging-api download answer has no 'path'.")
    path = Path(raw)
    if not path.is_absolute():
        raise FlipInvalidResponse("imaging-api download answer 'path' is not absolute.")
    if images_dir is None or not net_id:
        raise FlipInvalidResponse(
            "imaging-api download answer refused: IMAGES_DIR and NET_ID must be set to know where downloads may land."
        )
    outside = "imaging-api download answer 'path' is not inside this trust's IMAGES_DIR/NET_ID folder."
    if ".." in path.parts:
        raise FlipInvalidResponse(outside)
    try:
        net_dir = (images_dir / net_id).resolve()
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop, an unreadable folder
        raise FlipInvalidResponse(outside) from None
    if resolved == net_dir or not resolved.is_relative_to(net_dir):
        raise FlipInvalidResponse(outside)
    return path
