"""What FLIP apps import, and where flip-nvflare serves each name.

A FLIP app moves to flip-nvflare by changing ``flip`` to ``flip_nvflare`` in its imports and
nothing else: ``from flip import FLIP`` becomes ``from flip_nvflare import FLIP``,
``from flip.utils import get_model_weights_diff`` becomes
``from flip_nvflare.utils import get_model_weights_diff``. Most of FLIP's module paths are
flip-nvflare's own modules (``flip_nvflare.constants``); the two that are not
(``flip_nvflare.utils``, ``flip_nvflare.nvflare.metrics``) are short path mirrors that re-export
from here, so that the rule holds without any code living in them.

:data:`FLIP_IMPORTS` lists every FLIP import path flip-nvflare serves, with the object it resolves
to; a test imports each one the way an app would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flip_nvflare.errors import FlipUnsupportedImport

#: FLIP import (``module:name``, with ``flip`` already changed to ``flip_nvflare``) -> flip-nvflare's
#: defining module and name.
FLIP_IMPORTS: dict[str, str] = {
    "flip_nvflare:FLIP": "flip_nvflare.client:FLIP",
    "flip_nvflare.constants:PTConstants": "flip_nvflare.constants:PTConstants",
    "flip_nvflare.constants:ResourceType": "flip_nvflare.constants:ResourceType",
    "flip_nvflare.constants:ModelStatus": "flip_nvflare.constants:ModelStatus",
    "flip_nvflare.constants:JobType": "flip_nvflare.constants:JobType",
    "flip_nvflare.constants:FlipConstants": "flip_nvflare.compat.settings:FlipConstants",
    "flip_nvflare.constants:FlipMetaKey": "flip_nvflare.constants:FlipMetaKey",
    "flip_nvflare.constants:FlipMetricsLabel": "flip_nvflare.constants:FlipMetricsLabel",
    "flip_nvflare:FLIPBase": "flip_nvflare.core.base:FLIPBase",
    "flip_nvflare:ResultsUploadError": "flip_nvflare.errors:FlipResultsUploadError",
    "flip_nvflare.utils:get_model_weights_diff": "flip_nvflare.compat.weights:get_model_weights_diff",
    "flip_nvflare.nvflare.metrics:send_metrics_value": "flip_nvflare.metrics:send_metrics_value",
    "flip_nvflare.nvflare.recipes:FlipFedAvgRecipe": "flip_nvflare.recipes.fedavg:FlipFedAvgRecipe",
    "flip_nvflare.nvflare.recipes:FlipFedOptRecipe": "flip_nvflare.recipes.fedopt:FlipFedOptRecipe",
    "flip_nvflare.nvflare.recipes:FlipEvalRecipe": "flip_nvflare.recipes.evaluation:FlipEvalRecipe",
}

#: FLIP names (``module:name``, ``flip`` changed to ``flip_nvflare``) flip-nvflare does not provide, and what to
#: use instead. Importing one raises :class:`~flip_nvflare.errors.FlipUnsupportedImport` with that advice.
FLIP_UNSUPPORTED: dict[str, str] = {
    "flip_nvflare.constants:DevSettings": (
        "flip-nvflare has no settings objects: the job's FlipBackend takes the dev settings from the job config "
        "(dev_dataframe, dev_images_dir) or DEV_DATAFRAME / DEV_IMAGES_DIR; app code reads FlipConstants.LOCAL_DEV, "
        "FlipConstants.DEV_DATAFRAME and FlipConstants.DEV_IMAGES_DIR"
    ),
    "flip_nvflare.constants:ProdSettings": (
        "flip-nvflare has no settings objects: the job's backend reads the prod settings from the site's "
        "environment and app code reaches the FLIP services through FLIP() (and reads FlipConstants.LOCAL_DEV)"
    ),
    "flip_nvflare.utils:Utils": "check an id with uuid.UUID(value) and empty text with not value.strip()",
    "flip_nvflare.nvflare.metrics:handle_metrics_event": (
        "the server's MetricsForwarder (flip_nvflare.components.MetricsForwarder) receives the clients' metrics and "
        "sends them to the hub; client code only calls send_metrics_value"
    ),
}
FLIP_UNSUPPORTED["flip_nvflare.nvflare.recipes:FlipDiffusionRecipe"] = (
    "flip-nvflare has no multi-stage diffusion recipe (the supported recipes are FlipFedAvgRecipe, FlipFedOptRecipe "
    "and FlipEvalRecipe): train the stages as standard jobs, the autoencoder's checkpoint loaded by the app's "
    "get_model()"
)


def unsupported_names(module: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` that refuses the FLIP names of ``module`` listed in :data:`FLIP_UNSUPPORTED`.

    Args:
        module: The module's ``__name__``.

    Returns:
        The function to assign to the module's ``__getattr__``.
    """

    def __getattr__(name: str) -> Any:
        advice = FLIP_UNSUPPORTED.get(f"{module}:{name}")
        if advice is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        flip_path = module.replace("flip_nvflare", "flip", 1)
        raise FlipUnsupportedImport(
            f"{flip_path}.{name} is FLIP's and flip-nvflare does not provide it ({module}.{name}): {advice}. "
            "See docs/migrating.md."
        )

    return __getattr__


__all__ = ["FLIP_IMPORTS", "FLIP_UNSUPPORTED", "unsupported_names"]
