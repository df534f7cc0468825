"""FLIP Client API apps built with the recipes, run end to end (NVFlare's simulator; prod against the emulator).

- dev, in process, through ``recipe.execute(SimEnv(...))``: the demo's Client API trainer (cohort
  through ``FLIP()``, metrics through ``SummaryWriter`` with and without ``@x_label``, updates
  through ``flare.send``);
- dev, external process and in process: a script that raises at site-2 with an accession id, a
  data path and the query in its message: the hub gets sanitized text and the run ends in ERROR;
- prod, the recipe exported and run by the simulator against the emulator and moto S3.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from flip_emulator.handle import EmulatorHandle
from flip_nvflare_demo.data import DemoData
from tests.e2e.conftest import TRUSTS
from tests.e2e.jobtools import DEMO_CLIENT_API, JOBPARTS, PROD_QUERY, demo_client_api_job, jsonl, read_zip, simulate

pytestmark = pytest.mark.e2e


def _ledger(workspace: Path, job_name: str) -> Path:
    return workspace / job_name / "server" / "simulate_job" / "flip_dev"


@pytest.fixture(scope="module")
def in_process_dev(tmp_path_factory: pytest.TempPathFactory, demo_data: DemoData) -> Path:
    from nvflare.recipe import SimEnv

    root = tmp_path_factory.mktemp("client-api-dev")
    recipe = demo_client_api_job().build(2, 2, "in_process", dev_data=demo_data.root)  # type: ignore[attr-defined]
    recipe.execute(SimEnv(num_clients=2, num_threads=2, workspace_root=str(root)))
    return _ledger(root, recipe.job.name)


def test_a_client_api_run_reports_statuses_metrics_and_results(in_process_dev: Path) -> None:
    statuses = [r["status"] for r in jsonl(in_process_dev / "status.jsonl")]
    assert statuses == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]
    metrics = jsonl(in_process_dev / "metrics.jsonl")
    assert {m["model_id"] for m in metrics} == {"00000000-0000-0000-0000-000000000000"}  # the dev id
    for trust in TRUSTS:
        losses = [m for m in metrics if m["trust"] == trust and m["label"] == "train_loss"]
        # SummaryWriter "train_loss@epoch": the x axis is the epoch (global_step), in order
        assert [m["x_label"] for m in losses] == ["epoch"] * 6
        assert [m["x_value"] for m in losses] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        accuracy = [m for m in metrics if m["trust"] == trust and m["label"] == "val_accuracy"]
        # no "@": the hub's default axis (the round)
        assert [m["global_round"] for m in accuracy] == [0, 1] and all("x_label" not in m for m in accuracy)
    (zip_path,) = (in_process_dev / "results").glob("*/*.zip")
    content = read_zip(zip_path)
    assert {"FL_global_model.pt", "best_FL_global_model.pt", "cross_val_results.json"} <= set(content.names)
    summary = content.json("run_summary.json")
    assert summary["outcome"] == "completed" and summary["rounds_aggregated"] == 2


@pytest.fixture(scope="module", params=["external_process", "in_process"])
def failing_script(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, demo_data: DemoData
) -> tuple[Path, Path]:
    from nvflare.recipe import SimEnv

    from flip_nvflare.recipes import FlipFedAvgRecipe

    root = tmp_path_factory.mktemp("client-api-failing")
    script = root / "trainer.py"
    shutil.copy(JOBPARTS / "client_api_failing_trainer.py", script)
    recipe = FlipFedAvgRecipe(
        num_rounds=1,
        min_clients=2,
        train_script="trainer.py",
        train_args="",
        project_id="encrypted-project-envelope-0001",
        query="SELECT accession_id, label FROM omop.secret_cohort WHERE year_of_birth < 1950",
        execution_mode=request.param,
        dev_dataframe=f"{demo_data.root}/{{SITE_NAME}}/cohort.csv",
        dev_images_dir=f"{demo_data.root}/{{SITE_NAME}}/images",
    )
    recipe.job.add_file_to_clients(str(script))
    recipe.job.add_file_to_server(str(DEMO_CLIENT_API.parent / "app" / "models.py"))
    try:
        recipe.execute(SimEnv(num_clients=2, num_threads=2, workspace_root=str(root / "ws")))
    except RuntimeError:
        pass  # SimEnv raises when the simulator's exit code says the run failed
    return _ledger(root / "ws", recipe.job.name), demo_data.root


def test_a_raising_script_reaches_the_hub_sanitized_and_the_run_ends_in_error(
    failing_script: tuple[Path, Path],
) -> None:
    ledger, data_root = failing_script
    exceptions = [r for r in jsonl(ledger / "logs.jsonl") if "event_type" not in r]
    assert len(exceptions) == 1, exceptions
    text = str(exceptions[0])
    assert "Trust_2" in text and "FileNotFoundError" in text
    assert not re.search(r"ACC\w*\d{4,}", text), text
    assert str(data_root) not in text and "secret_cohort" not in text and "year_of_birth" not in text
    statuses = [r["status"] for r in jsonl(ledger / "status.jsonl")]
    assert statuses[-1] == "ERROR" and "RESULTS_UPLOADED" not in statuses


@pytest.fixture(scope="module")
def exported_prod(tmp_path_factory: pytest.TempPathFactory, emulator: EmulatorHandle) -> tuple[object, object, Path]:
    root = tmp_path_factory.mktemp("client-api-prod")
    model = emulator.register_model(trusts=TRUSTS)
    recipe = demo_client_api_job().build(  # type: ignore[attr-defined]
        2,
        2,
        "in_process",
        flip_mode="prod",
        model_id=model.model_id,
        project_id=model.encrypted_project_id,
        query=PROD_QUERY,
    )
    recipe.export(root / "export")
    job = root / "export" / recipe.job.name
    simulate(job, root / "workspace", env=emulator.env())
    return model, emulator.records(model.model_id), job


def test_an_exported_prod_recipe_job_reports_to_the_hub_and_uploads(
    exported_prod: tuple[object, object, Path], emulator: EmulatorHandle
) -> None:
    model, records, job = exported_prod
    assert records.status_names()[-1] == "RESULTS_UPLOADED"  # type: ignore[attr-defined]
    metrics = records.metrics  # type: ignore[attr-defined]
    assert {m.trust for m in metrics} == set(TRUSTS)
    assert emulator.results(model.model_id)  # type: ignore[attr-defined]
    assert not (job / "app" / "custom" / "flip_nvflare").exists()  # no copy of flip-nvflare in the job


def _checkpoints(folder: Path) -> Path:
    """The demo config's two models as checkpoints of the demo's model (random weights: the evaluation is tested)."""
    import torch

    sys.path.insert(0, str(DEMO_CLIENT_API.parent / "app"))
    try:
        from models import get_model
    finally:
        sys.path.remove(str(DEMO_CLIENT_API.parent / "app"))
    folder.mkdir(parents=True)
    for name in ("FL_global_model.pt", "best_FL_global_model.pt"):
        torch.manual_seed(len(name))
        torch.save(get_model().state_dict(), folder / name)
    return folder


@pytest.fixture(scope="module")
def evaluation_dev(tmp_path_factory: pytest.TempPathFactory, demo_data: DemoData) -> Path:
    from nvflare.recipe import SimEnv

    root = tmp_path_factory.mktemp("client-api-eval-dev")
    recipe = demo_client_api_job().build_evaluation(2, _checkpoints(root / "checkpoints"), dev_data=demo_data.root)  # type: ignore[attr-defined]
    recipe.execute(SimEnv(num_clients=2, num_threads=2, workspace_root=str(root / "ws")))
    return _ledger(root / "ws", recipe.job.name)


def test_a_client_api_evaluation_reports_each_models_metrics_per_trust(evaluation_dev: Path) -> None:
    statuses = [r["status"] for r in jsonl(evaluation_dev / "status.jsonl")]
    assert statuses[-1] == "RESULTS_UPLOADED", statuses
    metrics = jsonl(evaluation_dev / "metrics.jsonl")
    for trust in TRUSTS:
        labels = {m["label"] for m in metrics if m["trust"] == trust}
        assert {"final/accuracy", "best/accuracy", "final/n_cases"} <= labels, labels
    (zip_path,) = (evaluation_dev / "results").glob("*/*.zip")
    content = read_zip(zip_path)
    assert "FL_global_model.pt" not in content.names  # the checkpoints stay on the server
    failures = content.json("evaluation_failures.json")
    assert failures == []


@pytest.fixture(scope="module")
def evaluation_prod(tmp_path_factory: pytest.TempPathFactory, emulator: EmulatorHandle) -> tuple[object, object]:
    """The evaluation recipe in prod, through recipe.execute(SimEnv) with the sites' environment set."""
    import os

    from nvflare.recipe import SimEnv

    root = tmp_path_factory.mktemp("client-api-eval-prod")
    model = emulator.register_model(trusts=TRUSTS)
    recipe = demo_client_api_job().build_evaluation(  # type: ignore[attr-defined]
        2,
        _checkpoints(root / "checkpoints"),
        flip_mode="prod",
        model_id=model.model_id,
        project_id=model.encrypted_project_id,
        query=PROD_QUERY,
    )
    saved = dict(os.environ)
    os.environ.update(emulator.env())
    try:
        recipe.execute(SimEnv(num_clients=2, num_threads=2, workspace_root=str(root / "ws")))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return model, emulator.records(model.model_id)


def test_a_prod_client_api_evaluation_reaches_the_hub(
    evaluation_prod: tuple[object, object], emulator: EmulatorHandle
) -> None:
    model, records = evaluation_prod
    assert records.status_names()[-1] == "RESULTS_UPLOADED"  # type: ignore[attr-defined]
    by_trust = {m.trust for m in records.metrics if m.label.startswith("final/")}  # type: ignore[attr-defined]
    assert by_trust == set(TRUSTS)
    assert emulator.results(model.model_id)  # type: ignore[attr-defined]
