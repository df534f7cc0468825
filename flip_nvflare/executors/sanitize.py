"""What text may say when it leaves a trust, or when the server passes a client's text on to the hub.

A failure in user code at a trust becomes text that travels to the Central Hub (the reply's
``exception`` header, forwarded by the server's ExceptionForwarder). :class:`Sanitizer` turns an
exception or any text into something safe to send:

- the cohort's values (accession ids, and the values of ``redact_columns``) become ``[id]``, found
  as whole words in any letter case, in full-width or other compatibility forms, and with their
  words separated by any run of whitespace (line breaks included) or a little punctuation, so
  ``JOHN`` and ``smith`` on two lines, or ``John Smith`` in full-width letters, are both the value
  ``John Smith``;
- identifier shapes become ``[number]`` or ``[date]`` whether or not they are in the cohort:
  NHS numbers (10 digits, or 3-3-4 with spaces or dashes), any run of 8 or more digits, and dates
  (``YYYY-MM-DD``, ``DD/MM/YYYY``, ``DD-MM-YYYY``, ``DD.MM.YYYY``, ``DD/MM/YY``, ``3 March 1980``,
  ``datetime.date(1980, 2, 3)``...);
- the cohort query and the encrypted project id become ``[query]`` / ``[secret]``, and SQL that
  looks like ``SELECT ... FROM ...`` becomes ``[sql]``;
- paths become ``[path]``, whatever their prefix (absolute, ``~/``, ``./``, ``../``, Windows drives,
  and the path of a URL, whose scheme and host are kept). Only code is named: paths under the job's
  ``custom/`` folder, flip-nvflare and the Python installation are shortened to
  ``custom/trainer.py`` or ``<site-packages>/torch/...``;
- the text is capped in length, keeping its end (where the exception type and message are).
  Everything is redacted *before* anything is cut, so a cut never leaves part of a value visible.

Traceback frame lines keep their line numbers and function names, and the final line keeps the
exception type, so the hub's log still says what failed and where.

The server does not know a trust's cohort; :func:`sanitize_hub_text` applies the rules that need
none (identifier shapes, paths, SQL) to any text a client set that the server passes on, and
:func:`hub_return_code` shows a client's return code only if it is one of NVFlare's.

Matching folds both the text and the values the same way: each character is decomposed to its
compatibility form (NFKD, which includes what NFKC folds: full-width letters and digits, ligatures,
non-breaking spaces...), combining accents are dropped and the result is case-folded. This module
is pure Python (NVFlare is imported only to list its return codes, when it is installed).
"""

from __future__ import annotations

import functools
import re
import sys
import sysconfig
import unicodedata
from bisect import bisect_right
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
NUMBER_MARK = "[number]"
DATE_MARK = "[date]"
#: What the hub sees instead of a return code that is not one of NVFlare's.
UNKNOWN_RETURN_CODE = "[unrecognised return code]"

_MARKS = (ID_MARK, QUERY_MARK, SECRET_MARK, SQL_MARK, PATH_MARK, NUMBER_MARK, DATE_MARK)
_MARK = "|".join(re.escape(mark) for mark in _MARKS)

# A word of a value or of the text, in folded text: a run of letters and digits of any script.
_ATOM = re.compile(r"[^\W_]+")
_WHITESPACE = re.compile(r"\s+")
# A character repr() escapes inside a string (a line break, a tab, a full-width or non-breaking
# space...: ``'John\nSmith'``), in folded text; it separates words as the character did.
_ESCAPED_SPACE = re.compile(r"\\(?:[ntrfv]|x[0-9a-f]{2}|u[0-9a-f]{4})")
# Between two words of a value, the text may have any whitespace and at most this much punctuation.
_MAX_SEPARATOR = 3
# ``  File "/path/x.py", line 12, in fn`` (a traceback frame header).
_FRAME = re.compile(r'^(?P<indent>\s*)File "(?P<path>[^"]+)", line (?P<line>\d+)(?P<rest>.*)$')
# The line number of a frame header, which the identifier rules leave alone.
_FRAME_LINE_NUMBER = re.compile(r'(?m)^[ \t]*File "[^"\n]+", line (\d+)')
# SQL on one line: SELECT ... FROM ... (case-insensitive).
_SQL = re.compile(r"(?i)\bselect\b[^\n]*?\bfrom\b[^\n]*")

# Paths: a character of a path, or a mark an earlier rule left inside one (``/data/[id]/x.nii``).
_PATH_PART = rf"""(?:[^\s'"<>|,;()\[\]{{}}`]|{_MARK})"""
# A path may go on after spaces (``/data/Jane Doe/scan 1.nii``): up to 4 more words, when the last
# of them has a slash or ends like a file name (a word that starts a new path does not count).
_NEXT_WORD = r"[ ](?![/\\~.]|[A-Za-z]:[\\/])"
_SPACED = (
    rf"(?:(?:{_NEXT_WORD}{_PATH_PART}+){{0,3}}{_NEXT_WORD}{_PATH_PART}*?"
    rf"(?:[\\/]{_PATH_PART}*|\.[A-Za-z0-9]{{1,5}}(?![\w/\\])))?"
)
_PATHS = re.compile(
    # a URL: its scheme and host are kept, its path, query and fragment are not
    rf"""(?P<url>(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^\s/?#'"<>\[\]]*)"""
    rf"""(?P<url_path>[/?#]{_PATH_PART}*)?)"""
    # a Windows path: C:\data\x.csv, C:/data, \\server\share
    rf"|(?P<windows>(?<![\w\\])(?:[A-Za-z]:[\\/]|\\\\){_PATH_PART}*{_SPACED})"
    # an absolute POSIX path or a home path, not inside a URL or a relative path, nor after a
    # shortened code root or a mark (``<site-packages>/torch``, ``[id]/scan``)
    rf"|(?P<absolute>(?<![\w:/.~\-\]\\])(?<!<site-packages>)(?<!<python>)(?:~[\w.\-]*)?/{_PATH_PART}+{_SPACED})"
    # a path relative to the current folder: ./x, ../x
    rf"|(?P<relative>(?<![\w/.~\-\]\\])\.\.?[\\/]{_PATH_PART}+{_SPACED})"
)
_DRIVE = re.compile(r"[A-Za-z]:[\\/]")

# Identifier shapes, matched in folded (lower-case, ASCII-digit) text.
_DASH = r"[\-\u2010-\u2015\u2212]"
_NUMBERS = re.compile(
    # an NHS number written 3-3-4, with spaces or dashes between the groups
    rf"(?<!\d)\d{{3}}(?:\s*{_DASH}\s*|\s+)\d{{3}}(?:\s*{_DASH}\s*|\s+)\d{{4}}(?!\d)"
    # any long run of digits (NHS and hospital numbers, phone numbers, dates written 19800203)
    r"|\d{8,}"
)
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?(?![a-z])"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_DATES = re.compile(
    r"(?<!\d)\d{4}(?P<sep1>[\-/.])\d{1,2}(?P=sep1)\d{1,2}(?!\d)"  # 1980-02-03, 1980/2/3, 1980.02.03
    r"|(?<!\d)\d{1,2}(?P<sep2>[\-/.])\d{1,2}(?P=sep2)\d{4}(?!\d)"  # 03/02/1980, 3-2-1980, 03.02.1980
    r"|(?<![\d/])\d{1,2}/\d{1,2}/\d{2}(?![\d/])"  # 03/02/80
    rf"|(?<!\d){_DAY}(?:\s+of)?[\s,.\-]+{_MONTH}[\s,.\-]*\d{{4}}(?!\d)"  # 3 March 1980, 3rd of mar. 1980
    rf"|(?<![a-z]){_MONTH}[\s,.\-]*{_DAY}[\s,.\-]+\d{{4}}(?!\d)"  # March 3, 1980
    r"|(?:(?<=date\()|(?<=datetime\())\s*\d{4}\s*,\s*\d{1,2}\s*,\s*\d{1,2}(?!\d)"  # datetime.date(1980, 2, 3)
)

# How far before a cut of a huge input the rules look, so a value across the cut is kept whole.
_LOOKBACK = 4096
# How far a cut of a huge input may move forward to the end of the word it fell in.
_MAX_WORD = 256
_NOT_ALNUM = re.compile(r"[\W_]")
# Says where text was removed (by the cap, or before a huge input's end).
_CUT_MARKER = "\n[... {} characters removed ...]\n"


class Sanitizer:
    """Redacts cohort values, identifier shapes, the query, SQL and data paths from text, and caps its length.

    Args:
        identifiers: Values to replace by ``[id]`` (accession ids, values of ``redact_columns``).
            A value is found as whole words (``ACC1`` is found in ``ACC1_seg.nii`` but not in
            ``XACC1``), in any case or compatibility form, with its words separated by any
            whitespace (line breaks included) and at most a little punctuation.
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
        self._values: set[tuple[str, ...]] = set()
        starts: dict[str, set[int]] = {}
        longest = 0
        for value in identifiers:
            if value is None:
                continue
            text = str(value).strip()
            if not text or text.lower() in ("nan", "none", "<na>"):
                continue
            words = tuple(_ATOM.findall(_fold(text)[0]))
            if not words:
                continue
            self._values.add(words)
            starts.setdefault(words[0], set()).add(len(words))
            longest = max(longest, len(text))
        # first word of a value -> the numbers of words of the values starting with it, longest first
        self._starts = {word: tuple(sorted(counts, reverse=True)) for word, counts in starts.items()}
        self._lookback = max(_LOOKBACK, 4 * longest)
        self._query = _whitespace_insensitive(query) if query and query.strip() else None
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
        self._code_roots = _code_roots(code_roots)

    # ------------------------------------------------------------------ public API

    def exception(self, exc: BaseException) -> str:
        """The formatted traceback of ``exc`` (with its chained causes), sanitized and capped."""
        return self.text(format_traceback(exc))

    def text(self, text: str) -> str:
        """``text`` with values, identifier shapes, the query, secrets, SQL and paths redacted, then capped."""
        text = self._redact_secrets(text)
        text, removed = self._bound(text)
        text = self._redact_values(text)
        text = "\n".join(self._line(line) for line in text.split("\n"))
        if removed:
            text = _CUT_MARKER.format(removed).lstrip("\n") + text
        return self._cap(text)

    # ------------------------------------------------------------------ steps

    def _redact_secrets(self, text: str) -> str:
        if self._query is not None:
            text = self._query.sub(QUERY_MARK, text)
        for secret in self._secrets:
            text = text.replace(secret, SECRET_MARK)
        return _SQL.sub(SQL_MARK, text)

    def _bound(self, text: str) -> tuple[str, int]:
        """The end of a huge input (``8 * max_chars``), cut where it splits no value, identifier or path.

        This bounds the work; the cap comes later. A value or identifier shape across the cut
        moves the cut back to the start of the word it begins in (it is redacted whole next);
        otherwise the cut moves forward past the word it fell in. Returns the text kept and how
        many characters were removed.
        """
        limit = self.max_chars * 8
        if len(text) <= limit:
            return text, 0
        cut = len(text) - limit
        start = max(0, cut - self._lookback)
        nearby = self._matches(text[start : cut + self._lookback])
        across = [s + start for s, e, _mark in nearby if s + start < cut < e + start]
        if across:
            cut = min(across)
            # keep the whole word it starts in (a path holding the value is then redacted as a path)
            word_start = cut
            while word_start > max(0, cut - _MAX_WORD) and not text[word_start - 1].isspace():
                word_start -= 1
            if word_start == 0 or text[word_start - 1].isspace():
                cut = word_start
        elif not (text[cut - 1].isspace() or text[cut].isspace()):
            space = _WHITESPACE.search(text, cut, cut + _MAX_WORD)
            if space is None:  # a very long word: cut after its first character that is not a letter or digit
                space = _NOT_ALNUM.search(text, cut)
            cut = space.end() if space is not None else len(text)
        return text[cut:], cut

    def _redact_values(self, text: str) -> str:
        """Cohort values and identifier shapes, found across line breaks; frame line numbers and code roots kept."""
        spans = self._matches(text)
        if not spans:
            return text
        protected = _merge(self._protected(text))
        out: list[str] = []
        cursor = 0
        for start, end, mark in spans:
            for piece_start, piece_end in _outside(start, end, protected):
                out.append(text[cursor:piece_start])
                out.append(mark)
                cursor = piece_end
        out.append(text[cursor:])
        return "".join(out)

    def _matches(self, text: str) -> list[tuple[int, int, str]]:
        """Merged (start, end, mark) spans of cohort values and identifier shapes in ``text``."""
        folded, origin = _fold(text)
        found: list[tuple[int, int, str]] = []
        if self._values:
            words = [(m.start(), m.end(), m.group()) for m in _ATOM.finditer(folded)]
            i = 0
            while i < len(words):
                taken = 0
                for count in self._starts.get(words[i][2], ()):
                    if self._is_value(folded, words, i, count):
                        taken = count
                        break
                if taken:
                    found.append((words[i][0], words[i + taken - 1][1], ID_MARK))
                    i += taken
                else:
                    i += 1
        found.extend((m.start(), m.end(), DATE_MARK) for m in _DATES.finditer(folded))
        found.extend((m.start(), m.end(), NUMBER_MARK) for m in _NUMBERS.finditer(folded))
        if not found:
            return []
        spans = sorted(((*_original_span(text, origin, s, e), mark) for s, e, mark in found), key=lambda x: x[:2])
        merged = [spans[0]]
        for start, end, mark in spans[1:]:
            last_start, last_end, last_mark = merged[-1]
            if start < last_end:
                merged[-1] = (last_start, max(last_end, end), last_mark)
            else:
                merged.append((start, end, mark))
        return merged

    def _is_value(self, folded: str, words: list[tuple[int, int, str]], i: int, count: int) -> bool:
        if i + count > len(words):
            return False
        if tuple(word for _s, _e, word in words[i : i + count]) not in self._values:
            return False
        for j in range(i, i + count - 1):
            between = folded[words[j][1] : words[j + 1][0]]
            if len(_WHITESPACE.sub("", between)) > _MAX_SEPARATOR:
                return False
        return True

    def _protected(self, text: str) -> list[tuple[int, int]]:
        """Spans the identifier rules leave alone: frame line numbers, and code roots (shortened later)."""
        spans = [m.span(1) for m in _FRAME_LINE_NUMBER.finditer(text)]
        for root, _label in self._code_roots:
            at = text.find(root)
            while at != -1:
                spans.append((at, at + len(root)))
                at = text.find(root, at + 1)
        return spans

    def _line(self, line: str) -> str:
        frame = _FRAME.match(line)
        if frame is None:
            return self._redact_paths(line)
        path = self._code_path(frame.group("path"))
        rest = self._redact_paths(frame.group("rest"))
        return f'{frame.group("indent")}File "{path}", line {frame.group("line")}{rest}'

    def _code_path(self, raw: str) -> str:
        if raw.startswith("<") and raw.endswith(">"):  # <frozen importlib._bootstrap>, <string>
            return raw
        if raw.startswith(("/", "~", "\\\\")) or _DRIVE.match(raw):
            shortened = self._shorten(raw)
            # Code outside known roots: keep only the file name, so the frame still says which file.
            return shortened if shortened is not None else f"{PATH_MARK}/{_file_name(raw)}"
        if raw.startswith(("./", "../", ".\\", "..\\")):
            return f"{PATH_MARK}/{_file_name(raw)}"
        return raw  # already shortened (custom/trainer.py, <site-packages>/..., [path]/x.py)

    def _shorten(self, raw: str) -> str | None:
        path = raw.rstrip("/")
        for root, label in self._code_roots:
            if path == root or path.startswith(root + "/"):
                relative = path[len(root) :].lstrip("/")
                return f"{label}/{relative}" if relative else label
        return None

    def _redact_paths(self, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group("url") is not None:
                host = match.group("authority").rpartition("@")[2]  # never a user or password
                return match.group("scheme") + host + (f"/{PATH_MARK}" if match.group("url_path") else "")
            if match.group("absolute") is not None:
                shortened = self._shorten(match.group(0))
                if shortened is not None:
                    return shortened
            return PATH_MARK

        return _PATHS.sub(replace, text)

    def _cap(self, text: str) -> str:
        if len(text) <= self.max_chars:
            return text
        marker = _CUT_MARKER
        budget = self.max_chars - len(marker.format(len(text)))
        head = budget // 4
        tail = budget - head
        removed = len(text) - head - tail
        return text[:head] + marker.format(removed) + text[len(text) - tail :]


def sanitize_hub_text(text: object, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Text a client set, made fit for the server to pass on to the hub (its logs, results, statuses).

    The server does not know a trust's cohort, so this applies the rules that need none: identifier
    shapes (NHS numbers, long digit runs, dates), data paths and SQL are redacted, then the text is
    capped. Text the FLIP runners already sanitized at the trust passes unchanged.

    Args:
        text: What the client sent (a reply header, a failure reason, a metric name...).
        max_chars: Cap on the returned text (at least 200).
    """
    return _hub_sanitizer(max_chars).text(str(text))


def hub_return_code(return_code: object) -> str:
    """A client's return code as the hub may see it: one of NVFlare's codes as it is, anything else hidden.

    A return code is a free string a client app can set; only NVFlare's own (``EXECUTION_EXCEPTION``,
    ``TASK_UNKNOWN``...) are shown, any other becomes :data:`UNKNOWN_RETURN_CODE`.
    """
    if isinstance(return_code, str) and return_code in _nvflare_return_codes():
        return return_code
    return UNKNOWN_RETURN_CODE


@functools.lru_cache(maxsize=8)
def _hub_sanitizer(max_chars: int) -> Sanitizer:
    return Sanitizer(max_chars=max_chars)


@functools.lru_cache(maxsize=1)
def _nvflare_return_codes() -> frozenset[str]:
    try:
        from nvflare.apis.fl_constant import ReturnCode
    except ImportError:  # pragma: no cover - NVFlare is installed wherever a return code exists
        return frozenset()
    return frozenset(value for name, value in vars(ReturnCode).items() if name.isupper() and isinstance(value, str))


# ---------------------------------------------------------------------- folding and spans


@functools.lru_cache(maxsize=65536)
def _fold_char(char: str) -> str:
    decomposed = unicodedata.normalize("NFKD", char)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _fold(text: str) -> tuple[str, list[int] | None]:
    """``text`` folded for matching, and the index in ``text`` of each folded character (None: the same)."""
    if text.isascii():
        folded = text.lower()
        origin = None
    else:
        parts: list[str] = []
        positions: list[int] = []
        for index, char in enumerate(text):
            piece = char.lower() if char < "\x80" else _fold_char(char)
            parts.append(piece)
            positions.extend([index] * len(piece))
        folded = "".join(parts)
        origin = positions
    if "\\" in folded:  # repr()'s escapes separate words as the characters they stand for did
        folded = _ESCAPED_SPACE.sub(lambda m: " " * len(m.group()), folded)
    return folded, origin


def _original_span(text: str, origin: list[int] | None, start: int, end: int) -> tuple[int, int]:
    if origin is None:
        return start, end
    first, last = origin[start], origin[end - 1] + 1
    while last < len(text) and unicodedata.combining(text[last]):  # accents the folding dropped
        last += 1
    return first, last


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _outside(start: int, end: int, protected: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of [start, end) outside the (merged, sorted) protected spans."""
    pieces: list[tuple[int, int]] = []
    i = max(0, bisect_right(protected, (start, start)) - 1)
    cursor = start
    while i < len(protected) and protected[i][0] < end:
        p_start, p_end = protected[i]
        if p_end > cursor:
            if p_start > cursor:
                pieces.append((cursor, p_start))
            cursor = max(cursor, p_end)
        i += 1
    if cursor < end:
        pieces.append((cursor, end))
    return pieces


def _file_name(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("/\\"))[-1]


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
