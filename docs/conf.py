"""Sphinx configuration of the flip-nvflare documentation.

Build it with ``make docs`` (or ``.venv/bin/python -m sphinx -W --keep-going -b html docs build/docs``).
The Markdown pages are read by myst-parser; the API reference (``docs/api/``) is generated from the
package's docstrings by autodoc and napoleon (Google style); ``docs/_ext/flip_docs.py`` renders the
job templates' keys and components straight from the template JSON files.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import flip_nvflare  # noqa: E402  (after the path is set)

project = "flip-nvflare"
author = "flip-nvflare authors"
copyright = "flip-nvflare authors; Apache-2.0"
release = flip_nvflare.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "flip_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
# _tools/ holds the script that draws the architecture picture, _ext/ the Sphinx extension: neither is a page.
exclude_patterns = ["_build", "_tools", "_ext", "Thumbs.db", ".DS_Store"]

# Markdown: ``## Heading`` anchors for [text](page.md#heading) links, and ``{directive}`` fences.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "deflist"]

# API reference: Google-style docstrings, every class documented with its constructor (the job-config args).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
autoclass_content = "class"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = False
# The API pages give ``:members:`` / ``:show-inheritance:`` on each directive (no defaults to negate,
# so older Sphinx releases read them the same). Nothing is mocked: the documented modules import
# only flip-nvflare's own dependencies (NVFlare, pandas...), never an optional extra.

html_theme = "alabaster"
html_title = f"flip-nvflare {release}"
html_static_path: list[str] = []
html_theme_options = {"description": "NVIDIA FLARE jobs, connected to FLIP", "fixed_sidebar": True}
