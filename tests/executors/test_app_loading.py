"""How the runners find and build the user's class (pure logic: no NVFlare run needed)."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from flip_nvflare.core.dev import FLIPStandardDev
from flip_nvflare.executors.runners import AppRole, FlipAppError, constructor_kwargs, load_app_class

OFFERED = {"train_task_name": "train", "project_id": "p", "query": "q"}


@pytest.fixture(autouse=True)
def restore_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def role() -> AppRole:
    # A unique module name per test, so tests never see each other's modules in sys.modules.
    return AppRole(f"trainer_{uuid.uuid4().hex[:8]}", "FLIP_TRAINER", "training")


def _write(folder: Path, name: str, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def test_missing_file_names_the_file_and_the_class(tmp_path: Path, role: AppRole) -> None:
    with pytest.raises(FlipAppError) as info:
        load_app_class(tmp_path, role)
    message = str(info.value)
    assert f"{role.module}.py not found" in message and "FLIP_TRAINER" in message and str(tmp_path) in message


def test_missing_class_is_named(tmp_path: Path, role: AppRole) -> None:
    _write(tmp_path, role.module, "class Trainer:\n    pass\n")
    with pytest.raises(FlipAppError, match=f"{role.module}.py .* does not define class FLIP_TRAINER"):
        load_app_class(tmp_path, role)


def test_loads_with_helper_modules_of_the_custom_folder(tmp_path: Path, role: AppRole) -> None:
    helper = f"helpers_{uuid.uuid4().hex[:8]}"
    _write(tmp_path, helper, "VALUE = 41\n")
    _write(tmp_path, role.module, f"from {helper} import VALUE\nclass FLIP_TRAINER:\n    answer = VALUE + 1\n")
    cls = load_app_class(tmp_path, role)
    assert vars(cls)["answer"] == 42
    assert sys.modules[role.module].__file__ == str(tmp_path / f"{role.module}.py")


def test_a_different_module_of_the_same_name_does_not_shadow_this_job(tmp_path: Path, role: AppRole) -> None:
    _write(tmp_path / "other_job", role.module, "class FLIP_TRAINER:\n    job = 'other'\n")
    _write(tmp_path / "this_job", role.module, "class FLIP_TRAINER:\n    job = 'this'\n")
    assert vars(load_app_class(tmp_path / "other_job", role))["job"] == "other"
    assert vars(load_app_class(tmp_path / "this_job", role))["job"] == "this"
    assert vars(load_app_class(tmp_path / "other_job", role))["job"] == "other"


def test_user_import_errors_propagate(tmp_path: Path, role: AppRole) -> None:
    _write(tmp_path, role.module, "import a_package_that_is_not_installed\n")
    with pytest.raises(ModuleNotFoundError):
        load_app_class(tmp_path, role)


class Classic:
    def __init__(self, train_task_name: str = "train", project_id: str = "", query: str = "") -> None:
        self.args = (train_task_name, project_id, query)


class WantsFlip:
    def __init__(self, project_id: str, flip: object = None) -> None:
        self.flip = flip


class TakesAnything:
    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs


class NeedsMore:
    def __init__(self, project_id: str, lr: float) -> None:
        pass


def test_constructor_gets_only_what_it_accepts() -> None:
    backend = FLIPStandardDev(env={})
    role = AppRole("trainer", "FLIP_TRAINER", "training")
    assert constructor_kwargs(Classic, role, OFFERED, backend) == OFFERED
    assert constructor_kwargs(WantsFlip, role, OFFERED, backend) == {"project_id": "p", "flip": backend}
    assert constructor_kwargs(TakesAnything, role, OFFERED, backend) == OFFERED
    with pytest.raises(FlipAppError, match="lr") as info:
        constructor_kwargs(NeedsMore, role, OFFERED, backend)
    assert "app_args" in str(info.value)
