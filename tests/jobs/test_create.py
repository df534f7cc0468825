import json
import shutil
from pathlib import Path

import pytest

from flip_nvflare.cli.jobs import job_main
from flip_nvflare.constants import FlipMode, JobType
from flip_nvflare.jobs.create import FlipJobError, JobRequest, build_job, create_job
from flip_nvflare_demo.cli import app_dir

MODEL_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    target = tmp_path / "app"
    shutil.copytree(app_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "__pycache__").mkdir()
    (target / "__pycache__" / "x.pyc").write_bytes(b"")
    return target


@pytest.fixture
def dev_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for site in ("site-1", "site-2"):
        (root / site / "images").mkdir(parents=True)
        (root / site / "cohort.csv").write_text("accession_id,label\n")
    return root


def _configs(job: Path) -> tuple[dict, dict]:
    config = job / "app" / "config"
    return (
        json.loads((config / "config_fed_server.json").read_text()),
        json.loads((config / "config_fed_client.json").read_text()),
    )


def _component(config: dict, component_id: str) -> dict:
    return next(c for c in config["components"] if c["id"] == component_id)


def test_standard_job_layout_and_filled_keys(app: Path, dev_data: Path, tmp_path: Path) -> None:
    job = create_job(
        JobRequest(JobType.STANDARD, app, tmp_path / "jobs" / "my_job", dev_data=dev_data, model_id=MODEL_ID.upper())
    )
    files = sorted(str(p.relative_to(job)) for p in job.rglob("*") if p.is_file())
    assert files == [
        "app/config/config_fed_client.json",
        "app/config/config_fed_server.json",
        "app/custom/config.json",
        "app/custom/data_utils.py",
        "app/custom/evaluator.py",
        "app/custom/models.py",
        "app/custom/trainer.py",
        "app/custom/validator.py",
        "meta.conf",
    ]
    meta = json.loads((job / "meta.conf").read_text())
    assert meta["name"] == "my_job" and meta["deploy_map"] == {"app": ["@ALL"]}
    server, client = _configs(job)
    assert server["flip_mode"] == client["flip_mode"] == "dev"
    assert server["model_id"] == MODEL_ID
    assert server["global_rounds"] == json.loads((app / "config.json").read_text())["GLOBAL_ROUNDS"]
    flip_args = _component(client, "flip")["args"]
    assert flip_args["dev_dataframe"] == f"{dev_data.resolve()}/{{SITE_NAME}}/cohort.csv"
    assert flip_args["dev_images_dir"] == f"{dev_data.resolve()}/{{SITE_NAME}}/images"
    assert "dev_dataframe" not in _component(server, "flip")["args"]


def test_app_settings_reach_the_server_config(app: Path, tmp_path: Path) -> None:
    config = json.loads((app / "config.json").read_text())
    config.update(GLOBAL_ROUNDS=7, IGNORE_RESULT_ERROR=True, AGGREGATION_WEIGHTS={"site-1": 2.0, "site-2": 1.0})
    (app / "config.json").write_text(json.dumps(config))
    job = create_job(
        JobRequest(
            JobType.FED_OPT,
            app,
            tmp_path / "job",
            mode=FlipMode.PROD,
            project_id="enc",
            query="SELECT 1",
            min_clients=3,
        )
    )
    server, client = _configs(job)
    assert (server["global_rounds"], server["ignore_result_error"], server["min_clients"]) == (7, True, 3)
    assert server["flip_mode"] == client["flip_mode"] == "prod"
    assert _component(server, "aggregator")["args"]["aggregation_weights"] == {"site-1": 2.0, "site-2": 1.0}
    assert (client["project_id"], client["query"]) == ("enc", "SELECT 1")
    assert json.loads((job / "meta.conf").read_text())["min_clients"] == 3
    assert "fedopt" in _component(server, "shareable_generator")["path"]


def test_evaluation_job_keeps_checkpoints_on_the_server(app: Path, tmp_path: Path) -> None:
    (app / "FL_global_model.pt").write_bytes(b"final")
    (app / "best_FL_global_model.pt").write_bytes(b"best")
    job = create_job(JobRequest(JobType.EVALUATION, app, tmp_path / "job"))
    custom = job / "app" / "custom"
    assert (custom / "evaluator.py").is_file()
    assert not list(custom.glob("*.pt"))
    server, _ = _configs(job)
    assert _component(server, "model_locator")["args"]["checkpoint_dir"] == str(app.resolve())


def test_invalid_app_lists_every_problem_and_creates_nothing(tmp_path: Path) -> None:
    app = tmp_path / "empty_app"
    app.mkdir()
    with pytest.raises(FlipJobError) as info:
        create_job(JobRequest(JobType.STANDARD, app, tmp_path / "job"))
    text = str(info.value)
    for name in ("trainer.py", "validator.py", "models.py", "config.json"):
        assert f"{name} is missing" in text
    assert not (tmp_path / "job").exists()


def test_bad_options_are_reported_together(app: Path, tmp_path: Path) -> None:
    empty = tmp_path / "no_sites"
    empty.mkdir()
    with pytest.raises(FlipJobError) as info:
        create_job(JobRequest(JobType.STANDARD, app, tmp_path / "job", dev_data=empty, model_id="nope", min_clients=0))
    text = str(info.value)
    assert "holds no site data" in text and "<folder>/<site>/cohort.csv" in text
    assert "model_id must be a UUID" in text
    assert "min_clients must be an integer >= 1" in text
    with pytest.raises(FlipJobError, match="only applies to dev mode"):
        create_job(JobRequest(JobType.STANDARD, app, tmp_path / "job", mode=FlipMode.PROD, dev_data=empty))


def test_existing_job_folder_needs_force_and_force_only_replaces_jobs(app: Path, tmp_path: Path) -> None:
    job = create_job(JobRequest(JobType.STANDARD, app, tmp_path / "job"))
    with pytest.raises(FlipJobError, match="pass --force"):
        create_job(JobRequest(JobType.STANDARD, app, job))
    (job / "stale.txt").write_text("old")
    create_job(JobRequest(JobType.STANDARD, app, job, force=True))
    assert not (job / "stale.txt").exists()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("...")
    with pytest.raises(FlipJobError, match="does not look like an NVFlare job folder"):
        create_job(JobRequest(JobType.STANDARD, app, precious, force=True))
    assert (precious / "thesis.tex").exists()
    with pytest.raises(FlipJobError, match="must not contain the app folder"):
        create_job(JobRequest(JobType.STANDARD, app, tmp_path, force=True))


def test_job_command(app: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job"
    assert job_main(["create", "--type", "standard", "--app", str(app), "--job", str(job)]) == 0
    assert "nvflare simulator" in capsys.readouterr().out
    assert (job / "meta.conf").is_file()
    assert job_main(["create", "--type", "standard", "--app", str(tmp_path / "missing"), "--job", str(job)]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_an_app_without_global_rounds_gets_one_round_and_a_note(app: Path, tmp_path: Path) -> None:
    config = json.loads((app / "config.json").read_text())
    config.pop("GLOBAL_ROUNDS")
    (app / "config.json").write_text(json.dumps(config))
    created = build_job(JobRequest(JobType.STANDARD, app, tmp_path / "job"))
    server, _ = _configs(created.job_dir)
    assert server["global_rounds"] == 1
    assert any("has no GLOBAL_ROUNDS: the job runs 1 federated round" in note for note in created.notes)


def _client_api_app(root: Path, **config: object) -> Path:
    import json as _json

    app = root / "scripts"
    app.mkdir(parents=True)
    (app / "trainer.py").write_text("import nvflare.client as flare\nflare.init()\n")
    (app / "models.py").write_text("def get_model():\n    return None\n")
    (app / "config.json").write_text(_json.dumps({"LOCAL_ROUNDS": 1, "GLOBAL_ROUNDS": 3, **config}))
    return app


def test_a_client_api_job_uses_the_recipe_template_and_flips_app_keys(tmp_path: Path) -> None:
    import json as _json

    from flip_nvflare.jobs.create import JobRequest, build_job
    from flip_nvflare.jobs.identity import installed_version

    app = _client_api_app(
        tmp_path, BEST_MODEL_METRIC="VAL_LOSS", BEST_MODEL_METRIC_MINIMIZE=True, AGGREGATE_ONLY_REGEX="head"
    )
    job = build_job(JobRequest(JobType.STANDARD, app, tmp_path / "job", style="client_api")).job_dir
    server = _json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    client = _json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    meta = _json.loads((job / "meta.conf").read_text())
    assert meta["custom_props"]["flip_nvflare_version"] == installed_version()
    assert server["global_rounds"] == 3
    selector = next(c for c in server["components"] if c["id"] == "model_selector")
    assert selector["args"] == {"key_metric": "VAL_LOSS", "negate_key_metric": True}
    runner = next(e for e in client["executors"] if "ClientApiRunner" in e["executor"]["path"])
    assert runner["executor"]["args"]["task_script_path"] == "custom/trainer.py"
    filters = [f["path"].rsplit(".", 1)[1] for c in client["task_result_filters"] for f in c["filters"]]
    assert filters == ["ExcludeVars", "PercentilePrivacy"]
    assert (job / "app" / "custom" / "trainer.py").is_file()


def test_a_client_api_app_without_its_script_or_model_is_refused_with_every_problem(tmp_path: Path) -> None:
    from flip_nvflare.errors import FlipJobError
    from flip_nvflare.jobs.check import check_app
    from flip_nvflare.jobs.create import JobRequest, build_job

    app = _client_api_app(tmp_path)
    (app / "trainer.py").unlink()
    (app / "models.py").write_text("x = 1\n")
    problems = [p.what for p in check_app(app, JobType.STANDARD, style="client_api")]
    assert problems == ["trainer.py is missing", "models.py does not define get_model"]
    with pytest.raises(FlipJobError, match=r"trainer\.py is missing"):
        build_job(JobRequest(JobType.STANDARD, app, tmp_path / "job", style="client_api"))
    eval_app = tmp_path / "eval"
    eval_app.mkdir()
    (eval_app / "evaluator.py").write_text("print('ok')\n")
    (eval_app / "config.json").write_text("{}")
    assert [p.what for p in check_app(eval_app, JobType.EVALUATION, style="client_api")] == [
        "no model to evaluate: config.json has no models and there is no model.pt"
    ]
    (eval_app / "model.pt").write_bytes(b"x")
    assert check_app(eval_app, JobType.EVALUATION, style="client_api") == []
