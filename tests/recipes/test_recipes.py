"""The recipes: FLIP's keyword arguments, the fail-closed dev/prod rule, what an export holds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from flip_nvflare.errors import FlipConfigError, FlipUnsupportedImport
from flip_nvflare.jobs.identity import installed_version
from flip_nvflare.recipes import FlipEvalRecipe, FlipFedAvgRecipe, FlipFedOptRecipe, PercentilePrivacy

MODEL_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def _export(tmp_path: Path, recipe: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    recipe.export(tmp_path)
    job = tmp_path / recipe.job.name
    config = job / "app" / "config"
    return (
        json.loads((job / "meta.json").read_text()),
        json.loads((config / "config_fed_server.json").read_text()),
        json.loads((config / "config_fed_client.json").read_text()),
    )


def _filters(config: dict[str, Any], task: str) -> list[dict[str, Any]]:
    return [f for chain in config["task_result_filters"] if task in chain["tasks"] for f in chain["filters"]]


def test_flips_import_path_gives_the_same_recipes_and_refuses_the_diffusion_recipe() -> None:
    from flip_nvflare.nvflare import recipes as mirror

    assert mirror.FlipFedAvgRecipe is FlipFedAvgRecipe and mirror.FlipEvalRecipe is FlipEvalRecipe
    with pytest.raises(ImportError, match="FlipFedAvgRecipe, FlipFedOptRecipe and FlipEvalRecipe"):
        from flip_nvflare.nvflare.recipes import FlipDiffusionRecipe  # noqa: F401
    with pytest.raises(FlipUnsupportedImport):
        mirror.FlipDiffusionRecipe  # noqa: B018


def test_a_recipe_has_a_public_job_and_flips_defaults(tmp_path: Path) -> None:
    recipe = FlipFedAvgRecipe()
    assert recipe.job.name == "flip_fedavg" and recipe.train_script == "custom/trainer.py"
    assert FlipFedAvgRecipe(train_script="custom/my.py").train_script == "custom/my.py"
    meta, server, client = _export(tmp_path, recipe)
    assert meta["custom_props"] == {"flip_nvflare_version": installed_version()}  # no model id: resolved at start
    assert "flip_mode" not in server and "flip_mode" not in client  # exported without a mode: fails closed
    assert (client["project_id"], client["query"], client["local_rounds"]) == ("", "SELECT * FROM Table;", 1)
    assert server["global_rounds"] == 3 and server["model_id"] == ""
    assert not any("IntimeModelSelector" in c["path"] for c in server["components"])
    runner = client["executors"][1]
    assert runner["tasks"] == ["train", "validate"]
    assert runner["executor"]["args"]["task_script_args"] == "--project_id {project_id}"
    assert [f["path"] for f in _filters(client, "train")] == ["flip_nvflare.filters.PercentilePrivacy"]
    assert list((tmp_path / recipe.job.name / "app" / "custom").iterdir()) == []  # no copy of flip-nvflare's code


def test_flips_arguments_reach_the_configs(tmp_path: Path) -> None:
    recipe = FlipFedAvgRecipe(
        num_rounds=4,
        min_clients=3,
        model_id=MODEL_ID,
        percentile_privacy=PercentilePrivacy(gamma=0.5, percentile=20, off=True),
        validation_timeout=60,
        wait_time_after_min_received=2,
        project_id="enc-project",
        query="SELECT a FROM b WHERE c = 'x y'",
        local_rounds=5,
        submit_model_task_name="submit_model",
        params_exchange_format="pytorch",
        params_transfer_type="DIFF",
        aggregate_only_regex="head",
        best_model_metric="VAL_LOSS",
        best_model_metric_minimize=True,
        flip_mode="prod",
        gpus=2,
    )
    meta, server, client = _export(tmp_path, recipe)
    assert meta["custom_props"]["model_id"] == MODEL_ID and meta["min_clients"] == 3
    assert meta["resource_spec"] == {"@default": {"num_of_gpus": 2}}
    assert server["flip_mode"] == client["flip_mode"] == "prod"
    selector = next(c for c in server["components"] if c["id"] == "model_selector")
    assert selector["args"] == {"key_metric": "VAL_LOSS", "negate_key_metric": True}
    evaluation = next(w for w in server["workflows"] if w["id"] == "cross_site_validation")
    assert evaluation["args"]["submit_model_task_name"] == "submit_model"
    assert evaluation["args"]["validation_timeout"] == 60
    assert client["executors"][1]["tasks"] == ["train", "submit_model", "validate"]
    args = client["executors"][1]["executor"]["args"]
    assert (args["params_exchange_format"], args["params_transfer_type"]) == ("pytorch", "DIFF")
    paths = [f["path"].rsplit(".", 1)[1] for f in _filters(client, "train")]
    assert paths == ["ExcludeVars", "PercentilePrivacy"]  # head-only before privacy
    exclude = _filters(client, "train")[0]["args"]["exclude_vars"]
    import re

    assert re.search(exclude, "backbone.conv.weight") and not re.search(exclude, "head.fc.weight")
    assert _filters(client, "train")[1]["args"] == {"percentile": 20, "gamma": 0.5, "off": True}
    assert client["query"] == "SELECT a FROM b WHERE c = 'x y'" and client["local_rounds"] == 5


def test_best_model_selection_needs_more_than_one_round() -> None:
    with pytest.raises(FlipConfigError, match="needs num_rounds > 1"):
        FlipFedAvgRecipe(num_rounds=1, best_model_metric="VAL_DICE")
    FlipFedAvgRecipe(num_rounds=2, best_model_metric="VAL_DICE")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_rounds": 0}, "num_rounds"),
        ({"num_rounds": True}, "num_rounds"),
        ({"num_rounds": 2.5}, "num_rounds"),
        ({"min_clients": -1}, "min_clients"),
        ({"train_script": "../../etc/passwd.py"}, "inside the job's custom/"),
        ({"train_script": "/abs/trainer.py"}, "inside the job's custom/"),
        ({"train_script": "trainer.sh"}, "Python script"),
        ({"train_args": "--a 1\n--b"}, "one line"),
        ({"query": "SELECT 1;\x00DROP"}, "one line"),
        ({"validation_timeout": math.nan}, "validation_timeout"),
        ({"validation_timeout": math.inf}, "validation_timeout"),
        ({"train_task_name": "tra in"}, "without spaces"),
        ({"params_exchange_format": "pickle"}, "params_exchange_format"),
        ({"params_transfer_type": "PARTIAL"}, "FULL or DIFF"),
        ({"aggregate_only_regex": "head("}, "regular expression"),
        ({"model_id": "not-a-uuid"}, "model_id"),
        ({"flip_mode": "staging"}, "flip_mode"),
        ({"flip_mode": "DEV\n"}, "flip_mode"),
        ({"execution_mode": "attach"}, "execution_mode"),
        ({"gpus": 0}, "number of GPUs"),
        ({"gpu_mem": 8}, "gpus"),
        ({"gpus": 1, "gpu_mem": -4}, "memory per GPU"),
        ({"percentile_privacy": {"gamma": 1}}, "percentile_privacy"),
        ({"best_model_metric_minimize": "yes"}, "True or False"),
    ],
)
def test_bad_arguments_are_refused_when_the_recipe_is_built(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(FlipConfigError, match=message):
        FlipFedAvgRecipe(**kwargs)


def test_poc_and_prod_environments_need_a_mode_and_the_simulator_defaults_to_dev(tmp_path: Path) -> None:
    from nvflare.recipe.poc_env import PocEnv
    from nvflare.recipe.sim_env import SimEnv

    recipe = FlipFedAvgRecipe()
    with pytest.raises(FlipConfigError, match="has no flip_mode, and PocEnv"):
        recipe.process_env(PocEnv.__new__(PocEnv))
    recipe.process_env(SimEnv(num_clients=1, workspace_root=str(tmp_path)))
    _, server, client = _export(tmp_path / "out", recipe)
    assert server["flip_mode"] == client["flip_mode"] == "dev"
    resources = json.loads((tmp_path / "flip_fedavg" / "local" / "resources.json").read_text())
    assert "flip_nvflare." in resources["class_allow_list"]  # the simulator enforces a trust's allow list


def test_dev_data_arguments_go_to_the_client_backend_only(tmp_path: Path) -> None:
    recipe = FlipFedAvgRecipe(dev_dataframe="/data/{SITE_NAME}/cohort.csv", dev_images_dir="/data/{SITE_NAME}/images")
    _, server, client = _export(tmp_path, recipe)
    flip = next(c for c in client["components"] if c["id"] == "flip")
    assert flip["args"] == {
        "mode": "{flip_mode}",
        "dev_dataframe": "/data/{SITE_NAME}/cohort.csv",
        "dev_images_dir": "/data/{SITE_NAME}/images",
    }
    assert next(c for c in server["components"] if c["id"] == "flip")["args"] == {
        "mode": "{flip_mode}",
        "model_id": "{model_id}",
    }


def test_external_process_runs_the_script_through_flips_wrapper(tmp_path: Path) -> None:
    _, _, client = _export(tmp_path, FlipFedAvgRecipe(execution_mode="external_process", heart_beat_timeout=30))
    args = client["executors"][1]["executor"]["args"]
    assert args["command"] == "python3 -u -m flip_nvflare.executors.script custom/trainer.py --project_id {project_id}"
    assert args["heartbeat_timeout"] == 30 and "task_script_path" not in args
    assert not any("ConvertToFedEvent" in c["path"] for c in client["components"])  # NVFlare forwards itself


def test_fedopt_adds_the_server_optimizer(tmp_path: Path) -> None:
    recipe = FlipFedOptRecipe(optimizer_args={"path": "torch.optim.Adam", "args": {"lr": 0.1}}, device="cpu")
    _, server, _ = _export(tmp_path, recipe)
    components = {c["id"]: c for c in server["components"]}
    assert components["model"]["path"] == "models.get_model"
    generator = components["shareable_generator"]
    assert generator["path"].endswith("PTFedOptModelShareableGenerator")
    assert generator["args"]["optimizer_args"] == {
        "path": "torch.optim.Adam",
        "args": {"lr": 0.1},
        "config_type": "dict",
    }
    with pytest.raises(FlipConfigError, match="optimizer_args"):
        FlipFedOptRecipe(optimizer_args={"args": {}})


def test_evaluation_recipe(tmp_path: Path) -> None:
    meta, server, client = _export(tmp_path, FlipEvalRecipe(min_clients=2, eval_args="--project_id {project_id}"))
    assert [w["path"].rsplit(".", 1)[1] for w in server["workflows"]] == [
        "InitEvaluation",
        "CrossSiteModelEval",
        "CleanupClients",
    ]
    assert [e["tasks"] for e in client["executors"]] == [["init_task"], ["validate"], ["post_task"]]
    assert client["executors"][1]["executor"]["args"]["task_script_path"] == "custom/evaluator.py"
    assert meta["min_clients"] == 2


def test_an_export_gets_none_of_the_simulators_settings_whatever_env_is_passed(tmp_path: Path) -> None:
    """NVFlare's ``--export`` flag makes ``execute(SimEnv)`` call ``export(dir, env=SimEnv)``: still no dev stamp."""
    from nvflare.recipe.sim_env import SimEnv

    recipe = FlipFedAvgRecipe(execution_mode="external_process", project_id="", query="")
    recipe.export(tmp_path / "out", env=SimEnv(num_clients=1, workspace_root=str(tmp_path / "ws")))
    job = tmp_path / "out" / recipe.job.name
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    assert "flip_mode" not in client and "flip_mode" not in server  # fails closed at the sites
    assert client["executors"][1]["executor"]["args"]["command"].startswith("python3 -u -m flip_nvflare")
    assert client["project_id"] == "" and client["query"] == ""  # the hub fills them
    assert (job / "app" / "custom").is_dir()  # FLIP's tutorials copy their app files in after exporting
    assert not (tmp_path / "ws").exists()


def test_a_dev_simulator_run_fills_flips_empty_project_and_query(tmp_path: Path) -> None:
    from nvflare.recipe.sim_env import SimEnv

    recipe = FlipFedAvgRecipe(project_id="", query="")  # as FLIP's tutorials' .env.app leave them
    recipe.process_env(SimEnv(num_clients=1, workspace_root=str(tmp_path)))
    _, _, client = _export(tmp_path / "out", recipe)
    assert client["project_id"] == "dev-project" and client["query"] == "SELECT * FROM dev_cohort"
    prod = FlipFedAvgRecipe(project_id="", flip_mode="prod")
    prod.process_env(SimEnv(num_clients=1, workspace_root=str(tmp_path / "p")))
    _, _, client = _export(tmp_path / "out-prod", prod)
    assert client["project_id"] == ""  # never in prod: the hub writes it
