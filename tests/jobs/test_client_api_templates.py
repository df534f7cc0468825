"""The Client API templates are what the recipes export (one source of truth), and nothing else."""

from __future__ import annotations

import pytest

from flip_nvflare.constants import JobType
from flip_nvflare.jobs.client_api_templates import render
from flip_nvflare.jobs.templates import template_dir


@pytest.mark.parametrize("job_type", list(JobType))
def test_each_client_api_template_is_its_recipes_export(job_type: JobType) -> None:
    folder = template_dir(job_type, "client_api")
    rendered = render(job_type)
    assert sorted(rendered) == sorted(p.name for p in folder.iterdir())
    for name, text in rendered.items():
        assert (folder / name).read_text() == text, (
            f"{folder.name}/{name} differs from the recipe's export: "
            "run python -m flip_nvflare.jobs.client_api_templates"
        )


@pytest.mark.parametrize("job_type", list(JobType))
def test_client_api_templates_run_scripts_through_the_flip_runner(job_type: JobType) -> None:
    import json

    client = json.loads((template_dir(job_type, "client_api") / "config_fed_client.json").read_text())
    runners = [e for e in client["executors"] if e["executor"]["path"] == "flip_nvflare.executors.ClientApiRunner"]
    assert len(runners) == 1
    args = runners[0]["executor"]["args"]
    assert args["execution_mode"] == "in_process" and args["task_script_path"].startswith("custom/")
    assert "{project_id}" in args["task_script_args"]
