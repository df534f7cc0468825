"""``flip-nvflare job create`` builds what ``nvflare job create`` builds from the same template and app.

(The jobs ``nvflare job create`` makes from each template run in the simulator in
test_standard, test_fed_opt and test_evaluation.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyhocon import ConfigFactory

from flip_nvflare.constants import JobType
from flip_nvflare.jobs.create import JobRequest, create_job
from flip_nvflare.jobs.identity import installed_version
from flip_nvflare.jobs.templates import TEMPLATE_NAMES
from tests.e2e.jobtools import copy_app, load_config, nvflare_job_create

pytestmark = pytest.mark.e2e


def _files(job: Path) -> list[str]:
    return sorted(str(p.relative_to(job)) for p in job.rglob("*") if p.is_file())


@pytest.mark.parametrize("job_type", list(JobType))
def test_same_structure_and_configs_as_nvflare_job_create(job_type: JobType, tmp_path: Path) -> None:
    app = copy_app(tmp_path / "app")
    home = tmp_path / "home"
    theirs = tmp_path / "theirs" / "job"
    output = nvflare_job_create(TEMPLATE_NAMES[job_type], app, theirs, home)
    checkpoints = tmp_path / "checkpoints"  # evaluation: kept outside the app, as on a server
    checkpoints.mkdir()
    for name in ("FL_global_model.pt", "best_FL_global_model.pt"):
        (checkpoints / name).write_bytes(b"weights")
    ours = create_job(JobRequest(job_type, app, tmp_path / "ours" / "job", checkpoints_dir=checkpoints))

    assert _files(ours) == _files(theirs)
    meta = json.loads((ours / "meta.conf").read_text())
    # the one addition: the flip-nvflare version the job was built with (sites refuse an incompatible one)
    assert meta.pop("custom_props") == {"flip_nvflare_version": installed_version()}
    assert meta == ConfigFactory.parse_file(str(theirs / "meta.conf")).as_plain_ordered_dict()
    assert load_config(ours, "client") == load_config(theirs, "client")
    server_ours, server_theirs = load_config(ours, "server"), load_config(theirs, "server")
    if job_type is JobType.EVALUATION:
        locator = next(c for c in server_ours["components"] if c["id"] == "model_locator")
        assert locator["args"]["checkpoint_dir"] == str(checkpoints.resolve())
        locator["args"]["checkpoint_dir"] = ""
    assert server_ours == server_theirs  # the app's GLOBAL_ROUNDS is the template's 3
    # Our tool is quiet and leaves NVFlare's user configuration alone; nvflare's warns.
    assert "deprecated" in output.stdout + output.stderr
    assert not any(p.is_file() for p in home.rglob("*")), "nvflare job create wrote into HOME"
