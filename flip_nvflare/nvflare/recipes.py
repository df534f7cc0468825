"""FLIP's ``flip.nvflare.recipes`` path: its job recipes are not provided; importing one says what to use instead.

flip-nvflare builds jobs from NVFlare job templates (``flip-nvflare job create``, see docs/templates.md).
"""

from flip_nvflare.compat import unsupported_names

__getattr__ = unsupported_names(__name__)
