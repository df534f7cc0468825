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

#: FLIP import (``module:name``, with ``flip`` already changed to ``flip_nvflare``) -> flip-nvflare's
#: defining module and name.
FLIP_IMPORTS: dict[str, str] = {
    "flip_nvflare:FLIP": "flip_nvflare.client:FLIP",
    "flip_nvflare.constants:PTConstants": "flip_nvflare.constants:PTConstants",
    "flip_nvflare.constants:ResourceType": "flip_nvflare.constants:ResourceType",
    "flip_nvflare.constants:ModelStatus": "flip_nvflare.constants:ModelStatus",
    "flip_nvflare.constants:JobType": "flip_nvflare.constants:JobType",
    "flip_nvflare.utils:get_model_weights_diff": "flip_nvflare.compat.weights:get_model_weights_diff",
    "flip_nvflare.nvflare.metrics:send_metrics_value": "flip_nvflare.metrics:send_metrics_value",
}

__all__ = ["FLIP_IMPORTS"]
