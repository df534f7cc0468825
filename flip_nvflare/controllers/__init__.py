"""Server-side (Central Hub) NVFlare controllers of FLIP jobs: InitTraining, InitEvaluation, CleanupClients."""

from flip_nvflare.controllers.prepare import CleanupClients, InitEvaluation, InitTraining, PrepareClients

__all__ = ["CleanupClients", "InitEvaluation", "InitTraining", "PrepareClients"]
