"""docs/architecture.md's layout tree names exactly the folders and modules that exist.

The tree is the first fenced block after the ``## Layout`` heading. Its format:

- one entry per line: one or more names, then at least two spaces, then a one-line description;
- several names on one line are separated by commas (``prod.py, dev.py  the backends``);
- a name ending in ``/`` is a folder; the lines indented two spaces more below a line naming
  exactly one folder are its contents;
- ``__init__.py`` is never listed (its folder's line describes it).

Checked both ways: every entry exists, and every folder and ``.py`` module of the packages
(``PACKAGES``), and every top-level folder, has an entry. ``__pycache__``, hidden folders and
build output are ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"

#: Packages whose every folder and module the tree lists. Other top-level folders (tests/, bench/,
#: docs/, the job_templates link) need a line of their own; their contents may be left out.
PACKAGES = ("flip_nvflare", "flip_emulator", "flip_nvflare_demo")

IGNORED_NAMES = {"__pycache__", "build", "dist", "htmlcov"}
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*/?")
INDENT = 2


class TreeError(ValueError):
    """The tree block cannot be read; the message names the line."""


@dataclass(frozen=True)
class Entry:
    """One documented name: its path from the repository root (folders end in ``/``) and its doc line."""

    path: str
    line: int


def layout_block(text: str) -> list[tuple[int, str]]:
    """The lines (with their 1-based line numbers) of the first fenced block after ``## Layout``."""
    lines = text.splitlines()
    try:
        heading = next(i for i, line in enumerate(lines) if line.strip() == "## Layout")
    except StopIteration:
        raise TreeError("no '## Layout' heading") from None
    fences = [i for i in range(heading + 1, len(lines)) if lines[i].strip().startswith("```")]
    if len(fences) < 2:
        raise TreeError("no fenced block after '## Layout'")
    start, end = fences[0], fences[1]
    return [(i + 1, lines[i]) for i in range(start + 1, end)]


def parse_tree(block: list[tuple[int, str]]) -> list[Entry]:
    """The entries of a tree block, or a :class:`TreeError` naming the first line that breaks the format."""
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    stack: list[str] = []  # the folders that contain the current line, outermost first
    previous_folder: str | None = None  # the folder the previous line named, if it named exactly one
    previous_depth = -1
    for number, line in block:
        if not line.strip():
            continue
        where = f"{DOC.name} line {number}"
        if "\t" in line:
            raise TreeError(f"{where}: indent with spaces, not tabs")
        indent = len(line) - len(line.lstrip(" "))
        if indent % INDENT:
            raise TreeError(f"{where}: indentation must be a multiple of {INDENT} spaces")
        depth = indent // INDENT
        if depth > previous_depth + 1:
            raise TreeError(f"{where}: indented deeper than one level below the line above")
        if depth == previous_depth + 1 and depth > 0:
            if previous_folder is None:
                raise TreeError(f"{where}: indented below a line that does not name exactly one folder")
            stack.append(previous_folder)
        else:
            del stack[depth:]
        parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        if len(parts) < 2 or not parts[1].strip():
            raise TreeError(f"{where}: needs a description after the names (two or more spaces between)")
        names = [name.strip() for name in parts[0].split(",")]
        for name in names:
            if not NAME.fullmatch(name):
                raise TreeError(f"{where}: {name!r} is not a file or folder name")
            if name == "__init__.py":
                raise TreeError(f"{where}: leave __init__.py out (its folder's line describes it)")
            path = "/".join([*stack, name])
            if path in seen:
                raise TreeError(f"{where}: {path} is already listed on line {seen[path]}")
            seen[path] = number
            entries.append(Entry(path, number))
        folders = [name for name in names if name.endswith("/")]
        previous_folder = folders[0].rstrip("/") if len(names) == 1 and folders else None
        previous_depth = depth
    if not entries:
        raise TreeError("the layout block is empty")
    return entries


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(".egg-info") or name in IGNORED_NAMES


def real_entries(root: Path, packages: tuple[str, ...] = PACKAGES) -> set[str]:
    """Every top-level folder, and every folder and ``.py`` module (but ``__init__.py``) of ``packages``."""
    found = {f"{child.name}/" for child in root.iterdir() if child.is_dir() and not _ignored(child.name)}
    for package in packages:
        for folder, dirnames, filenames in os.walk(root / package):
            dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
            rel = Path(folder).relative_to(root).as_posix()
            found.add(f"{rel}/")
            found.update(f"{rel}/{f}" for f in filenames if f.endswith(".py") and f != "__init__.py")
    return found


def compare(root: Path, entries: list[Entry], packages: tuple[str, ...] = PACKAGES) -> tuple[list[str], list[str]]:
    """``(documented but missing, present but undocumented)``, each a list of messages."""
    missing = []
    for entry in entries:
        path = root / entry.path
        exists = path.is_dir() if entry.path.endswith("/") else path.is_file()
        if not exists:
            kind = "folder" if entry.path.endswith("/") else "file"
            missing.append(f"{DOC.name} line {entry.line}: {entry.path} is documented but there is no such {kind}")
    documented = {entry.path for entry in entries}
    undocumented = [
        f"{path} exists but is not in the tree of {DOC.relative_to(ROOT)}"
        for path in sorted(real_entries(root, packages) - documented)
    ]
    return missing, undocumented


@pytest.fixture(scope="module")
def doc_entries() -> list[Entry]:
    try:
        return parse_tree(layout_block(DOC.read_text(encoding="utf-8")))
    except TreeError as exc:
        pytest.fail(f"{DOC.relative_to(ROOT)}: {exc}")


def test_every_documented_folder_and_module_exists(doc_entries: list[Entry]) -> None:
    missing, _ = compare(ROOT, doc_entries)
    assert not missing, "\n".join(missing)


def test_every_folder_and_module_is_documented(doc_entries: list[Entry]) -> None:
    _, undocumented = compare(ROOT, doc_entries)
    assert not undocumented, "\n".join(undocumented)


def test_the_packages_are_listed_in_full(doc_entries: list[Entry]) -> None:
    documented = {entry.path for entry in doc_entries}
    for package in PACKAGES:
        assert f"{package}/" in documented
        assert any(path.startswith(f"{package}/") and path.endswith(".py") for path in documented), package


# The checks themselves, on small trees.


def _block(text: str) -> list[tuple[int, str]]:
    return list(enumerate(text.strip("\n").splitlines(), start=1))


def test_parse_nesting_and_comma_separated_names() -> None:
    entries = parse_tree(
        _block(
            """
pkg/                 the package
  a.py, b.py         two modules, described together
  sub/               a folder
    c.py             inside sub/
    x/, y/           two folders, contents not listed
  d.py               back at the first level
docs/                top level again
"""
        )
    )
    assert [e.path for e in entries] == [
        "pkg/",
        "pkg/a.py",
        "pkg/b.py",
        "pkg/sub/",
        "pkg/sub/c.py",
        "pkg/sub/x/",
        "pkg/sub/y/",
        "pkg/d.py",
        "docs/",
    ]
    assert entries[4].line == 4


@pytest.mark.parametrize(
    ("tree", "complaint"),
    [
        ("pkg/  p\n    a.py  too deep", "deeper than one level"),
        ("pkg/  p\n   a.py  odd indent", "multiple of 2"),
        ("a.py  m\n  b.py  below a module", "does not name exactly one folder"),
        ("x/, y/  two\n  b.py  below two folders", "does not name exactly one folder"),
        ("pkg/  p\n  a.py", "needs a description"),
        ("pkg/  p\n  a.py b.py  one space", "is not a file or folder name"),
        ("pkg/  p\n  __init__.py  the package", "leave __init__.py out"),
        ("pkg/  p\n  a.py  m\n  a.py  again", "already listed on line 2"),
    ],
)
def test_parse_rejects_a_broken_tree(tree: str, complaint: str) -> None:
    with pytest.raises(TreeError, match=re.escape(complaint)):
        parse_tree(_block(tree))


def test_compare_names_what_is_missing_and_what_is_undocumented(tmp_path: Path) -> None:
    for name in ("pkg/__init__.py", "pkg/a.py", "pkg/sub/__init__.py", "pkg/sub/b.py", "docs/x.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_text("")
    (tmp_path / "pkg.egg-info").mkdir()
    tree = parse_tree(_block("pkg/  p\n  a.py  m\n  sub/  s\n    b.py  m\ndocs/  d"))
    assert compare(tmp_path, tree, packages=("pkg",)) == ([], [])

    (tmp_path / "pkg" / "sub" / "new.py").write_text("")
    (tmp_path / "pkg" / "data").mkdir()
    (tmp_path / "bench").mkdir()
    missing, undocumented = compare(tmp_path, [*tree, Entry("pkg/gone.py", 9)], packages=("pkg",))
    assert missing == [f"{DOC.name} line 9: pkg/gone.py is documented but there is no such file"]
    assert [message.split()[0] for message in undocumented] == ["bench/", "pkg/data/", "pkg/sub/new.py"]
