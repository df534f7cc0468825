"""A job described as data (the JSON NVFlare reads), turned into a FedJob without building its components.

FLIP's recipes build their FedJob from component objects, which FedJob then writes back out as
``{"path", "args"}`` by reading the objects' attributes. That cannot express what a FLIP job needs:
placeholders the hub fills in at deploy time (``"{flip_mode}"``, ``"{global_rounds}"``), and
components whose arguments are checked on the site they run on, not on the machine that builds
the job. So a recipe here describes its apps as data (:class:`AppSpec`), and :func:`configured`
gives FedJob, for each component, a stand-in whose class path and arguments are exactly those of
the description: what FedJob writes is what the recipe described, and the same description is
the job template (``flip_nvflare/job_templates/*_client_api``).

A stand-in is an instance of a subclass of the real class (so FedJob files it as a component,
executor, filter or controller), carrying only the arguments; it is never started. Each argument
name is checked against the real constructor, so a misspelt argument fails when the recipe is
built.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from flip_nvflare.errors import FlipConfigError

#: Stand-in classes made so far, by class path.
_STAND_INS: dict[str, type] = {}


def _import(path: str) -> type:
    module_name, _, name = path.rpartition(".")
    from importlib import import_module

    try:
        value = getattr(import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise FlipConfigError(f"The recipe names a component {path!r} that cannot be imported: {exc}") from None
    if not isinstance(value, type):
        raise FlipConfigError(f"The recipe's component {path!r} is not a class.")
    return value


def _stand_in_class(path: str) -> type:
    cls = _STAND_INS.get(path)
    if cls is not None:
        return cls
    real = _import(path)
    signature = inspect.signature(real.__init__)  # type: ignore[misc]

    def __init__(self: Any, **kwargs: Any) -> None:  # never called: stand-ins are made with object.__new__
        raise TypeError("a recipe stand-in is not built")

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    # the module FedJob writes is the one the recipe names (a package export such as
    # ``flip_nvflare.components``), so the job reads as the templates do
    cls = type(
        real.__name__,
        (real,),
        {"__module__": path.rpartition(".")[0], "__qualname__": real.__name__, "__init__": __init__},
    )
    _STAND_INS[path] = cls
    return cls


def configured(path: str, args: dict[str, Any]) -> Any:
    """A stand-in FedJob writes as ``{"path": path, "args": args}`` (every argument, defaults included).

    Raises:
        FlipConfigError: ``path`` is not an importable class, or an argument is not one of its
            constructor's parameters.
    """
    cls = _stand_in_class(path)
    from nvflare.fuel.utils.class_utils import get_component_init_parameters

    parameters = get_component_init_parameters(object.__new__(cls))  # what FedJob will write out
    unknown = sorted(set(args) - set(parameters) - {"self", "args", "kwargs"})
    if unknown:
        raise FlipConfigError(f"{path} has no argument(s) {', '.join(unknown)}.")
    obj: Any = object.__new__(cls)
    # FedJob hands a controller its communicator, which reads this (NVFlare's default); never written out
    period = parameters.get("task_check_period")
    default = period.default if period is not None and period.default is not inspect.Parameter.empty else 0.2
    obj.__dict__["_task_check_period"] = default
    obj.__dict__.update(args)
    obj.__dict__["_always_serialize_args"] = tuple(args)
    return obj


@dataclass
class Component:
    """One component of an app: ``{"id", "path", "args"}``."""

    id: str
    path: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Executor:
    """One executor of a client app, for ``tasks``."""

    tasks: list[str]
    path: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Filter:
    """One filter of a task filter chain."""

    path: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class AppSpec:
    """An app as NVFlare's JSON describes it: top-level keys, components, workflows, executors, filters."""

    params: dict[str, Any] = field(default_factory=dict)
    components: list[Component] = field(default_factory=list)
    workflows: list[Component] = field(default_factory=list)
    executors: list[Executor] = field(default_factory=list)
    task_data_filters: list[tuple[list[str], list[Filter]]] = field(default_factory=list)
    task_result_filters: list[tuple[list[str], list[Filter]]] = field(default_factory=list)

    def component(self, component_id: str) -> Component:
        """The component or workflow with ``component_id``.

        Raises:
            KeyError: There is none.
        """
        for item in [*self.components, *self.workflows]:
            if item.id == component_id:
                return item
        raise KeyError(component_id)
