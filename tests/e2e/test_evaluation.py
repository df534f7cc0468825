"""flip_evaluation end to end: every model to each client (EvaluateModels; the demo's evaluator reads one model
per call, so the runner hands them over one at a time), checkpoints kept on the server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flip_emulator.handle import EmulatorHandle
from flip_nvflare.constants import JobType
from flip_nvflare_demo.cli import DEMO_MODEL_ID
from flip_nvflare_demo.data import DemoData
from flip_nvflare_demo.report import LEARNED
from tests.e2e.conftest import DemoRun, DevRun, ProdRun, prod_run
from tests.e2e.jobtools import copy_app, dev_ledger, jsonl, load_config, nvflare_job_create, read_zip, simulate

pytestmark = pytest.mark.e2e

MODELS = {"trained": {"checkpoint": "trained.pt"}, "initial": {"checkpoint": "initial.pt"}}
#: Prod adds a model whose checkpoint does not fit the app's architecture: its evaluation fails everywhere.
PROD_MODELS = {**MODELS, "broken": {"checkpoint": "broken.pt"}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, demo_run: DemoRun) -> Path:
    """The final model of the demo's training run, and the untrained initial model."""
    folder = tmp_path_factory.mktemp("checkpoints")
    (results,) = (demo_run.server_run_dir / "flip_dev" / "results" / DEMO_MODEL_ID).glob("*.zip")
    (folder / "trained.pt").write_bytes(read_zip(results).files["FL_global_model.pt"])
    import sys

    sys.path.insert(0, str(demo_run.job / "app" / "custom"))
    try:
        from models import get_model  # the demo app's

        torch.save(get_model().state_dict(), folder / "initial.pt")
        torch.save({"classifier.weight": torch.zeros(3, 3)}, folder / "broken.pt")
    finally:
        sys.path.pop(0)
    return folder


@pytest.fixture(scope="module")
def evaluation_dev(tmp_path_factory: pytest.TempPathFactory, checkpoints: Path, demo_data: DemoData) -> DevRun:
    """A job made by ``nvflare job create`` with the checkpoints inside the app (the bundled fallback)."""
    root = tmp_path_factory.mktemp("evaluation-dev")
    app = copy_app(root / "app", models=MODELS)
    for name in ("trained.pt", "initial.pt"):
        (app / name).write_bytes((checkpoints / name).read_bytes())
    job = root / "job"
    nvflare_job_create("flip_evaluation", app, job, root / "home")
    site = demo_data.site("site-2")
    env = {"DEV_DATAFRAME": str(site.cohort_csv), "DEV_IMAGES_DIR": str(site.images_dir)}
    return DevRun(job, simulate(job, root / "workspace", env=env))


@pytest.fixture(scope="module")
def evaluation_prod(tmp_path_factory: pytest.TempPathFactory, emulator: EmulatorHandle, checkpoints: Path) -> ProdRun:
    root = tmp_path_factory.mktemp("evaluation-prod")
    copy_app(root / "app", models=PROD_MODELS)
    from flip_nvflare.jobs.create import JobRequest, create_job

    job = create_job(JobRequest(JobType.EVALUATION, root / "app", root / "job", checkpoints_dir=checkpoints))
    return prod_run(emulator, root, JobType.EVALUATION, style="hub", job=job)


def _results_zip(run: DevRun):
    model_id = load_config(run.job, "server")["model_id"]
    (zip_path,) = (dev_ledger(run.result) / "results" / model_id).glob("*.zip")
    return read_zip(zip_path)


def _evaluation_results(run: DevRun) -> dict:
    return _results_zip(run).json("evaluation_results.json")


def test_every_model_is_evaluated_at_every_site(evaluation_dev: DevRun) -> None:
    results = _evaluation_results(evaluation_dev)
    assert sorted(results) == ["site-1", "site-2"]
    for site, models in results.items():
        assert sorted(models) == ["initial", "trained"], site
        assert set(models["trained"]) == {"accuracy", "sensitivity", "specificity", "n_cases"}
        assert models["trained"]["n_cases"] == 56
        assert models["trained"]["accuracy"] >= LEARNED
        assert models["trained"]["accuracy"] > models["initial"]["accuracy"]


def test_dev_statuses(evaluation_dev: DevRun) -> None:
    statuses = [json.loads(line)["status"] for line in (dev_ledger(evaluation_dev.result) / "status.jsonl").open()]
    assert statuses == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]


def test_final_metrics_reach_the_hub_and_the_failures_file_is_written(evaluation_dev: DevRun) -> None:
    metrics = jsonl(dev_ledger(evaluation_dev.result) / "metrics.jsonl")
    sent = {(m["fl_client_name"], m["global_round"], m["label"]): m["result"] for m in metrics}
    results = _evaluation_results(evaluation_dev)
    for site in ("site-1", "site-2"):
        for model in ("trained", "initial"):
            for metric in ("accuracy", "sensitivity", "specificity", "n_cases"):
                assert sent[(site, 0, f"{model}/{metric}")] == results[site][model][metric]
    assert _results_zip(evaluation_dev).json("evaluation_failures.json") == []


def test_bundled_checkpoints_are_used_with_a_warning(evaluation_dev: DevRun) -> None:
    assert "CheckpointModelLocator has no checkpoint_dir" in evaluation_dev.result.log_path.read_text()


def test_prod_run_keeps_checkpoints_on_the_server(evaluation_prod: ProdRun, checkpoints: Path) -> None:
    custom = evaluation_prod.job / "app" / "custom"
    assert not list(custom.glob("*.pt"))
    secrets = {(checkpoints / name).read_bytes() for name in ("trained.pt", "initial.pt")}
    workspace = evaluation_prod.result.workspace
    for site in ("site-1", "site-2"):
        files = [path for path in (workspace / site).rglob("*") if path.is_file()]
        assert files, f"{site} left nothing in the workspace"
        for path in files:
            assert path.read_bytes() not in secrets, f"checkpoint reached {site}: {path}"


def test_prod_run_hub_record_and_results(evaluation_prod: ProdRun) -> None:
    records = evaluation_prod.records
    assert records.status_names() == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]
    results = evaluation_prod.results_zip.json("evaluation_results.json")
    assert sorted(results) == ["site-1", "site-2"]
    for models in results.values():
        assert sorted(models) == ["broken", "initial", "trained"]
        assert models["trained"]["n_cases"] > 0
        assert "error" in models["broken"]
    labels = {(m.trust, m.label) for m in records.metrics}
    for trust in ("Trust_1", "Trust_2"):
        assert {(trust, "trained/accuracy"), (trust, "initial/accuracy")} <= labels
        assert not any(label.startswith("broken/") for t, label in labels if t == trust)


def test_a_failed_evaluation_is_listed_and_reported_without_stopping_the_run(evaluation_prod: ProdRun) -> None:
    failures = evaluation_prod.results_zip.json("evaluation_failures.json")
    assert failures == [
        {"site": "site-1", "model": "broken", "reason": "EXECUTION_EXCEPTION"},
        {"site": "site-2", "model": "broken", "reason": "EXECUTION_EXCEPTION"},
    ]
    errors = [log for log in evaluation_prod.records.logs if not log.success and log.log]
    assert sorted(log.trust for log in errors) == ["Trust_1", "Trust_2"]
    for log in errors:
        assert "load_state_dict" in log.log or "state_dict" in log.log, log.log
