"""FLIP's ``flip.nvflare.metrics`` module path (see :mod:`flip_nvflare.compat`)."""

from flip_nvflare.metrics import send_metrics_value

__all__ = ["send_metrics_value"]

from flip_nvflare.compat import unsupported_names

__getattr__ = unsupported_names(__name__)
