"""FLIP's job recipes for Client API scripts: ``FlipFedAvgRecipe``, ``FlipFedOptRecipe``, ``FlipEvalRecipe``.

They take the keyword arguments FLIP's recipes (``flip.nvflare.recipes``) take, plus
``flip_mode``, the dev-data settings, ``execution_mode`` and the GPU request, and run with
``recipe.execute(SimEnv(...))`` / ``PocEnv`` / ``ProdEnv`` or export with ``recipe.export(dir)``.
A FLIP ``job.py`` changes ``from flip.nvflare.recipes import ...`` to
``from flip_nvflare.nvflare.recipes import ...`` (or imports from here) and nothing else.

Names load on first use (building a recipe imports NVFlare; importing this package does not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flip_nvflare._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "FlipFedAvgRecipe": "flip_nvflare.recipes.fedavg",
    "FlipFedOptRecipe": "flip_nvflare.recipes.fedopt",
    "FlipEvalRecipe": "flip_nvflare.recipes.evaluation",
    "FlipRecipe": "flip_nvflare.recipes.base",
    "PercentilePrivacy": "flip_nvflare.recipes.base",
}

#: FLIP recipes flip-nvflare does not provide (the advice is ``flip_nvflare.compat.FLIP_UNSUPPORTED``'s).
UNSUPPORTED_RECIPES = ("FlipDiffusionRecipe",)

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from flip_nvflare.recipes.base import FlipRecipe as FlipRecipe
    from flip_nvflare.recipes.base import PercentilePrivacy as PercentilePrivacy
    from flip_nvflare.recipes.evaluation import FlipEvalRecipe as FlipEvalRecipe
    from flip_nvflare.recipes.fedavg import FlipFedAvgRecipe as FlipFedAvgRecipe
    from flip_nvflare.recipes.fedopt import FlipFedOptRecipe as FlipFedOptRecipe

_getattr, __dir__ = lazy_exports(__name__, _EXPORTS)


def __getattr__(name: str) -> Any:
    if name in UNSUPPORTED_RECIPES:
        from flip_nvflare.compat import unsupported_names

        unsupported_names("flip_nvflare.nvflare.recipes")(name)  # raises FlipUnsupportedImport with the advice
    return _getattr(name)
