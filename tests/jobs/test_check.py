import json
import shutil
from pathlib import Path

import pytest

from flip_nvflare.cli.jobs import check_app_main
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.jobs.check import app_defaults, check_app, evaluation_checkpoints, format_problems
from flip_nvflare_demo.cli import app_dir


@pytest.fixture
def app(tmp_path: Path) -> Path:
    target = tmp_path / "app"
    shutil.copytree(app_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _set_config(app: Path, **changes: object) -> None:
    config = json.loads((app / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (app / "config.json").write_text(json.dumps(config))


def _whats(problems: list) -> list[str]:
    return [p.what for p in problems]


@pytest.mark.parametrize("job_type", ["standard", "fed_opt"])
def test_demo_app_is_a_valid_training_app(job_type: str) -> None:
    assert check_app(app_dir(), job_type) == []


def test_empty_folder_reports_every_missing_file_at_once(tmp_path: Path) -> None:
    problems = check_app(tmp_path, "standard")
    assert _whats(problems) == [
        "trainer.py is missing",
        "validator.py is missing",
        "models.py is missing",
        "config.json is missing",
    ]
    assert "class FLIP_TRAINER" in problems[0].fix
    assert "function get_model()" in problems[2].fix


def test_every_config_and_symbol_problem_is_reported_together(app: Path) -> None:
    (app / "trainer.py").write_text("def FLIP_TRAINER():\n    pass\n")
    (app / "validator.py").write_text("class Other:\n    pass\n")
    (app / "models.py").write_text("def get_model(:\n")
    _set_config(app, LOCAL_ROUNDS="3", GLOBAL_ROUNDS=None, IGNORE_RESULT_ERROR="no", AGGREGATION_WEIGHTS=[1, 2])
    whats = _whats(check_app(app, "standard"))
    assert whats[0] == "FLIP_TRAINER in trainer.py is a function, not a class"
    assert whats[1] == "validator.py does not define FLIP_VALIDATOR"
    assert whats[2].startswith("models.py does not parse (line 1")
    assert "config.json LOCAL_ROUNDS is '3'" in whats
    assert not any("GLOBAL_ROUNDS" in what for what in whats)  # FLIP's hub default: 1 round
    assert "config.json IGNORE_RESULT_ERROR is 'no'" in whats
    assert "config.json AGGREGATION_WEIGHTS is not a map of client names to weights" in whats
    assert len(whats) == 6


@pytest.mark.parametrize("rounds", [0, 1001, True, 2.5])
def test_rounds_must_be_integers_in_range(app: Path, rounds: object) -> None:
    _set_config(app, GLOBAL_ROUNDS=rounds)
    problems = check_app(app, "standard")
    assert len(problems) == 1
    assert problems[0].what == f"config.json GLOBAL_ROUNDS is {rounds!r}"
    assert "1..1000" in problems[0].fix


def test_symbols_bound_by_import_or_assignment_count(app: Path) -> None:
    (app / "models.py").write_text("from torchvision.models import resnet18 as get_model\n")
    (app / "trainer.py").write_text("from my_lib import Trainer\nFLIP_TRAINER = Trainer\n")
    assert check_app(app, "standard") == []


def test_app_code_is_never_run(app: Path) -> None:
    marker = app / "ran"
    (app / "trainer.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass FLIP_TRAINER:\n    pass\n")
    assert check_app(app, "standard") == []
    assert not marker.exists()


def test_invalid_config_json(app: Path) -> None:
    (app / "config.json").write_text("{not json")
    problems = check_app(app, "standard")
    assert len(problems) == 1 and problems[0].what.startswith("config.json is not valid JSON")


def test_evaluation_needs_evaluator_models_and_output(app: Path) -> None:
    (app / "evaluator.py").unlink()
    _set_config(app, models=None, evaluation_output=None)
    whats = _whats(check_app(app, "evaluation"))
    assert whats == [
        "evaluator.py is missing",
        "config.json has no models",
        "config.json has no evaluation_output",
    ]


def test_evaluation_checkpoints_must_exist_inside_the_folder(app: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    (checkpoints / "good.pt").write_bytes(b"x")
    _set_config(
        app,
        models={
            "good": {"checkpoint": "good.pt"},
            "missing": {"checkpoint": "missing.pt"},
            "escape": {"checkpoint": "../secret.pt"},
            "absolute": {"checkpoint": "/etc/passwd"},
            "bad name!": {"checkpoint": "good.pt"},
            "none": {},
        },
    )
    whats = _whats(check_app(app, "evaluation", checkpoints_dir=checkpoints))
    assert f"model 'missing': checkpoint missing.pt not found in {checkpoints}" in whats
    assert "model 'escape': checkpoint '../secret.pt' points outside the checkpoints folder" in whats
    assert "model 'absolute': checkpoint '/etc/passwd' points outside the checkpoints folder" in whats
    assert "model name 'bad name!' in config.json models is not usable" in whats
    assert "model 'none' in config.json names no checkpoint" in whats
    assert len(whats) == 5
    assert evaluation_checkpoints(app) == {"good": "good.pt", "missing": "missing.pt", "bad name!": "good.pt"}


def test_unknown_job_type_is_a_clear_error(app: Path) -> None:
    with pytest.raises(FlipConfigError, match="use one of standard, evaluation, fed_opt"):
        check_app(app, "diffusion")


def test_format_problems_lists_each_problem(tmp_path: Path) -> None:
    text = format_problems(tmp_path, "standard", check_app(tmp_path, "standard"))
    assert text.splitlines()[0] == f"{tmp_path} is not a valid FLIP standard app (4 problems):"
    problems = text.splitlines()[1:]
    assert len(problems) == 4 and all(line.startswith("  - ") for line in problems)


def test_check_app_command_exit_codes(app: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_app_main(["--type", "standard", str(app)]) == 0
    assert "a valid FLIP standard app" in capsys.readouterr().out
    assert check_app_main(["--type", "standard", str(tmp_path / "nowhere")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    (app / "validator.py").unlink()
    assert check_app_main(["--type", "fed_opt", str(app)]) == 1
    assert "validator.py is missing: add validator.py" in capsys.readouterr().err


def test_an_app_without_global_rounds_is_valid_and_check_app_says_it_runs_one_round(
    app: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _set_config(app, GLOBAL_ROUNDS=None)
    assert check_app(app, "standard") == []
    assert app_defaults(app, "standard") == [
        "config.json has no GLOBAL_ROUNDS: the job runs 1 federated round, as FLIP's hub fills it in "
        '(add "GLOBAL_ROUNDS": N for more)'
    ]
    assert check_app_main(["--type", "standard", str(app)]) == 0
    assert "note: config.json has no GLOBAL_ROUNDS: the job runs 1 federated round" in capsys.readouterr().out
    _set_config(app, GLOBAL_ROUNDS=0)
    assert _whats(check_app(app, "standard")) == ["config.json GLOBAL_ROUNDS is 0"]
    assert app_defaults(app, "evaluation") == []
