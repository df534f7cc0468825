"""The class allow list a trust adds for FLIP jobs: NVFlare's default refuses FLIP's components, ours admits all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nvflare.apis.fl_exception import UnsafeComponentError
from nvflare.app_common.widgets.component_path_authorizer import ComponentPathAuthorizer

from flip_nvflare.constants import JobType
from flip_nvflare.jobs.allow_list import FLIP_PREFIX, allow_list_fragment, default_allow_list, flip_additions
from flip_nvflare.jobs.templates import STYLES, template_dir


def _component_paths(config: dict) -> list[str]:
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            path = node.get("path")
            # a "config_type": "dict" argument is handed to its component as data, not built by NVFlare
            if isinstance(path, str) and not path.startswith("models.") and node.get("config_type") != "dict":
                found.append(path)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


class _Workspace:
    def __init__(self, resources: Path) -> None:
        self._resources = resources

    def get_resources_file_path(self) -> str:
        return str(self._resources)


def _authorizer(tmp_path: Path, allow_list: list[str]) -> tuple[ComponentPathAuthorizer, _Workspace]:
    resources = tmp_path / "resources.json"
    resources.write_text(json.dumps({"format_version": 2, "class_allow_list": allow_list}))
    return ComponentPathAuthorizer(), _Workspace(resources)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("job_type", list(JobType))
def test_a_site_with_the_default_list_refuses_flip_jobs_and_the_rendered_list_admits_every_component(
    tmp_path: Path, job_type: JobType, style: str
) -> None:
    paths = [
        path
        for name in ("config_fed_server.json", "config_fed_client.json")
        for path in _component_paths(json.loads((template_dir(job_type, style) / name).read_text()))
    ]
    (tmp_path / "default").mkdir()
    default, workspace = _authorizer(tmp_path / "default", default_allow_list())
    refused = []
    for path in paths:
        try:
            default.authorize_component_config({"path": path}, workspace=workspace)
        except UnsafeComponentError:
            refused.append(path)
    assert any(p.startswith(FLIP_PREFIX) for p in refused)
    (tmp_path / "flip").mkdir()
    flip, flip_workspace = _authorizer(tmp_path / "flip", allow_list_fragment()["class_allow_list"])
    for path in paths:
        flip.authorize_component_config({"path": path}, workspace=flip_workspace)  # raises if refused


def test_the_additions_are_only_what_the_default_lacks() -> None:
    additions = flip_additions()
    assert additions[0] == FLIP_PREFIX
    assert not set(additions) & set(default_allow_list())
    assert allow_list_fragment()["class_allow_list"] == default_allow_list() + additions
