"""The documentation site builds with no warnings, and its API reference covers every public component.

The build is ``make docs``'s: ``sphinx-build -W --keep-going -b html docs <out>`` (warnings are errors),
run once per session into a temporary folder. Skipped only when Sphinx is not installed (it comes
with the ``docs`` extra).
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: Packages whose every exported name (``__all__``) must be documented under that package's path,
#: the path job configs use (``flip_nvflare.components.StatusReporter``).
COMPONENT_PACKAGES = (
    "flip_nvflare.components",
    "flip_nvflare.executors",
    "flip_nvflare.controllers",
    "flip_nvflare.filters",
    "flip_nvflare.recipes",
    "flip_nvflare.locators",
)


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sphinx")
    out = tmp_path_factory.mktemp("docs-html")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # no __pycache__ left in docs/_ext
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if result.returncode != 0:
        pytest.fail(
            f"sphinx-build failed (exit {result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return out


def documented_python_objects(html_dir: Path) -> set[str]:
    """The names of every Python object in the build's ``objects.inv`` (format version 2)."""
    data = (html_dir / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):  # four plain-text header lines, then the zlib-compressed entries
        header_end = data.index(b"\n", header_end) + 1
    assert data.startswith(b"# Sphinx inventory version 2"), data[:40]
    names = set()
    for line in zlib.decompress(data[header_end:]).decode("utf-8").splitlines():
        match = re.match(r"(\S+)\s+py:\w+\s", line)
        if match:
            names.add(match.group(1))
    return names


def test_the_docs_build_without_warnings(built_docs: Path) -> None:
    for page in ("index", "getting_started", "writing_an_app", "dev_and_prod", "configuration", "troubleshooting"):
        assert (built_docs / f"{page}.html").is_file(), page
    assert (built_docs / "api" / "index.html").is_file()


@pytest.mark.parametrize("package", COMPONENT_PACKAGES)
def test_every_exported_name_is_in_the_api_reference(built_docs: Path, package: str) -> None:
    documented = documented_python_objects(built_docs)
    exported = importlib.import_module(package).__all__
    assert exported, package
    missing = [f"{package}.{name}" for name in exported if f"{package}.{name}" not in documented]
    assert not missing, f"not in docs/api/ (add an autoclass for each): {missing}"


def test_the_configuration_page_shows_every_template(built_docs: Path) -> None:
    from flip_nvflare.jobs.templates import templates_root

    page = (built_docs / "configuration.html").read_text(encoding="utf-8")
    for folder in sorted(p for p in templates_root().iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        assert folder.name in page, folder.name
    # A component path of a template links to its API entry.
    assert 'href="api/components.html#flip_nvflare.components.StatusReporter"' in page


def test_troubleshooting_covers_every_error() -> None:
    errors = importlib.import_module("flip_nvflare.errors")
    page = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    names = [
        name
        for name, value in vars(errors).items()
        if isinstance(value, type)
        and issubclass(value, errors.FlipError)
        and value.__module__ == errors.__name__
        and value.__name__ == name  # not an alias such as ResultsUploadError (FLIP's name of FlipResultsUploadError)
    ]
    assert "FlipError" in names
    missing = [name for name in names if not re.search(rf"^###.*\b{name}\b", page, re.MULTILINE)]
    assert not missing, f"docs/troubleshooting.md has no heading for: {missing}"
