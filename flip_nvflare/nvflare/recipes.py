"""Mirror of FLIP's ``flip.nvflare.recipes`` path: the recipes live in :mod:`flip_nvflare.recipes`."""

from flip_nvflare.recipes import __getattr__ as __getattr__
