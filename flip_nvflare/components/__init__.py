"""Server-side (Central Hub) NVFlare components, and the FlipBackend every FLIP job config has."""

from flip_nvflare.components.backend import FlipBackend, get_flip_backend

__all__ = ["FlipBackend", "get_flip_backend"]
