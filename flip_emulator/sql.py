"""Cohort queries: validated like data-access-api does, then run against the synthetic OMOP database.

The OMOP database is attached read-only under the schema name ``omop``, so ``omop.person`` is the
SQLite table ``person`` of that file (unqualified names resolve there too). Rules, each a
:class:`QueryRejected` (HTTP 400) with a message that never repeats the SQL:

- at most 10,240 characters, exactly one statement, starting with ``SELECT`` or ``WITH``
  (compound ``UNION``/``INTERSECT``/``EXCEPT`` selects are selects);
- nothing but reading: SQLite's authorizer refuses any other action, any function that is not
  deterministic-safe, and any table outside the ``omop`` schema (``main``, ``temp``,
  ``sqlite_master``, table-valued functions);
- ``LIMIT`` and ``OFFSET`` take integer literals only;
- an unknown table or column names what was not found.

A query running longer than the time limit is aborted (:class:`QueryFailed`, HTTP 500).
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_QUERY_CHARS = 10_240
SUBJECT_COLUMN = "person_id"
ACCESSION_COLUMN = "accession_id"

_DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<line_comment>--[^\n]*)
  | (?P<block_comment>/\*.*?(?:\*/|\Z))
  | (?P<string>'(?:[^']|'')*(?:'|\Z))
  | (?P<quoted>"(?:[^"]|"")*(?:"|\Z)|`[^`]*(?:`|\Z)|\[[^\]]*(?:\]|\Z))
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|0[xX][0-9a-fA-F]+)
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<param>[?:@$][A-Za-z0-9_]*)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


class QueryRejected(ValueError):
    """The query breaks a rule (HTTP 400); the message says which, without repeating the SQL."""


class QueryFailed(RuntimeError):
    """The query could not be run (HTTP 500)."""


@dataclass(frozen=True)
class Token:
    """One lexical token of a query."""

    kind: str
    text: str


def tokenize(query: str) -> list[Token]:
    """Split ``query`` into tokens, dropping whitespace and comments."""
    tokens = []
    for match in _TOKEN.finditer(query):
        kind = match.lastgroup or "other"
        if kind in ("space", "line_comment", "block_comment"):
            continue
        tokens.append(Token(kind, match.group()))
    return tokens


def validate_query(query: str) -> None:
    """Check the rules that need no database (length, one statement, SELECT, literal LIMIT/OFFSET).

    Raises:
        QueryRejected: A rule is broken.
    """
    if not isinstance(query, str) or not query.strip():
        raise QueryRejected("The query is empty.")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryRejected(f"The query is longer than {MAX_QUERY_CHARS:,} characters.")
    tokens = tokenize(query)
    while tokens and tokens[-1].text == ";":
        tokens.pop()
    if not tokens:
        raise QueryRejected("The query is empty.")
    if any(t.text == ";" for t in tokens):
        raise QueryRejected("The query must be exactly one statement.")
    first = tokens[0].text.upper() if tokens[0].kind == "word" else tokens[0].text
    if first not in ("SELECT", "WITH", "("):
        raise QueryRejected(
            "Only SELECT queries (including UNION, INTERSECT, EXCEPT and WITH) are allowed; "
            f"this statement starts with {first[:20]!r}."
        )
    for i, token in enumerate(tokens):
        keyword = token.text.upper() if token.kind == "word" else ""
        if keyword not in ("LIMIT", "OFFSET"):
            continue
        # An integer literal, then the end of the clause: ")", end of query, OFFSET, or ", <literal>".
        position = i + 1
        while True:
            literal = tokens[position] if position < len(tokens) else None
            if literal is None or literal.kind != "number" or not literal.text.isdigit():
                raise QueryRejected(f"{keyword} must be an integer literal (LIMIT and OFFSET take no expressions).")
            after = tokens[position + 1] if position + 1 < len(tokens) else None
            if keyword == "LIMIT" and after is not None and after.text == "," and position == i + 1:
                position += 2
                continue
            if after is None or after.text == ")" or (after.kind == "word" and after.text.upper() == "OFFSET"):
                break
            raise QueryRejected(f"{keyword} must be an integer literal (LIMIT and OFFSET take no expressions).")


@dataclass
class QueryResult:
    """A cohort: column-oriented values and the number of distinct subjects it covers.

    Attributes:
        columns: Column name -> values (first copy of a duplicated name kept).
        rows: Number of rows.
        subjects: Distinct subjects, or ``None`` when the result exposes neither ``person_id`` nor
            ``accession_id`` (treated as below the threshold).
    """

    columns: dict[str, list[Any]]
    rows: int
    subjects: int | None


class CohortDatabase:
    """Runs cohort queries against an OMOP SQLite file (opened read-only, one connection per query).

    Args:
        omop_path: The OMOP database.
        timeout: Seconds a query may run.
    """

    def __init__(self, omop_path: Path, *, timeout: float = 10.0) -> None:
        self.omop_path = omop_path
        self.timeout = timeout

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:", uri=True, check_same_thread=False)
        conn.execute("ATTACH DATABASE ? AS omop", (f"file:{self.omop_path}?mode=ro",))
        return conn

    def run(self, query: str) -> QueryResult:
        """Validate and run ``query``; count its distinct subjects.

        Raises:
            QueryRejected: The query breaks a rule or names an unknown table or column.
            QueryFailed: The database failed or the query ran out of time.
        """
        validate_query(query)
        conn = self._connect()
        try:
            denial: list[str] = []
            conn.set_authorizer(_authorizer(denial))
            deadline = time.monotonic() + self.timeout
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
            try:
                cursor = conn.execute(query)
                names = [d[0] for d in cursor.description or []]
                data = cursor.fetchall()
            except sqlite3.Warning as exc:  # e.g. more than one statement
                raise QueryRejected("The query must be exactly one statement.") from exc
            except sqlite3.DatabaseError as exc:
                raise _classify(exc, denial, timed_out=time.monotonic() > deadline) from None
            finally:
                conn.set_authorizer(None)
                conn.set_progress_handler(None, 0)
            if not names:
                raise QueryRejected("The query returns no columns.")
            columns: dict[str, list[Any]] = {}
            for index, name in enumerate(names):
                if name not in columns:
                    columns[name] = [_json_value(row[index]) for row in data]
            return QueryResult(columns, len(data), self._count_subjects(conn, columns))
        finally:
            conn.close()

    def _count_subjects(self, conn: sqlite3.Connection, columns: dict[str, list[Any]]) -> int | None:
        if SUBJECT_COLUMN in columns:
            return len({_id_text(v) for v in columns[SUBJECT_COLUMN] if v is not None})
        if ACCESSION_COLUMN in columns:
            accessions = sorted({str(v) for v in columns[ACCESSION_COLUMN] if v is not None})
            if not accessions:
                return 0
            conn.execute("CREATE TEMP TABLE wanted (accession_id TEXT PRIMARY KEY)")
            conn.executemany("INSERT OR IGNORE INTO wanted VALUES (?)", [(a,) for a in accessions])
            row = conn.execute(
                "SELECT COUNT(DISTINCT io.person_id) FROM omop.image_occurrence io "
                "JOIN temp.wanted w ON w.accession_id = io.accession_id"
            ).fetchone()
            return int(row[0])
        return None


def _id_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _authorizer(denial: list[str]) -> Callable[[int, str | None, str | None, str | None, str | None], int]:
    def check(action: int, arg1: str | None, arg2: str | None, db: str | None, _source: str | None) -> int:
        if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() in _DENIED_FUNCTIONS:
                denial.append(f"The function {arg2} is not allowed.")
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK
        system_table = arg1 is not None and arg1.lower().startswith("sqlite_")
        # An unqualified table reaches here without a schema; only omop has tables to resolve it to.
        if action == sqlite3.SQLITE_READ and db in ("omop", None) and arg1 and not system_table:
            return sqlite3.SQLITE_OK
        if arg1 is not None and (system_table or db not in ("omop", None)):
            denial.append(f"Only tables of the omop schema may be queried (not {db or '?'}.{arg1}).")
        else:
            denial.append("Only SELECT queries are allowed: the query tries to do something other than read.")
        return sqlite3.SQLITE_DENY

    return check


def _classify(exc: sqlite3.DatabaseError, denial: list[str], *, timed_out: bool) -> Exception:
    message = str(exc)
    if denial:
        return QueryRejected(denial[0])
    if "one statement at a time" in message:
        return QueryRejected("The query must be exactly one statement.")
    if timed_out or message == "interrupted":
        return QueryFailed("Query execution failed: it ran longer than the time limit.")
    for prefix, what in (("no such table: ", "table"), ("no such column: ", "column")):
        if message.startswith(prefix):
            name = message[len(prefix) :]
            schema, dot, _table = name.partition(".")
            if what == "table" and dot and schema.lower() != "omop":
                return QueryRejected(f"Only the omop schema may be queried (not {schema}).")
            return QueryRejected(f"Unknown {what}: {name}.")
    if "syntax error" in message or "incomplete input" in message or "unrecognized token" in message:
        return QueryRejected("The query is not valid SQL (syntax error).")
    if isinstance(exc, sqlite3.OperationalError) and (
        "no such function" in message or "wrong number of arguments" in message or "ambiguous" in message
    ):
        # Message names a function or a column only, never a value.
        return QueryRejected(f"The query is not valid: {message}.")
    return QueryFailed("Query execution failed.")
