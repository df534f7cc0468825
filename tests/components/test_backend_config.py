"""FlipBackend: dev or prod from the job config, failing early and clearly when misconfigured."""

from __future__ import annotations

import uuid

import pytest

from flip_nvflare.backend import FlipBackend
from flip_nvflare.errors import FlipConfigError
from tests.components.simjobs import FlipSide, PlanContext, PlannedRun, RunPool, WidgetJob, planned_run

PROD_VARIABLES = (
    "FLIP_API_INTERNAL_URL",
    "INTERNAL_SERVICE_KEY",
    "UPLOADED_FEDERATED_DATA_BUCKET",
    "DATA_ACCESS_API_URL",
    "IMAGING_API_URL",
    "TRUST_INTERNAL_SERVICE_KEY",
    "NET_ID",
    "IMAGES_DIR",
    "FLIP_HUB_API",
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"mode": None}, 'add the top-level key "flip_mode"'),
        ({"mode": "{flip_mode}"}, 'add the top-level key "flip_mode"'),
        ({"mode": "staging"}, "flip_mode must be 'dev' or 'prod'"),
        ({"mode": "prod", "hub_api": "h3"}, "FLIP_HUB_API must be 'h1' or 'h2'"),
        ({"mode": "prod", "model_id": "model-7"}, "model_id must be a UUID"),
        ({"mode": "prod", "hub_concurrency": 0}, "hub_concurrency must be a positive number"),
        ({"mode": "prod", "drain_timeout": -1}, "drain_timeout must be a positive number"),
        ({"mode": "prod", "trust_names": {"site-1": ""}}, "trust_names must map client names"),
    ],
)
def test_bad_arguments_fail_when_the_job_is_built(args: dict[str, object], message: str) -> None:
    with pytest.raises(FlipConfigError, match=message.replace("(", r"\(")):
        FlipBackend(**args)  # type: ignore[arg-type]


def test_mode_and_model_id_are_read_from_the_config_values() -> None:
    model_id = str(uuid.uuid4())
    backend = FlipBackend(mode=" PROD ", model_id=model_id.upper())
    assert backend.mode.value == "prod"


@planned_run("no_flip_mode", seconds=7)
def plan_no_flip_mode(ctx: PlanContext) -> PlannedRun:
    # NVFlare turns an undefined "{flip_mode}" into None: the FlipBackend must refuse it by name
    root = ctx.tmp("no-flip-mode")
    side = FlipSide("flip", "{flip_mode}", {"dev_output_dir": str(root / "dev")})
    job = WidgetJob(root=root, model_id=str(uuid.uuid4()), sides=[side], declare_flip_mode=False)
    return PlannedRun(job, {})


@planned_run("start_failures", seconds=15)
def plan_start_failures(ctx: PlanContext) -> PlannedRun:
    root = ctx.tmp("start-failures")
    prod = FlipSide("flip", "prod")
    dev = FlipSide("flip_dev", "dev", {"dev_output_dir": str(root / "dev")})
    secure = {"id": "secure_mode", "path": "flip_widgets_app.SecureMode"}
    job = WidgetJob(root=root, model_id=str(uuid.uuid4()), sides=[prod, dev], server_extras=[secure])
    return PlannedRun(job, dict.fromkeys(PROD_VARIABLES), {"dev_output": root / "dev"})


@pytest.mark.e2e
def test_undefined_flip_mode_stops_the_job_before_it_starts(widget_runs: RunPool) -> None:
    _, result = widget_runs.result("no_flip_mode")
    assert result.return_code != 0
    assert 'The job config sets no flip_mode: add the top-level key "flip_mode"' in result.server_log()
    assert not result.job.ledger_dir.exists()  # nothing ran


@pytest.mark.e2e
def test_missing_prod_settings_and_dev_in_secure_mode_fail_at_start_run(widget_runs: RunPool) -> None:
    planned, result = widget_runs.result("start_failures")
    assert result.return_code != 0
    log = result.server_log()
    # every missing variable is named, in one message per FlipBackend
    assert (
        "FLIP backend not usable: Missing settings to talk to flip-api: FLIP_API_INTERNAL_URL, INTERNAL_SERVICE_KEY."
        in log
    )
    assert "Missing setting to upload results to S3: UPLOADED_FEDERATED_DATA_BUCKET." in log
    assert "flip_mode is 'dev' but this is a provisioned (secure) deployment" in log
    assert not result.job.ledger_dir.exists()  # no training task ran
    assert not planned.data["dev_output"].exists()  # the dev backend recorded nothing
    client_log = result.job.log("site-1")
    assert (
        "Missing settings to talk to the trust's data-access-api: DATA_ACCESS_API_URL, TRUST_INTERNAL_SERVICE_KEY"
        in client_log
    )
