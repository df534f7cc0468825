"""FLIP's ``flip.nvflare`` package path (see :mod:`flip_nvflare.compat`)."""
