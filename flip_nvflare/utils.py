"""``from flip_nvflare.utils import get_model_weights_diff`` (FLIP's ``flip.utils``)."""

from flip_nvflare.client import get_model_weights_diff

__all__ = ["get_model_weights_diff"]
