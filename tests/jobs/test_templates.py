import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pyhocon import ConfigFactory

from flip_nvflare.constants import JobType
from flip_nvflare.jobs.templates import (
    STYLES,
    TEMPLATE_FILES,
    template_dir,
    template_name,
    templates_root,
)

SERVER_KEYS = {"model_id", "global_rounds", "min_clients", "participating_clients", "ignore_result_error", "flip_mode"}
CLIENT_KEYS = {"project_id", "query", "flip_mode"}
SYSTEM_VARIABLES = {"SITE_NAME", "JOB_ID", "WORKSPACE", "SECURE_MODE", "JOB_CUSTOM_DIR"}
REFERENCE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _load(job_type: JobType, name: str, style: str = "executor") -> dict[str, Any]:
    return json.loads((template_dir(job_type, style) / name).read_text())


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _paths(config: dict[str, Any]) -> list[str]:
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("path"), str):
                found.append(value["path"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(config)
    return found


def test_top_level_job_templates_is_the_packaged_folder() -> None:
    top = Path(__file__).resolve().parents[2] / "job_templates"
    assert top.resolve() == templates_root().resolve()
    names = sorted(template_name(t, style) for t in JobType for style in STYLES)
    assert sorted(p.name for p in templates_root().iterdir() if p.is_dir()) == names


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("job_type", list(JobType))
def test_template_files_and_top_level_keys(job_type: JobType, style: str) -> None:
    folder = template_dir(job_type, style)
    assert sorted(p.name for p in folder.iterdir()) == sorted(TEMPLATE_FILES)
    info = ConfigFactory.parse_file(str(folder / "info.conf"))
    assert info["description"] and info["controller_type"] == "server"
    meta = ConfigFactory.parse_file(str(folder / "meta.conf"))
    assert meta["name"] == template_name(job_type, style) and meta["deploy_map"]["app"] == ["@ALL"]
    server = _load(job_type, "config_fed_server.json", style)
    client = _load(job_type, "config_fed_client.json", style)
    assert SERVER_KEYS <= set(server) and CLIENT_KEYS <= set(client)
    assert server["format_version"] == client["format_version"] == 2


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("job_type", list(JobType))
@pytest.mark.parametrize("name", ["config_fed_server.json", "config_fed_client.json"])
def test_every_reference_names_a_top_level_key(job_type: JobType, name: str, style: str) -> None:
    config = _load(job_type, name, style)
    texts = _strings({k: v for k, v in config.items() if isinstance(v, (dict, list))})
    refs = [ref for text in texts for ref in REFERENCE.findall(text)]
    assert refs, f"{name}: no {{reference}} found to check"
    for ref in refs:
        assert ref in config or ref in SYSTEM_VARIABLES, f"{name}: {{{ref}}} is not defined"


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("job_type", list(JobType))
@pytest.mark.parametrize("name", ["config_fed_server.json", "config_fed_client.json"])
def test_every_component_path_imports(job_type: JobType, name: str, style: str) -> None:
    paths = _paths(_load(job_type, name, style))
    assert paths, f"{name}: no component path found to check"
    for path in paths:
        module_name, _, attribute = path.rpartition(".")
        if module_name == "models":  # the app's own models.get_model, from custom/
            continue
        assert callable(getattr(importlib.import_module(module_name), attribute)), path


@pytest.mark.parametrize("job_type", [JobType.STANDARD, JobType.FED_OPT])
def test_training_templates_wire_flip_components(job_type: JobType) -> None:
    server, client = _load(job_type, "config_fed_server.json"), _load(job_type, "config_fed_client.json")
    ids = {c["id"]: c for c in server["components"]}
    assert ids["flip"]["args"] == {"mode": "{flip_mode}", "model_id": "{model_id}"}
    assert ids["persistor"]["args"]["model"] == "model" and ids["model"]["path"] == "models.get_model"
    assert ids["model_selector"]["args"]["key_metric"] == "val_accuracy"
    assert ids["model_locator"]["args"]["pt_persistor_id"] == "persistor"
    workflows = [w["path"].rsplit(".", 1)[1] for w in server["workflows"]]
    assert workflows == ["InitTraining", "ScatterAndGather", "CrossSiteModelEval", "CleanupClients"]
    sag = server["workflows"][1]["args"]
    assert (sag["num_rounds"], sag["min_clients"], sag["ignore_result_error"]) == (
        "{global_rounds}",
        "{min_clients}",
        "{ignore_result_error}",
    )
    tasks = {task: e["executor"]["path"].rsplit(".", 1)[1] for e in client["executors"] for task in e["tasks"]}
    assert tasks == {
        "init_training": "CohortPreparer",
        "train": "TrainerRunner",
        "submit_model": "TrainerRunner",
        "validate": "ValidatorRunner",
        "post_validation": "ImageCleanup",
    }
    (privacy,) = client["task_result_filters"]
    assert privacy["tasks"] == ["train"]
    assert privacy["filters"][0]["args"]["off"] is False


def test_fed_opt_uses_a_server_optimizer() -> None:
    server = _load(JobType.FED_OPT, "config_fed_server.json")
    generator = next(c for c in server["components"] if c["id"] == "shareable_generator")
    assert generator["args"]["source_model"] == "model"
    assert generator["args"]["optimizer_args"]["path"] == "torch.optim.SGD"
    assert generator["args"]["optimizer_args"]["config_type"] == "dict"


def test_evaluation_template_wiring() -> None:
    server, client = (
        _load(JobType.EVALUATION, "config_fed_server.json"),
        _load(JobType.EVALUATION, "config_fed_client.json"),
    )
    workflows = [w["path"].rsplit(".", 1)[1] for w in server["workflows"]]
    assert workflows == ["InitEvaluation", "EvaluateModels", "CleanupClients"]
    assert server["workflows"][1]["args"]["task_name"] == "evaluate"
    ids = {c["id"]: c["path"].rsplit(".", 1)[1] for c in server["components"]}
    assert ids["model_locator"] == "CheckpointModelLocator"
    assert ids["evaluation_json_generator"] == "EvaluationJsonGenerator"
    assert ids["evaluation_reporter"] == "EvaluationReporter"
    tasks = {task: e["executor"]["path"].rsplit(".", 1)[1] for e in client["executors"] for task in e["tasks"]}
    assert tasks == {"init_task": "CohortPreparer", "evaluate": "EvaluatorRunner", "post_task": "ImageCleanup"}
