"""Job-config booleans are JSON booleans: json_bool, and every bool argument of every component."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import numpy as np
import pytest
from nvflare.apis.fl_component import FLComponent

import flip_nvflare
from flip_nvflare.args import FlipConfigTypeError, json_bool
from flip_nvflare.errors import FlipArgumentTypeError, FlipConfigError, FlipError

#: Where the components a job config can name live.
COMPONENT_MODULES = ("backend", "components", "executors", "controllers", "filters", "locators")

#: Arguments a component needs before it can be built at all.
REQUIRED_ARGS: dict[str, dict[str, Any]] = {"FlipBackend": {"mode": "dev"}}

#: Every boolean argument known when this test was written: the scan below must find at least these.
KNOWN = {
    ("FlipBackend", "allow_dev_in_secure_mode"),
    ("FlipBackend", "check_settings"),
    ("CohortPreparer", "download_images"),
    ("CohortPreparer", "allow_empty_cohort"),
    ("ImageCleanup", "delete_cohort_files"),
    ("ImageCleanup", "cleanup_at_end_run"),
    ("PercentilePrivacy", "off"),
    ("PercentilePrivacy", "in_place"),
}

NOT_BOOLEANS = ["false", "true", "False", "0", "", 1, 0, 1.0, None, np.bool_(True), [True], {"value": True}]


def _modules() -> list[str]:
    names: list[str] = []
    for part in COMPONENT_MODULES:
        module = importlib.import_module(f"flip_nvflare.{part}")
        names.append(module.__name__)
        path = getattr(module, "__path__", None)
        if path is not None:
            names += [f"{module.__name__}.{info.name}" for info in pkgutil.iter_modules(path)]
    return names


def _is_bool(parameter: inspect.Parameter) -> bool:
    annotation = parameter.annotation
    return annotation in (bool, "bool") or isinstance(parameter.default, bool)


def bool_arguments() -> list[tuple[type, str]]:
    """Every (component class, argument) of a flip-nvflare component whose argument is a boolean."""
    found: list[tuple[type, str]] = []
    for name in _modules():
        module = importlib.import_module(name)
        for cls in vars(module).values():
            if not (inspect.isclass(cls) and issubclass(cls, FLComponent) and cls.__module__ == name):
                continue
            if inspect.isabstract(cls) or cls.__name__.startswith("_"):
                continue
            for parameter in inspect.signature(cls.__init__).parameters.values():
                if _is_bool(parameter):
                    found.append((cls, parameter.name))
    return sorted(found, key=lambda item: (item[0].__name__, item[1]))


BOOL_ARGUMENTS = bool_arguments()


def _build(cls: type, name: str, value: object) -> object:
    return cls(**{**REQUIRED_ARGS.get(cls.__name__, {}), name: value})


# --- json_bool -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_json_booleans_are_returned_as_they_are(value: bool) -> None:
    assert json_bool("Owner", "flag", value) is value


@pytest.mark.parametrize("value", NOT_BOOLEANS)
def test_anything_else_is_refused_naming_the_owner_and_the_argument(value: object) -> None:
    with pytest.raises(FlipConfigError, match="Owner: flag must be true or false") as info:
        json_bool("Owner", "flag", value)
    error = info.value
    assert isinstance(error, FlipConfigTypeError)
    assert isinstance(error, (FlipError, TypeError, ValueError, FlipArgumentTypeError))
    assert repr(value)[:20] in str(error)


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(FlipConfigError) as info:
        json_bool("Owner", "flag", "x" * 500)
    assert "x" * 50 not in str(info.value)
    assert "..." in str(info.value)


def test_the_string_false_is_not_true() -> None:
    # what this module is for: bool("false") is True
    assert bool("false") is True
    with pytest.raises(FlipConfigError):
        json_bool("Owner", "flag", "false")


# --- every component ----------------------------------------------------------------------------------


def test_the_scan_finds_every_known_boolean_argument() -> None:
    found = {(cls.__name__, name) for cls, name in BOOL_ARGUMENTS}
    assert found >= KNOWN, sorted(KNOWN - found)
    assert flip_nvflare.__name__ == "flip_nvflare"


@pytest.mark.parametrize(("cls", "name"), BOOL_ARGUMENTS, ids=[f"{c.__name__}.{n}" for c, n in BOOL_ARGUMENTS])
@pytest.mark.parametrize("value", ["false", "true", 1, 0, None], ids=repr)
def test_a_component_refuses_a_boolean_argument_that_is_not_a_json_boolean(cls: type, name: str, value: object) -> None:
    with pytest.raises(FlipConfigError, match=f"{cls.__name__}: {name} must be true or false"):
        _build(cls, name, value)


@pytest.mark.parametrize(("cls", "name"), BOOL_ARGUMENTS, ids=[f"{c.__name__}.{n}" for c, n in BOOL_ARGUMENTS])
@pytest.mark.parametrize("value", [True, False])
def test_a_component_accepts_json_booleans(cls: type, name: str, value: bool) -> None:
    args = {**REQUIRED_ARGS.get(cls.__name__, {}), name: value}
    if cls.__name__ == "PercentilePrivacy" and name == "off" and value:
        args = {name: value}  # the filter's own rule: no site minimum with off (its defaults have none)
    assert isinstance(cls(**args), cls)
