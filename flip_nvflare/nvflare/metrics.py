"""``from flip_nvflare.nvflare.metrics import send_metrics_value`` (FLIP's ``flip.nvflare.metrics``)."""

from flip_nvflare.metrics import send_metrics_value

__all__ = ["send_metrics_value"]
