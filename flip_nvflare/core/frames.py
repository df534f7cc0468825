"""Decoding of the data-access-api cohort answer into a pandas DataFrame.

``POST /cohort/dataframe`` answers a column-oriented JSON object, ``{"col": [v0, v1, ...], ...}``,
with no row cap, so a cohort can be millions of rows. :func:`dataframe_from_columns_json` gives
the same frame as the naive ``pandas.DataFrame(data=json.loads(body))`` (same columns, dtypes and
values) while using far less time and memory:

* The body is walked column by column and never decoded to one big ``str``; only one column's
  temporaries exist at a time.
* A long list of numbers and ``null`` (or of ``true``/``false``) is checked against the JSON
  number grammar with vectorised numpy tests, then parsed by pandas' C CSV reader: no Python
  object per value. Its float parser is exact (correctly rounded, like Python's ``float``) from
  pandas 3.1 on; older pandas is asked for its ``round_trip`` parser. Anything unusual (an
  integer of 19 or more digits, ``-0`` among floats, only nulls, ...) takes the general path.
* A long list of strings and ``null`` (compact or ``, ``-separated) without escapes becomes an
  Arrow string column straight from the body's bytes where pandas keeps strings in Arrow (its
  default ``str`` dtype with pyarrow installed): the strings' bytes laid end to end plus
  offsets, no Python object per row; Arrow checks the UTF-8.
* Otherwise (pandas keeping strings as Python objects, or strings with escapes) such a list is
  decoded without the json module when its strings repeat (codes, dates, categories): each
  distinct value is found through fixed-width byte keys and a hash table, decoded once, and
  shared by every row that holds it, so the frame keeps one ``str`` object per distinct value.
  Mostly distinct strings without escapes are split straight out of the decoded slice.
* Any other list (nested values, mixed types, mostly distinct strings with escapes, line
  breaks between items, short lists) is decoded from its own slice of the body by msgspec and
  typed by pandas as the naive constructor types it; repeated strings are shared there too.
  What msgspec refuses (``NaN``, ``1e400``, lone surrogates, invalid JSON) or a slice that is
  not the whole list (a ``]`` inside a string or a nested list) goes to the json module's C
  scanner, which is the judge of what ``json.loads`` accepts and of every error message.
* On Linux with glibc, the heap memory the decoder freed is handed back to the OS at the end
  (``malloc_trim``), so the process holds the frame rather than the frame plus leftovers.

Error messages say what is wrong and where (column names, byte offsets, counts) but never
contain a value from the body.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flip_nvflare.errors import FlipInvalidResponse

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pandas as pd

__all__ = ["dataframe_from_columns_json"]

# A column's list must be at least this long (in bytes) to try the vectorised path; shorter
# ones are cheaper through the json module.
_FAST_PATH_MIN_BYTES = 16 * 1024
# String columns at least this long are checked for repeated values (and shared if so).
_DEDUPE_MIN_ROWS = 4096
_DEDUPE_SAMPLE = 16384
# Strings up to this many bytes are compared as fixed-width keys; longer ones as str objects.
_MAX_KEY_BYTES = 64
# After decoding a body at least this long, free heap memory is handed back to the OS.
_TRIM_AFTER_BYTES = 1 << 20
# Strings are copied out of the body this many bytes at a time (bounds the temporaries).
_WINDOW_BYTES = 1 << 22
# Above this many columns the frame is consolidated, as the naive constructor does.
_MAX_UNCONSOLIDATED_COLUMNS = 100

_WHITESPACE = b" \t\n\r"
_WHITESPACE_RE = re.compile(rb"[ \t\n\r]*")
_BOOL_CHARS = b"truefals,"

_KIND_BY_BYTE = {
    ord("{"): "an object",
    ord("["): "a list",
    ord('"'): "a string",
    ord("t"): "a boolean",
    ord("f"): "a boolean",
    ord("n"): "null",
    ord("-"): "a number",
    ord("N"): "a number",
    ord("I"): "a number",
    **{c: "a number" for c in b"0123456789"},
}


def dataframe_from_columns_json(body: bytes | bytearray) -> pd.DataFrame:
    """Turn a column-oriented JSON body into a DataFrame.

    The body must be a JSON object mapping each column name to a list of values, all lists of
    the same length (the data-access-api ``POST /cohort/dataframe`` answer). The result equals
    ``pandas.DataFrame(data=json.loads(body))``: same column order, dtypes and values (for
    example ``null`` in a column of integers gives ``float64`` with ``NaN``, and a column of
    strings gets pandas' default string dtype). An empty object gives an empty DataFrame.

    Args:
        body: The raw response body (UTF-8, or any encoding ``json.loads`` detects).

    Returns:
        The cohort, one column per key, in the body's order.

    Raises:
        FlipInvalidResponse: The body is not valid JSON, is not an object of lists, or its
            lists differ in length. The message names the problem (and the column, when there
            is one) but never any value.
        TypeError: ``body`` is not ``bytes`` or ``bytearray``.
    """
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError(f"body must be bytes or bytearray, not {type(body).__name__}")
    encoding = json.detect_encoding(bytes(body[:4]))
    if encoding == "utf-8":
        columns = _parse_columns(body, 0)
    elif encoding == "utf-8-sig":
        columns = _parse_columns(body, 3)
    else:  # UTF-16 / UTF-32: rare; decode whole, like json.loads
        try:
            text = body.decode(encoding, "surrogatepass")
        except UnicodeDecodeError as exc:
            raise FlipInvalidResponse(f"cohort body is not valid {encoding.upper()} (at byte {exc.start})") from None
        columns = _columns_from_text(text)
    frame = _assemble(columns)
    if len(body) >= _TRIM_AFTER_BYTES:
        _release_free_memory()
    return frame


# --------------------------------------------------------------------------- structure


def _syntax_error(what: str, position: int) -> FlipInvalidResponse:
    return FlipInvalidResponse(f"cohort body is not valid JSON: {what} (at byte {position})")


def _kind_at(body: bytes | bytearray, pos: int) -> str:
    if pos >= len(body):
        return "missing (the body ends early)"
    return _KIND_BY_BYTE.get(body[pos], "not valid JSON")


def _kind_of(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _skip_whitespace(body: bytes | bytearray, pos: int) -> int:
    match = _WHITESPACE_RE.match(body, pos)
    return match.end() if match is not None else pos


def _parse_columns(body: bytes | bytearray, pos: int) -> dict[str, Any]:
    """Walk the top-level object of a UTF-8 body, decoding one column at a time."""
    size = len(body)
    pos = _skip_whitespace(body, pos)
    if pos >= size:
        raise FlipInvalidResponse("cohort body is empty, expected a JSON object of columns")
    if body[pos] != ord("{"):
        raise FlipInvalidResponse(f"top level is {_kind_at(body, pos)}, expected an object of columns")
    columns: dict[str, Any] = {}
    pos = _skip_whitespace(body, pos + 1)
    if pos < size and body[pos] == ord("}"):
        pos += 1
    else:
        while True:
            name, pos = _parse_name(body, pos)
            pos = _skip_whitespace(body, pos)
            if pos >= size or body[pos] != ord(":"):
                raise _syntax_error(f"expected ':' after column name {name!r}", pos)
            pos = _skip_whitespace(body, pos + 1)
            if pos >= size or body[pos] != ord("["):
                raise FlipInvalidResponse(f"column {name!r} is {_kind_at(body, pos)}, expected a list of values")
            # A repeated name replaces the earlier column but keeps its place, as json.loads does.
            columns[name], pos = _parse_column(body, pos, name)
            pos = _skip_whitespace(body, pos)
            if pos < size and body[pos] == ord(","):
                pos = _skip_whitespace(body, pos + 1)
                continue
            if pos < size and body[pos] == ord("}"):
                pos += 1
                break
            raise _syntax_error(f"expected ',' or '}}' after column {name!r}", pos)
    pos = _skip_whitespace(body, pos)
    if pos != size:
        raise _syntax_error("unexpected data after the top-level object", pos)
    return columns


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """The C library's ``malloc_trim`` if it is glibc, else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # None: the symbols already loaded in this process
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def _release_free_memory() -> None:
    """Hand free heap memory back to the OS (glibc only; elsewhere nothing happens).

    The decoder's temporaries are freed column by column, but glibc keeps most of that memory
    in its heap (large blocks stop being separate mappings once a few have been freed), so the
    process would go on holding about as much again as the frame itself. Trimming once at the
    end (not after every column, which would only make the next column fault its pages in
    again) leaves the process holding the frame.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _parse_name(body: bytes | bytearray, pos: int) -> tuple[str, int]:
    """Decode the JSON string at ``pos`` (a column name); return it and the position after it."""
    if pos >= len(body) or body[pos] != ord('"'):
        raise _syntax_error("expected a column name (a JSON string)", pos)
    end = pos
    while True:
        end = body.find(b'"', end + 1)
        if end == -1:
            raise _syntax_error("unterminated column name", pos)
        backslash = end - 1
        while body[backslash] == ord("\\"):
            backslash -= 1
        if (end - 1 - backslash) % 2 == 0:  # not an escaped quote
            break
    try:
        name = json.loads(str(body[pos : end + 1], "utf-8", "surrogatepass"))
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise _syntax_error("a column name is not a valid JSON string", pos) from None
    return name, end + 1


def _parse_column(body: bytes | bytearray, start: int, name: str) -> tuple[Any, int]:
    """Decode the list starting at ``body[start] == '['``; return the column and the position after it."""
    close = body.find(b"]", start + 1)
    if close == -1:
        raise _syntax_error(f"the list of column {name!r} is not closed", start)
    if close - start - 1 >= _FAST_PATH_MIN_BYTES:
        if body.find(b'"', start, close) == -1:
            # No string: a list of plain scalars, which ends at the first ']'.
            array = _plain_column(bytes(body[start + 1 : close]))
            if array is not None:
                return array, close + 1
        else:
            arrow = _arrow_string_column(body, start + 1, close)
            if arrow is not None:
                return arrow, close + 1
            strings = _string_column(body, start + 1, close)
            if strings is not None:
                return _series_from_strings(strings), close + 1
    values, end = _decode_list(body, start, close, name)
    return _series_from_list(values), end


def _decode_list(body: bytes | bytearray, start: int, close: int, name: str) -> tuple[list[Any], int]:
    """Decode the JSON list at ``start`` (``close``: a first guess of its closing bracket).

    msgspec decodes ``body[start : close + 1]`` when that slice is the whole list and holds only
    what it decodes exactly as the json module does (it refuses ``NaN``, ``1e400``, lone
    surrogates and anything invalid); otherwise :func:`_json_decode_list` decodes the list, so
    the json module stays the judge of every value it would accept and of every error message.
    """
    import msgspec

    with memoryview(body) as view:
        try:
            values = msgspec.json.decode(view[start : close + 1])
        except (msgspec.DecodeError, ValueError):  # not the whole list, or not for msgspec: json decides
            pass
        else:
            if isinstance(values, list):
                return values, close + 1
    return _json_decode_list(body, start, close, name)


def _json_decode_list(body: bytes | bytearray, start: int, close: int, name: str) -> tuple[list[Any], int]:
    """Decode the JSON list at ``start`` with the json module, from its own slice of the body.

    ``close`` is a first guess of the list's closing bracket. If the slice up to it does not
    hold the whole list (the bracket was inside a string or a nested list), the slice grows to
    the next ``]`` at least twice as far, so the total work stays within a small multiple of
    decoding the list once. Slices always end just after a ``]`` byte, which is never part of a
    multi-byte UTF-8 character.
    """
    decoder = json.JSONDecoder()
    with memoryview(body) as view:
        while True:
            try:
                text = str(view[start : close + 1], "utf-8", "surrogatepass")
            except UnicodeDecodeError as exc:
                raise FlipInvalidResponse(f"cohort body is not valid UTF-8 (at byte {start + exc.start})") from None
            try:
                values, consumed = decoder.raw_decode(text)
                break
            except json.JSONDecodeError as exc:
                further = body.find(b"]", max(close + 1, 2 * close - start))
                if further == -1:
                    further = body.rfind(b"]", close + 1)
                if further == -1:
                    where = start + len(text[: exc.pos].encode("utf-8", "surrogatepass"))
                    raise _syntax_error(f"in column {name!r}: {exc.msg}", where) from None
                close = further
    if consumed == len(text):
        return values, close + 1
    return values, start + len(text[:consumed].encode("utf-8", "surrogatepass"))


def _columns_from_text(text: str) -> dict[str, Any]:
    """The whole-body path for bodies in UTF-16 or UTF-32."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FlipInvalidResponse(f"cohort body is not valid JSON: {exc.msg} (at character {exc.pos})") from None
    if not isinstance(data, dict):
        raise FlipInvalidResponse(f"top level is {_kind_of(data)}, expected an object of columns")
    for name, values in data.items():
        if not isinstance(values, list):
            raise FlipInvalidResponse(f"column {name!r} is {_kind_of(values)}, expected a list of values")
    columns: dict[str, Any] = {}
    for name in list(data):
        columns[name] = _series_from_list(data.pop(name))
    return columns


def _assemble(columns: dict[str, Any]) -> pd.DataFrame:
    import pandas as pd

    if not columns:
        return pd.DataFrame(data={})
    names = iter(columns)
    first = next(names)
    expected = len(columns[first])
    for name in names:
        if len(columns[name]) != expected:
            raise FlipInvalidResponse(
                f"column {name!r} has {len(columns[name])} values, expected {expected} (the length of column {first!r})"
            )
    # One block per column is fine (and copy-free) for a usual cohort; a very wide one is
    # consolidated like the naive constructor would, so later column inserts stay fast.
    return pd.DataFrame(columns, copy=len(columns) > _MAX_UNCONSOLIDATED_COLUMNS)


# --------------------------------------------------------------------------- general columns


def _series_from_list(values: list[Any]) -> pd.Series:
    """Type a decoded list exactly as ``pandas.DataFrame({name: values})`` does."""
    import pandas as pd

    if len(values) >= _DEDUPE_MIN_ROWS and _mostly_repeated_strings(values):
        values = _shared_values(values)
    return pd.DataFrame({0: values})[0]


def _mostly_repeated_strings(values: list[Any]) -> bool:
    """Whether a spread sample of ``values`` is strings (and None) at most half of them distinct."""
    step = max(1, len(values) // _DEDUPE_SAMPLE)
    strings = [value for value in values[::step] if value is not None]
    if not strings or not all(type(value) is str for value in strings):
        return False
    return 2 * len(set(strings)) <= len(strings)


def _shared_values(values: list[Any]) -> list[Any]:
    """``values`` with every value replaced by the first value equal to it, if all are str or None.

    For strings that shares one object among equal strings and changes nothing else. Values of
    other types can be equal across types (``1 == 1.0 == True``), so if any turns up the list is
    returned as it was.
    """
    first: dict[Any, Any] = {}
    try:
        shared = list(map(first.setdefault, values, values))
    except TypeError:  # an unhashable value (a list or an object)
        return values
    # Every value is equal to one of the keys, and a str or None equals only a str or None.
    if not all(type(key) is str or key is None for key in first):
        return values
    return shared


def _series_from_strings(values: npt.NDArray[np.object_]) -> pd.Series:
    """Type an object array of ``str`` and ``None`` (at least one ``str``) as pandas types such a list."""
    import pandas as pd

    # What the naive constructor makes of strings with this pandas and its options
    # (pandas 3: the "str" dtype; before: object).
    dtype = pd.DataFrame({0: ["a"]})[0].dtype
    return pd.Series(values, dtype=dtype, copy=False)


# --------------------------------------------------------------------------- vectorised columns


@functools.cache
def _pandas_parses_floats_exactly() -> bool:
    import pandas as pd

    try:
        major, minor = (int(part) for part in pd.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (3, 1)


def _plain_column(span: bytes) -> npt.NDArray[Any] | None:
    """Parse the inside of a list that holds no string; ``None`` if the general path must do it."""
    import numpy as np

    if not span:
        return None
    compact = span
    data = np.frombuffer(span, dtype=np.uint8)
    if data.min() <= 0x20:  # whitespace (or a control character)
        compact = span.translate(None, _WHITESPACE)
        if not compact or not _whitespace_only_between_values(span):
            return None
        data = np.frombuffer(compact, dtype=np.uint8)
        if data.min() < 0x20:
            return None
    if compact[0] in b"-0123456789n":
        return _number_column(compact, data)
    if compact[0] in b"tf" and not compact.translate(None, _BOOL_CHARS):
        return _read_csv_column(compact, "bool", nulls=False)
    return None


def _whitespace_only_between_values(span: bytes) -> bool:
    """Whether each comma-separated item of ``span`` is one unbroken token (as in ``1, 2``, not ``1 2``)."""
    import numpy as np

    data = np.frombuffer(span, dtype=np.uint8)
    token = (data > 0x20) & (data != ord(","))
    runs = int(token[0]) + int(np.count_nonzero(token[1:] & ~token[:-1]))
    return runs == span.count(b",") + 1


def _number_column(compact: bytes, data: npt.NDArray[np.uint8]) -> npt.NDArray[Any] | None:
    """Parse ``compact`` (comma-separated items, no whitespace) if it is numbers and nulls only.

    pandas' parser (asked for int64 or float64) refuses any item that is not a whole number,
    such as ``1e``, ``1.2.3``, ``--1``, ``1x`` or ``true``; the read then fails and the general
    path takes over (and reports an error where JSON has one). The JSON grammar is checked here
    where pandas is laxer: ``+1``, ``01``, ``1.``, ``.5``, ``nan``, ``inf`` and empty items.
    """
    import numpy as np

    size = data.size
    commas = np.flatnonzero(data == ord(","))
    if commas.size and commas[-1] == size - 1:
        return None  # trailing comma
    lead = np.empty(commas.size + 1, dtype=np.intp)  # where each item starts...
    lead[0] = 0
    np.add(commas, 1, out=lead[1:])
    lead_byte = data[lead]
    negative = lead_byte == ord("-")
    if negative.any():
        lead += negative  # ...and then its first digit (or the 'n' of null)
        if lead[-1] >= size:
            return None
        lead_byte = data[lead]
    is_digit = (lead_byte - np.uint8(ord("0"))) < 10
    is_null = (lead_byte == ord("n")) & ~negative
    if not (is_digit | is_null).all():
        return None  # an empty item, or one starting with '.', '+', 'e', 'i', ...
    has_null = bool(is_null.any())
    if has_null and not _all_nulls(data, lead[is_null]):
        return None  # an item starting with 'n' that is not exactly null (nan, ...)
    after_lead = data[np.minimum(lead + 1, size - 1)]
    if ((lead_byte == ord("0")) & ((after_lead - np.uint8(ord("0"))) < 10) & (lead + 1 < size)).any():
        return None  # a leading zero, as in 01
    del after_lead
    # A sign anywhere but first or after e/E ("1-2", "--1", "1e+-2") makes pandas refuse the item,
    # and one in first place is checked above.
    dots = np.flatnonzero(data == ord(".")) if b"." in compact else lead[:0]
    if dots.size and (dots[-1] == size - 1 or not _all_digits(data[dots + 1])):
        return None  # a '.' not followed by a digit, as in 1. or 1.e5

    if not has_null and not dots.size and b"e" not in compact and b"E" not in compact:
        return _read_csv_column(compact, "int64", nulls=False, items=lead.size)
    # Among floats or nulls, an integer of 19+ digits may be typed uint64 or object by pandas.
    # An item with a '.' is no integer: if every item has one (pandas refuses two), skip this.
    if dots.size < np.count_nonzero(is_digit) and int(np.diff(commas, prepend=-1, append=size).max()) > 19:
        ends = np.empty_like(lead)
        ends[:-1] = commas
        ends[-1] = size
        candidates = lead[is_digit & (ends - lead >= 19)]
        del ends
        for offset in range(1, 19):
            candidates = candidates[candidates + offset < size]
            candidates = candidates[(data[candidates + offset] - np.uint8(ord("0"))) < 10]
            if not candidates.size:
                break
        else:
            return None
        del candidates
    del commas, dots
    items = lead.size
    del lead, negative, lead_byte, is_digit, is_null
    values = _read_csv_column(compact, "float64", nulls=has_null, items=items)
    if values is None:
        return None
    if has_null and bool(np.isnan(values).all()):
        return None  # only nulls: an object column of None
    zeros = values == 0
    if zeros.any() and np.signbit(values[zeros]).any():
        return None  # "-0" is the integer 0 (not -0.0) in the naive frame: let json decide
    return values


def _all_nulls(data: npt.NDArray[np.uint8], starts: npt.NDArray[np.intp]) -> bool:
    """Whether the item at each of ``starts`` is exactly ``null``."""
    if starts[-1] + 4 > data.size:
        return False
    ok = (data[starts + 1] == ord("u")) & (data[starts + 2] == ord("l")) & (data[starts + 3] == ord("l"))
    ends = starts + 4
    inside = ends < data.size
    return bool(ok.all() and (data[ends[inside]] == ord(",")).all())


def _all_digits(values: npt.NDArray[np.uint8]) -> bool:
    import numpy as np

    return bool(np.all((values - np.uint8(ord("0"))) < 10))


def _any_digit(values: npt.NDArray[np.uint8]) -> bool:
    import numpy as np

    return bool(np.any((values - np.uint8(ord("0"))) < 10))


def _read_csv_column(compact: bytes, dtype: str, *, nulls: bool, items: int | None = None) -> npt.NDArray[Any] | None:
    """Parse comma-separated items with pandas' C reader; ``None`` if any does not fit ``dtype``.

    ``items`` is the number of items, if the caller has counted them.
    """
    import pandas as pd

    options: dict[str, Any] = {
        "header": None,
        "sep": "|",  # never in the input: one column
        "lineterminator": ",",
        "engine": "c",
        "quoting": csv.QUOTE_NONE,
        "skip_blank_lines": False,
        "keep_default_na": False,
        "na_filter": nulls,
        "dtype": dtype,
    }
    if nulls:
        options["na_values"] = ["null"]
    if dtype == "float64" and not _pandas_parses_floats_exactly():
        options["float_precision"] = "round_trip"
    try:
        frame = pd.read_csv(io.BytesIO(compact), **options)
    except (ValueError, TypeError, OverflowError):
        return None  # a token that does not parse (never shown: it is patient data)
    if frame.shape[1] != 1 or len(frame) != (compact.count(b",") + 1 if items is None else items):
        return None
    values = frame.iloc[:, 0].to_numpy()
    del frame
    if values.dtype != dtype:
        return None
    if not values.flags.writeable:  # pandas hands out read-only views; nothing else shares this one
        try:
            values.flags.writeable = True
        except ValueError:
            values = values.copy()
    return values


@functools.cache
def _arrow_string_dtype() -> Any:
    """The default pandas dtype for a list of strings, if Arrow holds its values (pandas 3 with pyarrow), else None."""
    import pandas as pd

    dtype = pd.DataFrame({0: ["a"]})[0].dtype
    return dtype if getattr(dtype, "storage", None) == "pyarrow" else None


def _arrow_string_column(body: bytes | bytearray, begin: int, end: int) -> pd.Series | None:
    """A list of plain strings and nulls as an Arrow-backed string column, built from the body's bytes.

    Applies where pandas keeps strings in Arrow (its default ``str`` dtype with pyarrow) and the
    list is plain: ``"..."`` or ``null`` items separated by ``,`` or ``, ``, no backslash and no
    control character. Each string's bytes are then exactly its value, so the column is the
    body's string bytes laid end to end plus offsets: no Python object per row. Arrow checks the
    bytes are UTF-8. Returns ``None`` (the other paths decide) for any other list.
    """
    dtype = _arrow_string_dtype()
    if dtype is None or end - begin < 2:
        return None
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if body.find(b"\\", begin, end) != -1:
        return None
    data = np.frombuffer(body, dtype=np.uint8, count=end - begin, offset=begin)
    if data.min() < 0x20:
        return None
    layout = _string_layout(body, begin, end)
    if layout is None:
        return None
    first, closing, rows, size = layout
    lengths = closing - first
    total = int(lengths.sum())
    if rows is None:  # no null: the strings are the span without its quotes and separators
        chars = _joined_strings(body, begin, end, begin + int(closing[0]) + 1, total)
    else:
        chars = _inside_strings(data, first, closing, total)
    offsets = np.zeros(size + 1, dtype=np.int64)
    validity = None
    nulls = 0
    if rows is None:
        np.cumsum(lengths, out=offsets[1:])
    else:
        per_row = np.zeros(size, dtype=np.int64)
        per_row[rows] = lengths
        np.cumsum(per_row, out=offsets[1:])
        del per_row
        valid = np.zeros(size, dtype=np.bool_)
        valid[rows] = True
        nulls = size - int(rows.size)
        validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
        del valid
    try:
        array = pa.Array.from_buffers(
            pa.large_string(), size, [validity, pa.py_buffer(offsets), pa.py_buffer(chars)], null_count=nulls
        )
        array.validate(full=True)  # UTF-8 (invalid bytes are left to the general path to report)
    except (pa.ArrowInvalid, ValueError):
        return None
    return pd.Series(pd.array(array, dtype=dtype), copy=False)


def _joined_strings(
    body: bytes | bytearray, begin: int, end: int, after_first: int, total: int
) -> npt.NDArray[np.uint8]:
    """The strings of ``body[begin:end]`` (plain strings, no null, one separator) end to end.

    Every quote delimits a string there, so removing each ``"<separator>"`` leaves the strings'
    bytes. Done window by window (cut where a separator starts), so temporaries stay small.
    ``after_first`` is the position just after the first string's closing quote.
    """
    import numpy as np

    separator = b", " if body[after_first : after_first + 3] == b', "' else b","
    between = b'"' + separator + b'"'
    chars = np.empty(total, dtype=np.uint8)
    filled = 0
    position, stop = begin + 1, end - 1  # inside the first and last quotes
    while position < stop:
        cut = body.find(between, min(position + _WINDOW_BYTES, stop), stop)
        if cut == -1:
            cut = stop
        piece = bytes(body[position:cut]).replace(between, b"")
        chars[filled : filled + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
        filled += len(piece)
        position = cut + len(between)
    return chars


def _inside_strings(
    data: npt.NDArray[np.uint8], first: npt.NDArray[np.intp], closing: npt.NDArray[np.intp], total: int
) -> npt.NDArray[np.uint8]:
    """The bytes of ``data`` inside the strings (``first[i]`` up to ``closing[i]``), end to end.

    Done window by window, so the temporaries stay a few MiB whatever the column's size.
    """
    import numpy as np

    chars = np.empty(total, dtype=np.uint8)
    filled = 0
    for begin in range(0, data.size, _WINDOW_BYTES):
        end = min(begin + _WINDOW_BYTES, data.size)
        opened = np.searchsorted(first, [begin, end])
        closed = np.searchsorted(closing, [begin, end])
        # +1 where a string starts, -1 at its closing quote; a running sum marks the bytes inside.
        edges = np.zeros(end - begin + 1, dtype=np.int8)
        edges[0] = opened[0] - closed[0]  # a string that started in an earlier window
        edges[first[opened[0] : opened[1]] - begin] += 1
        edges[closing[closed[0] : closed[1]] - begin] -= 1
        inside = np.cumsum(edges[:-1], dtype=np.int8).view(np.bool_)
        piece = data[begin:end][inside]
        chars[filled : filled + piece.size] = piece
        filled += piece.size
    return chars


def _string_column(body: bytes | bytearray, begin: int, end: int) -> npt.NDArray[np.object_] | None:
    """Decode ``body[begin:end]``, the inside of a list of strings and nulls, without the json module.

    Applies to plain lists: ``"..."`` or ``null`` items separated by ``,`` or ``, ``, with no
    control character (so no line break) anywhere, and escapes only if the strings repeat.
    Returns an object array of ``str`` and ``None``, or ``None`` when the general path must
    decode the list. When the strings repeat a lot, equal strings are one shared object.
    """
    import numpy as np

    if np.frombuffer(body, dtype=np.uint8, count=end - begin, offset=begin).min() < 0x20:
        return None  # a control character (never valid in a string), or a line break between items
    escaped = body.find(b"\\", begin, end) != -1
    distinct = _mostly_distinct(body, begin, end)
    if distinct and escaped:
        return None  # every string needs unescaping: that is the json module's job
    if distinct and end - begin >= 2 and body[begin] == body[end - 1] == ord('"'):
        strings = _split_compact_strings(body, begin, end)
        if strings is not None:
            column = np.empty(len(strings), dtype=object)
            column[:] = strings
            return column
    layout = _string_layout(body, begin, end, escaped=escaped)
    if layout is None:
        return None
    first, closing, rows, size = layout
    if distinct:
        strings = _split_strings(body, begin, end)
        if strings is None or len(strings) != first.size:
            return None
        shared: Any = strings
    else:
        shared = _shared_strings(body, begin, end, first, closing, escaped=escaped)
        if shared is None:
            return None
    if rows is None:
        column = np.empty(size, dtype=object)
        column[:] = shared
    else:
        column = np.full(size, None, dtype=object)
        column[rows] = shared
    return column


def _split_compact_strings(body: bytes | bytearray, begin: int, end: int) -> list[str] | None:
    """The strings of ``"a","b",...`` (no null, no space), or ``None`` if the list is not that."""
    try:
        text = str(body[begin + 1 : end - 1], "utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None  # the general path reports it
    strings = text.split('","')
    # Every quote is accounted for by the separators: no string holds one, no item lacks one.
    return strings if text.count('"') == 2 * (len(strings) - 1) else None


def _string_layout(
    body: bytes | bytearray, begin: int, end: int, *, escaped: bool = False
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp] | None, int] | None:
    """Check that ``body[begin:end]`` is plain strings and nulls; find where each string lies.

    ``escaped`` says the span holds a backslash (so some quotes may be escaped ones).
    Returns the offset (from ``begin``) of each string's first byte and of its closing quote, the
    row of each string (``None`` if there is no null), and the number of rows.
    """
    import numpy as np

    size = end - begin
    data = np.frombuffer(body, dtype=np.uint8, count=size, offset=begin)
    quotes = np.flatnonzero(data == ord('"'))
    if escaped and quotes.size:
        quotes = quotes[~_escaped_quotes(data, quotes)]
    if quotes.size % 2:
        return None  # a ']' inside a string ended the span early
    opening = quotes[0::2]
    closing = quotes[1::2]
    # Items are separated by ", " if the first separator is; otherwise by ",".
    probe = int(closing[0]) + 1 if closing[0] < size - 1 else int(opening[0]) - 2
    separator = b", " if 0 <= probe < size - 1 and data[probe : probe + 2].tobytes() == b", " else b","
    width = len(separator)
    null = b"null" + separator
    # Between two strings: the separator, then "null" and the separator once per null.
    gaps = opening[1:] - closing[:-1] - 1
    if (gaps == width).all():
        between = None
    else:
        between, remainder = np.divmod(gaps - width, len(null))
        if remainder.any() or (between < 0).any():
            return None
        for k, byte in enumerate(separator):
            if not (data[opening[1:] - width + k] == byte).all():
                return None
    del gaps
    for k, byte in enumerate(separator):
        if not (data[closing[:-1] + 1 + k] == byte).all():
            return None
    leading, remainder_lead = divmod(int(opening[0]), len(null))
    trailing, remainder_trail = divmod(size - 1 - int(closing[-1]), len(null))
    if remainder_lead or remainder_trail:
        return None
    if body[begin : begin + len(null) * leading] != null * leading:
        return None
    if body[end - len(null) * trailing : end] != (separator + b"null") * trailing:
        return None
    nulls = 0 if between is None else int(between.sum())
    if between is not None and nulls and not _repeats(data, closing[:-1] + 1 + width, between, null):
        return None
    count = opening.size
    rows = None
    if leading or trailing or nulls:
        rows = leading + np.arange(count)
        if between is not None:
            rows[1:] += np.cumsum(between)
    return opening + 1, closing, rows, leading + count + nulls + trailing


def _escaped_quotes(data: npt.NDArray[np.uint8], quotes: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
    """Which of the quotes at ``quotes`` are escaped: preceded by an odd run of backslashes."""
    import numpy as np

    escaped = np.zeros(quotes.size, dtype=np.bool_)
    before = quotes - 1
    backslash = (before >= 0) & (data[np.maximum(before, 0)] == ord("\\"))
    while backslash.any():
        escaped ^= backslash
        before -= 1
        backslash &= (before >= 0) & (data[np.maximum(before, 0)] == ord("\\"))
    return escaped


def _repeats(
    data: npt.NDArray[np.uint8], starts: npt.NDArray[np.intp], times: npt.NDArray[np.intp], pattern: bytes
) -> bool:
    """Whether ``data[starts[i]:]`` begins with ``pattern`` repeated ``times[i]`` times, for every i."""
    import numpy as np

    keep = times > 0
    starts = starts[keep]
    lengths = len(pattern) * times[keep]
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    expected = np.frombuffer(pattern, dtype=np.uint8)[offsets % len(pattern)]
    return bool((data[np.repeat(starts, lengths) + offsets] == expected).all())


def _mostly_distinct(body: bytes | bytearray, begin: int, end: int) -> bool:
    """Guess from spread samples whether over a quarter of a plain string list's items are distinct.

    Below a quarter, sharing equal strings pays off: decoding each distinct value once costs
    less than decoding every row.
    """
    seen: set[bytes] = set()
    sampled = 0
    covered = 0
    window = 4096
    windows = 32
    for k in range(windows):
        at = begin + (end - begin - window) * k // (windows - 1) if end - begin > window else begin
        chunk = bytes(body[at : min(end, at + window)])
        # A quote then a separator then a quote: a string ends there and the next one starts.
        found = [i for i in (chunk.find(b'","'), chunk.find(b'", "')) if i != -1]
        if not found:
            continue
        parts = chunk[min(found) + 1 :].split(b'"')[1::2][1:-1]  # whole strings (the last may be cut)
        seen.update(parts)
        sampled += len(parts)
        covered += sum(map(len, parts)) + 3 * len(parts)
        if end - begin <= window:
            break
    if not sampled:
        return True
    items = (end - begin) * sampled / covered
    return 4 * _estimated_distinct(len(seen), sampled) > items


def _estimated_distinct(seen: int, sampled: int) -> float:
    """How many distinct values a population has if ``sampled`` draws showed ``seen`` of them.

    Solves ``seen = k * (1 - exp(-sampled / k))`` (the expected count for ``k`` equally
    frequent values) for ``k``.
    """
    if seen >= sampled:
        return math.inf
    low, high = float(seen), float(sampled) * sampled
    for _ in range(60):
        middle = (low + high) / 2
        if middle * -math.expm1(-sampled / middle) < seen:
            low = middle
        else:
            high = middle
    return high


def _split_strings(body: bytes | bytearray, begin: int, end: int) -> list[str] | None:
    """The strings of a plain string list, in order (every quote delimits one: there is no escape)."""
    try:
        text = str(body[begin:end], "utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None  # the general path reports it
    return text.split('"')[1::2]


def _shared_strings(
    body: bytes | bytearray,
    begin: int,
    end: int,
    first: npt.NDArray[np.intp],
    closing: npt.NDArray[np.intp],
    *,
    escaped: bool = False,
) -> npt.NDArray[np.object_] | None:
    """The strings at ``body[begin + first[i] : begin + closing[i]]``, equal ones as one object.

    ``escaped``: the strings may hold escapes (each distinct one is then decoded by json).
    """
    import numpy as np
    import pandas as pd

    count = first.size
    lengths = closing - first
    width = int(lengths.max())
    if width > _MAX_KEY_BYTES and escaped:
        return None
    if width > _MAX_KEY_BYTES:
        split = _split_strings(body, begin, end)
        if split is None or len(split) != count:
            return None
        objects = np.empty(count, dtype=object)
        objects[:] = split
        del split
        codes, uniques = pd.factorize(objects, size_hint=min(count, 65536))
        return uniques[codes]
    data = np.frombuffer(body, dtype=np.uint8, count=end - begin, offset=begin)
    keys = _string_keys(data, first, lengths, width)
    hashed = keys[0]
    for key in keys[1:]:
        hashed = hashed * np.uint64(0x9E3779B97F4A7C15)
        hashed ^= key
    codes, uniques = pd.factorize(hashed, size_hint=min(count, 65536))
    del hashed
    representative = np.empty(len(uniques), dtype=np.intp)
    representative[codes] = np.arange(count)
    if len(keys) > 1 and not all(np.array_equal(key, key[representative][codes]) for key in keys):
        return None  # a hash collision: vanishingly rare, and never guessed around
    del keys
    if escaped and 4 * len(uniques) > count:
        return None  # mostly distinct after all: decoding each one by json costs more than json
    bounds = zip(first[representative].tolist(), closing[representative].tolist(), strict=True)
    try:
        if escaped:  # with the quotes around it, each raw string is a JSON document
            distinct = [
                json.loads(str(body[begin + a - 1 : begin + b + 1], "utf-8", "surrogatepass")) for a, b in bounds
            ]
        else:
            distinct = [str(body[begin + a : begin + b], "utf-8", "surrogatepass") for a, b in bounds]
    except ValueError:  # invalid UTF-8 or an invalid escape: the general path reports it
        return None
    strings = np.empty(len(distinct), dtype=object)
    strings[:] = distinct
    return strings[codes]


def _string_keys(
    data: npt.NDArray[np.uint8], first: npt.NDArray[np.intp], lengths: npt.NDArray[np.intp], width: int
) -> list[npt.NDArray[np.uint64]]:
    """Each string's bytes as ``ceil(width / 8)`` little-endian words, zero past its end.

    JSON strings hold no raw NUL, so equal keys mean equal raw strings, hence equal strings.
    """
    import numpy as np

    words = max(1, -(-width // 8))
    padded = np.zeros(data.size + 8 * words, dtype=np.uint8)
    padded[: data.size] = data
    # Element i of ``unaligned`` is the 8 bytes starting at byte i.
    unaligned = np.ndarray(shape=(padded.size - 7,), dtype="<u8", buffer=padded, strides=(1,))
    keep = np.full((8 * words + 1, words), np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    for length in range(8 * words + 1):
        for word in range(words):
            used = min(8, max(0, length - 8 * word))
            if used < 8:
                keep[length, word] = (1 << (8 * used)) - 1
    keys = []
    for word in range(words):
        key = unaligned[first + 8 * word]
        key &= keep[lengths, word]
        keys.append(key)
    return keys
