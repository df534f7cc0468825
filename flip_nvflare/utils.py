"""FLIP's ``flip.utils`` path, so ``from flip_nvflare.utils import ...`` works (see :mod:`flip_nvflare.compat`)."""

from flip_nvflare.compat.weights import get_model_weights_diff

__all__ = ["get_model_weights_diff"]

from flip_nvflare.compat import unsupported_names

__getattr__ = unsupported_names(__name__)
