"""What an exception may say when it leaves a trust.

A failure in user code at a trust becomes text that travels to the Central Hub (the reply's
``exception`` header, forwarded by the server's ExceptionForwarder). :class:`Sanitizer` turns an
exception or any text into something safe to send:

- the cohort's accession ids (and any other identifiers it is given) become ``[id]``;
- the cohort query and the encrypted project id become ``[query]`` / ``[secret]``, and SQL that
  looks like ``SELECT ... FROM ...`` becomes ``[sql]``;
- absolute paths become ``[path]``, except paths of code (the job's ``custom/`` folder, flip-nvflare,
  the Python installation), which are shortened to ``custom/trainer.py`` or ``<site-packages>/torch/...``;
- the text is capped in length, keeping its end (where the exception type and message are).

Traceback frame lines keep their line numbers and function names, and the final line keeps the
exception type, so the hub's log still says what failed and where. This module is pure Python.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from flip_nvflare.errors import FlipConfigError, format_traceback

#: Default cap on the sanitized text, in characters.
DEFAULT_MAX_CHARS = 8000

ID_MARK = "[id]"
QUERY_MARK = "[query]"
SECRET_MARK = "[secret]"
SQL_MARK = "[sql]"
PATH_MARK = "[path]"

# A run of characters an accession id is made of (a safe URL path segment).
_ID_TOKEN = re.compile(r"[A-Za-z0-9._~-]+")
# Alphanumeric pieces inside such a run: an id must start and end on a piece boundary.
_ALNUM = re.compile(r"[A-Za-z0-9]+")
# ``  File "/path/x.py", line 12, in fn`` (a traceback frame header).
_FRAME = re.compile(r'^(?P<indent>\s*)File "(?P<path>[^"]+)", line (?P<line>\d+)(?P<rest>.*)$')
# An absolute POSIX path, not part of a URL or a relative path.
_ABS_PATH = re.compile(r"(?<![\w:/.~-])/[^\s'\"<>|,;()\[\]{}`]+")
# SQL on one line: SELECT ... FROM ... (case-insensitive).
_SQL = re.compile(r"(?i)\bselect\b[^\n]*?\bfrom\b[^\n]*")
# Routes of the FLIP services, which flip-nvflare errors name (they hold no patient data).
_SERVICE_ROUTES = ("/api/", "/cohort/", "/download/images/", "/upload/images/", "/health")


class Sanitizer:
    """Redacts identifiers, the query, SQL and data paths from text, and caps its length.

    Args:
        identifiers: Values to replace by ``[id]`` wherever they appear as whole pieces of a
            token (``ACC1`` is found in ``ACC1_seg.nii`` but not in ``XACC1``).
        query: The cohort query; every occurrence (whitespace-insensitive) becomes ``[query]``.
        secrets: Other strings to remove (e.g. the encrypted project id), replaced by ``[secret]``.
        code_roots: Folders whose files are code and may be named: paths under them are
            shortened rather than removed. The Python installation is always included.
        max_chars: Cap on the returned text (at least 200).
    """

    def __init__(
        self,
        *,
        identifiers: Iterable[object] = (),
        query: str | None = None,
        secrets: Iterable[str | None] = (),
        code_roots: Iterable[str | Path] = (),
        max_chars: int = DEFAULT_MAX_CHARS,
    ) -> None:
        if max_chars < 200:
            raise FlipConfigError("Sanitizer.max_chars must be at least 200.")
        self.max_chars = max_chars
        self._ids: set[str] = set()
        for value in identifiers:
            if value is None:
                continue
            text = str(value).strip()
            if text and text.lower() not in ("nan", "none", "<na>"):
                self._ids.add(text)
        self._max_id_len = max((len(i) for i in self._ids), default=0)
        self._query = _whitespace_insensitive(query) if query and query.strip() else None
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self._code_roots = _code_roots(code_roots)

    # ------------------------------------------------------------------ public API

    def exception(self, exc: BaseException) -> str:
        """The formatted traceback of ``exc`` (with its chained causes), sanitized and capped."""
        return self.text(format_traceback(exc))

    def text(self, text: str) -> str:
        """``text`` with identifiers, the query, secrets, SQL and data paths redacted, capped in length."""
        # Bound the work on huge inputs first; the end of a traceback matters most.
        limit = self.max_chars * 8
        if len(text) > limit:
            text = text[-limit:]
        text = self._redact_secrets(text)
        lines = [self._line(line) for line in text.split("\n")]
        return self._cap("\n".join(lines))

    # ------------------------------------------------------------------ steps

    def _redact_secrets(self, text: str) -> str:
        if self._query is not None:
            text = self._query.sub(QUERY_MARK, text)
        for secret in self._secrets:
            text = text.replace(secret, SECRET_MARK)
        return _SQL.sub(SQL_MARK, text)

    def _line(self, line: str) -> str:
        frame = _FRAME.match(line)
        if frame is None:
            return self._redact_ids(self._redact_paths(line))
        path = self._code_path(frame.group("path"))
        rest = self._redact_ids(self._redact_paths(frame.group("rest")))
        return f'{frame.group("indent")}File "{path}", line {frame.group("line")}{rest}'

    def _code_path(self, raw: str) -> str:
        if raw.startswith("<") and raw.endswith(">"):  # <frozen importlib._bootstrap>, <string>
            return raw
        shortened = self._shorten(raw)
        if shortened is not None:
            return shortened
        # Code outside known roots: keep only the file name, so the frame still says which file.
        return f"{PATH_MARK}/{self._redact_ids(Path(raw).name)}"

    def _shorten(self, raw: str) -> str | None:
        path = raw.rstrip("/")
        for root, label in self._code_roots:
            if path == root or path.startswith(root + "/"):
                relative = path[len(root) :].lstrip("/")
                shown = f"{label}/{relative}" if relative else label
                # A code path may still contain an identifier (e.g. a folder named after one).
                return self._redact_ids(shown)
        return None

    def _redact_paths(self, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0).startswith(_SERVICE_ROUTES):
                return match.group(0)
            shortened = self._shorten(match.group(0))
            return shortened if shortened is not None else PATH_MARK

        return _ABS_PATH.sub(replace, text)

    def _redact_ids(self, text: str) -> str:
        if not self._ids:
            return text
        return _ID_TOKEN.sub(lambda m: self._redact_token(m.group(0)), text)

    def _redact_token(self, token: str) -> str:
        if token in self._ids:
            return ID_MARK
        pieces = [(m.start(), m.end()) for m in _ALNUM.finditer(token)]
        out: list[str] = []
        cursor = 0
        i = 0
        while i < len(pieces):
            start = pieces[i][0]
            match_end = -1
            next_i = i + 1
            for j in range(i, len(pieces)):
                end = pieces[j][1]
                if end - start > self._max_id_len:
                    break
                if token[start:end] in self._ids:
                    match_end, next_i = end, j + 1
            if match_end >= 0:
                out.append(token[cursor:start])
                out.append(ID_MARK)
                cursor = match_end
            i = next_i
        if not out:
            return token
        out.append(token[cursor:])
        return "".join(out)

    def _cap(self, text: str) -> str:
        if len(text) <= self.max_chars:
            return text
        marker = "\n[... {} characters removed ...]\n"
        budget = self.max_chars - len(marker.format(len(text)))
        head = budget // 4
        tail = budget - head
        removed = len(text) - head - tail
        return text[:head] + marker.format(removed) + text[len(text) - tail :]


def _whitespace_insensitive(query: str) -> re.Pattern[str]:
    words = query.split()
    return re.compile(r"\s+".join(re.escape(word) for word in words))


def _code_roots(extra: Iterable[str | Path]) -> list[tuple[str, str]]:
    """(root, label) pairs, longest first, for paths that are code and may be named."""
    roots: dict[str, str] = {}
    for item in extra:
        for form in _forms(item):
            roots[form] = Path(item).name or str(item)
    for form in _forms(Path(__file__).resolve().parents[1]):  # flip-nvflare itself, wherever installed
        roots.setdefault(form, "flip_nvflare")
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib"):
        for form in _forms(paths[key]):
            roots[form] = "<site-packages>"
    for key in ("stdlib", "platstdlib"):
        for form in _forms(paths[key]):
            roots.setdefault(form, "<python>")
    for form in _forms(sys.prefix):
        roots.setdefault(form, "<python>")
    return sorted(roots.items(), key=lambda pair: len(pair[0]), reverse=True)


def _forms(path: str | Path) -> set[str]:
    """The path as given and resolved, without a trailing slash."""
    text = str(path).rstrip("/")
    forms = {text} if text else set()
    try:
        forms.add(str(Path(path).resolve()).rstrip("/"))
    except OSError:
        pass
    return {f for f in forms if f}
