"""Component paths of job configs written before the layout change still load, through NVFlare itself.

NVFlare 2.9 builds a component from its config with ``ComponentBuilder.build_component`` ->
``class_utils.instantiate_class``, which takes the class path from ``get_class_path_from_config``
and loads it with ``class_loader.load_class`` (import the module, ``getattr`` the name). The tests
load every old path that way and check that it is the very object of its new home; a moved name
must warn (FutureWarning naming the new path), an unmoved one must not. The shipped job templates
must use the new homes only.

The old paths are the export tables of the packages before the change (``flip_nvflare.components``,
``.workflows``, ``.executors``, ``.controllers``, ``.filters``) and the module-qualified paths the
docs and templates used. Module-qualified paths into the modules that moved
(``flip_nvflare.components.backend``, ``flip_nvflare.workflows.model_locator``,
``flip_nvflare.workflows.evaluation_report``) were never documented for job configs and are not
aliased.
"""

from __future__ import annotations

import json
import re
import warnings
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from nvflare.fuel.utils import class_utils
from nvflare.fuel.utils.class_loader import load_class
from nvflare.fuel.utils.class_utils import get_class_path_from_config

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "flip_nvflare" / "job_templates"

#: Old path -> (the path to use now, the defining module's path).
MOVED: dict[str, tuple[str, str]] = {
    "flip_nvflare.components.FlipBackend": ("flip_nvflare.backend.FlipBackend", "flip_nvflare.backend.FlipBackend"),
    "flip_nvflare.components.get_flip_backend": (
        "flip_nvflare.backend.get_flip_backend",
        "flip_nvflare.backend.get_flip_backend",
    ),
    "flip_nvflare.components.get_hub_session": (
        "flip_nvflare.backend.get_hub_session",
        "flip_nvflare.backend.get_hub_session",
    ),
    "flip_nvflare.workflows.CheckpointModelLocator": (
        "flip_nvflare.locators.CheckpointModelLocator",
        "flip_nvflare.locators.checkpoint.CheckpointModelLocator",
    ),
    "flip_nvflare.workflows.EvaluationReporter": (
        "flip_nvflare.components.EvaluationReporter",
        "flip_nvflare.components.evaluation_report.EvaluationReporter",
    ),
}

#: Old path that is still the path to use -> the defining module's path.
UNMOVED: dict[str, str] = {
    "flip_nvflare.components.StatusReporter": "flip_nvflare.components.status.StatusReporter",
    "flip_nvflare.components.MetricsForwarder": "flip_nvflare.components.metrics.MetricsForwarder",
    "flip_nvflare.components.ProgressReporter": "flip_nvflare.components.progress.ProgressReporter",
    "flip_nvflare.components.ExceptionForwarder": "flip_nvflare.components.exceptions.ExceptionForwarder",
    "flip_nvflare.components.ResultsUploader": "flip_nvflare.components.results.ResultsUploader",
    "flip_nvflare.components.ValidationJsonGenerator": "flip_nvflare.components.result_json.ValidationJsonGenerator",
    "flip_nvflare.components.EvaluationJsonGenerator": "flip_nvflare.components.result_json.EvaluationJsonGenerator",
    "flip_nvflare.components.HubSession": "flip_nvflare.components.session.HubSession",
    "flip_nvflare.components.HubDelivery": "flip_nvflare.components.delivery.HubDelivery",
    "flip_nvflare.executors.TrainerRunner": "flip_nvflare.executors.runners.TrainerRunner",
    "flip_nvflare.executors.ValidatorRunner": "flip_nvflare.executors.runners.ValidatorRunner",
    "flip_nvflare.executors.EvaluatorRunner": "flip_nvflare.executors.runners.EvaluatorRunner",
    "flip_nvflare.executors.CohortPreparer": "flip_nvflare.executors.cohort.CohortPreparer",
    "flip_nvflare.executors.ImageCleanup": "flip_nvflare.executors.cleanup.ImageCleanup",
    "flip_nvflare.executors.Sanitizer": "flip_nvflare.executors.sanitize.Sanitizer",
    "flip_nvflare.executors.PreparedCohort": "flip_nvflare.executors.manifest.PreparedCohort",
    "flip_nvflare.controllers.InitTraining": "flip_nvflare.controllers.prepare.InitTraining",
    "flip_nvflare.controllers.InitEvaluation": "flip_nvflare.controllers.prepare.InitEvaluation",
    "flip_nvflare.controllers.CleanupClients": "flip_nvflare.controllers.prepare.CleanupClients",
    "flip_nvflare.controllers.PrepareClients": "flip_nvflare.controllers.prepare.PrepareClients",
    "flip_nvflare.filters.PercentilePrivacy": "flip_nvflare.filters.percentile_privacy.PercentilePrivacy",
    # module-qualified paths the docs and templates used
    "flip_nvflare.filters.percentile_privacy.PercentilePrivacy": (
        "flip_nvflare.filters.percentile_privacy.PercentilePrivacy"
    ),
    "flip_nvflare.executors.sanitize.Sanitizer": "flip_nvflare.executors.sanitize.Sanitizer",
}


def nvflare_load(path: str) -> Any:
    """What NVFlare's component builder instantiates for ``{"path": path}``."""
    return load_class(get_class_path_from_config({"path": path}))


def defined_at(dotted_path: str) -> Any:
    """The object a module defines, by a plain import (which also loads its modules before a check)."""
    module, _, name = dotted_path.rpartition(".")
    return getattr(import_module(module), name)


def load_without_warnings(path: str) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = nvflare_load(path)
    assert not caught, f"{path}: " + "; ".join(f"{w.category.__name__}: {w.message}" for w in caught)
    return loaded


def test_the_loader_is_the_one_nvflare_instantiates_with() -> None:
    assert class_utils.load_class is load_class
    assert class_utils.instantiate_class.__module__ == class_utils.__name__


@pytest.mark.parametrize("old_path", sorted(MOVED))
def test_moved_path_loads_the_new_home_with_a_future_warning(old_path: str) -> None:
    new_path, definition = MOVED[old_path]
    home = defined_at(definition)
    with pytest.warns(FutureWarning, match=re.escape(new_path)):
        loaded = nvflare_load(old_path)
    assert loaded is home
    assert load_without_warnings(new_path) is home


@pytest.mark.parametrize("path", sorted(UNMOVED))
def test_unmoved_path_loads_without_a_warning(path: str) -> None:
    home = defined_at(UNMOVED[path])
    assert load_without_warnings(path) is home


@pytest.mark.parametrize("package", ["flip_nvflare.components", "flip_nvflare.workflows"])
def test_every_alias_of_a_package_is_covered_here(package: str) -> None:
    aliases: dict[str, str] = import_module(package).MOVED
    assert aliases, package
    for name, new_path in aliases.items():
        old_path = f"{package}.{name}"
        assert old_path in MOVED, f"{old_path} is aliased but not tested here"
        assert new_path == MOVED[old_path][0], old_path


def _template_paths() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            path = value.get("path")
            if isinstance(path, str) and path.startswith("flip_nvflare"):
                found.append((where, path))
            for item in value.values():
                walk(item, where)
        elif isinstance(value, list):
            for item in value:
                walk(item, where)

    for config in sorted(TEMPLATES.glob("**/config_fed_*.json")):
        walk(json.loads(config.read_text(encoding="utf-8")), config.relative_to(TEMPLATES).as_posix())
    return found


TEMPLATE_PATHS = _template_paths()


def test_the_templates_name_flip_nvflare_components() -> None:
    templates = {where.split("/")[0] for where, _ in TEMPLATE_PATHS}
    assert templates == {
        f"flip_{kind}{style}" for kind in ("standard", "evaluation", "fed_opt") for style in ("", "_client_api")
    }


@pytest.mark.parametrize(("where", "path"), TEMPLATE_PATHS, ids=[f"{w}:{p}" for w, p in TEMPLATE_PATHS])
def test_template_paths_are_new_homes(where: str, path: str) -> None:
    assert path not in MOVED, f"{where} uses the old path {path}; use {MOVED[path][0]}"
    defined_at(path)  # import first: only the path lookup itself is checked for warnings
    load_without_warnings(path)
