"""FLIPStandardProd against the FLIP services emulator and moto's S3 server, over real sockets.

Retry and timeout behaviour under injected faults is covered in tests/emulator/test_faults_core.py;
this module covers each method's request and result, what is refused before any request, typed
errors, results in S3, and what reaches the logs.
"""

from __future__ import annotations

import logging
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import boto3
import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.constants import ModelStatus, ResourceType
from flip_nvflare.core.http import RetryPolicy, join_url
from flip_nvflare.core.prod import FLIPStandardProd
from flip_nvflare.errors import (
    FlipAuthenticationError,
    FlipInvalidArgument,
    FlipNotFoundError,
    FlipRequestRejected,
    FlipResultsUploadError,
)

COHORT_SQL = "SELECT io.person_id, io.accession_id FROM omop.image_occurrence io ORDER BY io.image_occurrence_id"


@pytest.fixture
def emu(flip_emulator_shared: EmulatorHandle) -> EmulatorHandle:
    return flip_emulator_shared


_ROUTES = {"flip-api": ("hub", "/api/"), "data-access-api": ("trust", "/cohort/"), "imaging-api": ("trust", "/")}


def _count(emu: EmulatorHandle, service: str) -> int:
    side, prefix = _ROUTES[service]
    records = emu.requests(side)
    if service == "imaging-api":
        return sum(1 for r in records if "/images/" in r.path)
    return sum(1 for r in records if r.path.startswith(prefix))


# --------------------------------------------------------------------------- URL joining


@pytest.mark.parametrize(
    ("base", "route", "expected"),
    [
        ("http://h:8000", "/cohort/dataframe", "http://h:8000/cohort/dataframe"),
        ("http://h:8000/", "/cohort/dataframe", "http://h:8000/cohort/dataframe"),
        ("http://h:8000/api", "/model/x/metrics", "http://h:8000/api/model/x/metrics"),
        ("http://h:8000/api/", "model/x/metrics", "http://h:8000/api/model/x/metrics"),
        ("http://h/trust-1//", "//cohort/dataframe", "http://h/trust-1/cohort/dataframe"),
    ],
)
def test_join_url_never_makes_a_double_slash(base: str, route: str, expected: str) -> None:
    assert join_url(base, route) == expected


@pytest.mark.parametrize("suffix", ["", "/"])
@pytest.mark.parametrize("prefix", ["", "/gateway/flip"])
def test_each_side_sends_only_its_own_key_and_base_urls_join_cleanly(
    emu: EmulatorHandle, prefix: str, suffix: str
) -> None:
    """Base URLs with or without trailing slash and path prefix; each call carries only its own key."""
    emu.set_settings(path_prefix=prefix)
    model = emu.register_model(trusts=["Trust_1"]).model_id
    hub_root = emu.hub_url.removesuffix("/api")
    backend = emu.prod_backend(
        flip_api_url=f"{hub_root}{prefix}/api{suffix}",
        data_access_api_url=f"{emu.data_access_url.rstrip('/')}{prefix}{suffix}",
        imaging_api_url=f"{emu.imaging_url.rstrip('/')}{prefix}{suffix}",
    )
    backend.update_status(model, ModelStatus.INITIATED)
    backend.send_metrics("site-1", model, "LOSS_FUNCTION", 0.25, 2)
    frame = backend.get_dataframe(emu.encrypted_project_id, COHORT_SQL)
    backend.get_by_accession_number(
        emu.encrypted_project_id, str(frame["accession_id"].iloc[0]), [ResourceType.NIFTI, ResourceType.SEG]
    )
    backend.close()
    hub = [(r.method, r.path, r.status_code, r.key_headers) for r in emu.requests("hub")]
    trust = [(r.method, r.path, r.status_code, r.key_headers) for r in emu.requests("trust")]
    assert hub == [
        ("PUT", f"{prefix}/api/model/{model}/status/INITIATED", 200, "idempotency-key,x-internal-service-key"),
        ("POST", f"{prefix}/api/model/{model}/metrics", 204, "idempotency-key,x-internal-service-key"),
    ]
    assert [(m, p) for m, p, _, _ in trust] == [
        ("POST", f"{prefix}/cohort/dataframe"),
        ("POST", f"{prefix}/download/images/{emu.net_id}"),
        ("POST", f"{prefix}/download/images/{emu.net_id}"),
    ]
    assert {(code, keys) for _, _, code, keys in trust} == {(200, "x-trust-internal-service-key")}


def test_a_prefixed_service_does_not_answer_without_its_prefix(emu: EmulatorHandle) -> None:
    emu.set_settings(path_prefix="/gateway")
    with pytest.raises(FlipNotFoundError):
        emu.prod_backend().get_dataframe(emu.encrypted_project_id, COHORT_SQL)


def test_custom_key_header_names(emu: EmulatorHandle) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    backend = emu.prod_backend(hub_key_header="X-Hub-Key", trust_key_header="X-Trust-Key")
    with pytest.raises(FlipAuthenticationError):
        backend.update_status(model, ModelStatus.INITIATED)
    with pytest.raises(FlipAuthenticationError):
        backend.get_dataframe(emu.encrypted_project_id, COHORT_SQL)
    assert [r.key_headers for r in emu.requests()] == ["idempotency-key,x-hub-key", "x-trust-key"]


# --------------------------------------------------------------------------- trust side


def test_dataframe_matches_the_trust_database(emu: EmulatorHandle) -> None:
    frame = emu.prod_backend().get_dataframe(emu.encrypted_project_id, COHORT_SQL)
    assert list(frame.columns) == ["person_id", "accession_id"]
    assert len(frame) > 10 and frame["accession_id"].is_unique
    assert [c.status_code for c in emu.cohort_queries()] == [200]


@pytest.mark.parametrize(
    ("query", "error", "status", "detail"),
    [
        ("DELETE FROM omop.person", FlipRequestRejected, 400, None),
        ("SELECT person_id FROM omop.person WHERE person_id = 1", FlipRequestRejected, 403, "too small"),
    ],
)
def test_rejected_queries_are_typed_final_and_keep_the_sql_out(
    emu: EmulatorHandle, query: str, error: type[Exception], status: int, detail: str | None
) -> None:
    before = _count(emu, "data-access-api")
    with pytest.raises(error) as err:
        emu.prod_backend().get_dataframe(emu.encrypted_project_id, query)
    assert getattr(err.value, "status_code", None) == status
    if detail:
        assert detail in str(err.value)
    assert query not in str(err.value)
    assert "data-access-api POST /cohort/dataframe" in str(err.value)
    assert _count(emu, "data-access-api") == before + 1  # no retry


def test_wrong_trust_key_is_final(emu: EmulatorHandle) -> None:
    before = _count(emu, "data-access-api")
    with pytest.raises(FlipAuthenticationError) as err:
        emu.prod_backend(trust_key="wrong").get_dataframe(emu.encrypted_project_id, COHORT_SQL)
    assert err.value.status_code == 401 and "wrong" not in str(err.value)
    assert _count(emu, "data-access-api") == before + 1


def test_tampered_project_envelope_is_rejected(emu: EmulatorHandle) -> None:
    with pytest.raises(FlipRequestRejected) as err:
        emu.prod_backend().get_dataframe(emu.encrypted_project_id + "x", COHORT_SQL)
    assert err.value.status_code == 400


@pytest.mark.parametrize("accession", ["", ".", "..", "../x", "a/b", "x y"])
def test_unsafe_accession_ids_are_refused_before_any_request(emu: EmulatorHandle, accession: str) -> None:
    before = _count(emu, "imaging-api")
    with pytest.raises(FlipInvalidArgument):
        emu.prod_backend().get_by_accession_number(emu.encrypted_project_id, accession)
    assert _count(emu, "imaging-api") == before


def test_unknown_accession_is_not_found_without_the_id(emu: EmulatorHandle) -> None:
    with pytest.raises(FlipNotFoundError) as err:
        emu.prod_backend().get_by_accession_number(emu.encrypted_project_id, "NOPE-424242")
    assert "NOPE-424242" not in str(err.value) and err.value.status_code == 404


def test_download_lands_under_images_dir(emu: EmulatorHandle) -> None:
    backend = emu.prod_backend()
    frame = backend.get_dataframe(emu.encrypted_project_id, COHORT_SQL)
    accession = str(frame["accession_id"].iloc[0])
    folder = backend.get_by_accession_number(emu.encrypted_project_id, accession)
    assert folder == emu.images_dir / emu.net_id / accession
    assert any(folder.rglob("*.nii.gz"))
    (download,) = [d for d in emu.downloads() if d.accession_id == accession]
    assert (download.resource_type, download.assessor_type, download.status_code) == ("NIFTI", "scan", 200)


def test_cleanup_stays_inside_the_net_folder(emu: EmulatorHandle, tmp_path: Path) -> None:
    backend = emu.prod_backend()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(FlipInvalidArgument):
        backend.cleanup(outside)
    with pytest.raises(FlipInvalidArgument):
        backend.cleanup(emu.images_dir / emu.net_id)
    assert outside.exists()


# --------------------------------------------------------------------------- hub side


@pytest.mark.parametrize("hub_api", ["h1", "h2"])
def test_metrics_body_per_hub_generation(emu: EmulatorHandle, hub_api: str) -> None:
    emu.set_hub_api(hub_api)
    model = emu.register_model(trusts=["Trust_1"]).model_id
    backend = emu.prod_backend(hub_api=hub_api)
    assert backend.send_metrics("site-1", model, "train_loss", 0.5, 3, x_value=12.0, x_label="epoch")
    (metric,) = emu.records(model).metrics
    assert (metric.trust, metric.global_round, metric.label, metric.result) == ("Trust_1", 3, "train_loss", 0.5)
    if hub_api == "h2":
        assert (metric.x_value, metric.x_label) == (12.0, "epoch")
    else:
        assert metric.x_label in (None, "Global Rounds")


def test_invalid_model_id_and_nan_metric_send_nothing(emu: EmulatorHandle, caplog: pytest.LogCaptureFixture) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    backend = emu.prod_backend()
    before = _count(emu, "flip-api")
    with pytest.raises(FlipInvalidArgument):
        backend.update_status("not-a-uuid", ModelStatus.INITIATED)
    with caplog.at_level(logging.WARNING):
        assert backend.send_metrics("site-1", model, "LOSS_FUNCTION", float("nan"), 1) is False
        assert backend.send_metrics("site-1", model, "LOSS_FUNCTION", float("inf"), 1) is False
    assert "not a finite number" in caplog.text
    assert _count(emu, "flip-api") == before


def test_hub_errors_are_typed_and_final(emu: EmulatorHandle) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    before = _count(emu, "flip-api")
    with pytest.raises(FlipRequestRejected) as err:
        emu.prod_backend().send_metrics("site-9", model, "LOSS_FUNCTION", 1.0, 0)
    assert err.value.status_code == 400 and err.value.detail
    with pytest.raises(FlipAuthenticationError):
        emu.prod_backend(hub_key="wrong").update_status(model, ModelStatus.INITIATED)
    with pytest.raises(FlipNotFoundError):
        emu.prod_backend().update_status("3fa85f64-5717-4562-b3fc-2c963f66afa6", ModelStatus.INITIATED)
    assert _count(emu, "flip-api") == before + 3


def test_a_trust_process_needs_no_hub_settings(emu: EmulatorHandle) -> None:
    trust_only = FLIPStandardProd(data_access_api_url=emu.data_access_url, trust_key=emu.trust_key, env={})
    assert len(trust_only.get_dataframe(emu.encrypted_project_id, COHORT_SQL)) > 0
    with pytest.raises(Exception, match="FLIP_API_INTERNAL_URL"):
        trust_only.update_status("3fa85f64-5717-4562-b3fc-2c963f66afa6", ModelStatus.INITIATED)


# --------------------------------------------------------------------------- results in S3


def _results_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "FL_global_model.pt").write_bytes(b"weights" * 1000)
    (folder / "cross_site_val.json").write_text('{"site-1": {"acc": 0.9}}')
    return folder


def _s3(emu: EmulatorHandle) -> Any:
    env = emu.env()
    return boto3.client(
        "s3",
        endpoint_url=emu.s3_endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )


@pytest.mark.parametrize("bucket_form", ["bare", "trailing-slash", "prefixed"])
def test_results_keys_for_bare_and_prefixed_buckets(emu: EmulatorHandle, tmp_path: Path, bucket_form: str) -> None:
    s3 = _s3(emu)
    bucket = f"results-{bucket_form}"
    s3.create_bucket(Bucket=bucket)
    uri = {"bare": f"s3://{bucket}", "trailing-slash": f"{bucket}/", "prefixed": f"s3://{bucket}/flip/results/"}
    model = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    backend = FLIPStandardProd(results_bucket=uri[bucket_form], env=emu.env())
    folder = _results_folder(tmp_path)
    stored = backend.upload_results_to_s3(folder, model)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert len(keys) == 1 and stored == f"s3://{bucket}/{keys[0]}"
    expected_prefix = "flip/results/" if bucket_form == "prefixed" else ""
    assert keys[0].startswith(f"{expected_prefix}{model}/") and not keys[0].startswith("/")
    stamp = keys[0].rsplit("/", 1)[1]
    assert len(stamp) == len("20260101_120000.zip") and stamp[8] == "_"
    body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    with zipfile.ZipFile(BytesIO(body)) as zf:
        assert sorted(zf.namelist()) == ["cross_site_val.json", "models/FL_global_model.pt"]
        assert zf.read("models/FL_global_model.pt") == b"weights" * 1000
    assert (folder / "models" / "FL_global_model.pt").exists()


def test_upload_failure_keeps_the_folder(emu: EmulatorHandle, tmp_path: Path) -> None:
    folder = _results_folder(tmp_path)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    backend = FLIPStandardProd(results_bucket="s3://no-such-bucket", env=emu.env())
    with pytest.raises(FlipResultsUploadError) as err:
        backend.upload_results_to_s3(folder, "3fa85f64-5717-4562-b3fc-2c963f66afa6")
    assert "left intact" in str(err.value)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


def test_upload_refuses_a_missing_folder(emu: EmulatorHandle, tmp_path: Path) -> None:
    with pytest.raises(FlipInvalidArgument):
        FLIPStandardProd(env=emu.env()).upload_results_to_s3(tmp_path / "nope", "3fa85f64-5717-4562-b3fc-2c963f66afa6")


# --------------------------------------------------------------------------- logs


def test_nothing_sensitive_reaches_the_logs(
    emu: EmulatorHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = emu.register_model(trusts=["Trust_1"]).model_id
    backend = FLIPStandardProd(env=emu.env(), retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    caplog.set_level(logging.DEBUG, logger="flip_nvflare")
    caplog.set_level(logging.INFO)
    frame = backend.get_dataframe(emu.encrypted_project_id, COHORT_SQL)
    accessions = [str(a) for a in frame["accession_id"].iloc[:2]]
    folders = [backend.get_by_accession_number(emu.encrypted_project_id, a) for a in accessions]
    with pytest.raises(FlipRequestRejected):
        backend.get_dataframe(emu.encrypted_project_id, "SELECT secret_column_xyz FROM omop.person")
    with pytest.raises(FlipNotFoundError):
        backend.get_by_accession_number(emu.encrypted_project_id, "MISSING-ACC-999")
    backend.update_status(model, ModelStatus.INITIATED)
    backend.send_metrics("site-1", model, "LOSS_FUNCTION", 0.1, 0)
    backend.upload_results_to_s3(_results_folder(tmp_path), model)
    text = caplog.text
    assert "flip-api PUT /model/" in text and "data-access-api POST /cohort/dataframe" in text
    for secret in [
        emu.hub_key,
        emu.trust_key,
        COHORT_SQL,
        "secret_column_xyz",
        "MISSING-ACC-999",
        *accessions,
        *(str(f) for f in folders),
    ]:
        assert secret not in text, "sensitive value in logs"


@pytest.mark.parametrize("hub_api", ["h1", "h2"])
def test_a_run_level_log_is_one_hub_row_on_h2_and_one_per_trust_on_h1(emu: EmulatorHandle, hub_api: str) -> None:
    emu.set_hub_api(hub_api)
    model = emu.register_model(trusts=["Trust_1", "Trust_2"]).model_id
    sent = emu.prod_backend(hub_api=hub_api).send_run_log(model, "the run could not go on", ["Trust_1", "Trust_2"])
    logs = emu.records(model).logs
    assert sent == len(logs) and all(log.log == "the run could not go on" for log in logs)
    if hub_api == "h2":
        assert [log.fl_client_name for log in logs] == [None]
    else:
        assert sorted(log.trust for log in logs) == ["Trust_1", "Trust_2"]
