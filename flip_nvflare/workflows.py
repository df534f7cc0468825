"""Old import path of two server components, kept working until the next release.

``flip_nvflare.workflows`` never held a workflow: the evaluation reporter is a server widget
(:class:`flip_nvflare.components.EvaluationReporter`) and the model locator is a locator
(:class:`flip_nvflare.locators.CheckpointModelLocator`). Job configs that still name
``flip_nvflare.workflows.X`` load, with a FutureWarning naming the new path.
"""

from __future__ import annotations

from flip_nvflare._lazy import lazy_exports

#: Old name -> its new path.
MOVED: dict[str, str] = {
    "CheckpointModelLocator": "flip_nvflare.locators.CheckpointModelLocator",
    "EvaluationReporter": "flip_nvflare.components.EvaluationReporter",
}

__all__: list[str] = []

__getattr__, __dir__ = lazy_exports(__name__, {}, moved=MOVED)
