"""Server-side (Central Hub) NVFlare controllers of FLIP jobs.

InitTraining, InitEvaluation, EvaluateModels, CleanupClients.
"""

from flip_nvflare.controllers.evaluate import EvaluateModels
from flip_nvflare.controllers.prepare import CleanupClients, InitEvaluation, InitTraining, PrepareClients

__all__ = ["CleanupClients", "EvaluateModels", "InitEvaluation", "InitTraining", "PrepareClients"]
