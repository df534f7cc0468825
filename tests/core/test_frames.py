"""Tests of flip_nvflare.core.frames: the cohort decoder must give the naive frame, faster.

Every equality test runs twice: with the module's thresholds ("default": short lists go through
the json module) and with them at zero ("vectorised": every list takes the numpy / pandas
reader paths), so the small cases here exercise both.
"""

from __future__ import annotations

import json
import math
import platform
import random
import struct
import sys
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flip_nvflare.core import frames
from flip_nvflare.core.frames import dataframe_from_columns_json
from flip_nvflare.errors import FlipError, FlipInvalidResponse

SECRET_TEXT = "Zq7SecretValue"
SECRET_NUMBER = 918273645


@pytest.fixture(params=["default", "vectorised", "object-strings"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param in ("vectorised", "object-strings"):
        monkeypatch.setattr(frames, "_FAST_PATH_MIN_BYTES", 0)
        monkeypatch.setattr(frames, "_DEDUPE_MIN_ROWS", 0)
    if request.param == "object-strings":  # as without pyarrow: strings go through Python objects
        monkeypatch.setattr(frames, "_arrow_string_dtype", lambda: None)
    return str(request.param)


def arrow_strings() -> bool:
    """Whether pandas keeps this run's strings in Arrow (then no Python str object is shared)."""
    return getattr(pd.DataFrame({0: ["a"]})[0].dtype, "storage", None) == "pyarrow"


def naive(body: bytes) -> pd.DataFrame:
    return pd.DataFrame(data=json.loads(body))


def assert_same_frame(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal columns, dtypes and values, down to float bits, -0.0 and the types inside object columns."""
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert list(got.columns) == list(expected.columns)
    for name in expected.columns:
        want, have = expected[name], got[name]
        if want.dtype.kind == "f":
            a = have.to_numpy()
            b = want.to_numpy()
            assert np.array_equal(np.isnan(a), np.isnan(b)), name
            finite = ~np.isnan(b)
            assert np.array_equal(a[finite].view(np.int64), b[finite].view(np.int64)), name
        elif want.dtype == object:
            assert [type(v) for v in have] == [type(v) for v in want], name
            assert [repr(v) for v in have] == [repr(v) for v in want], name


def check(body: bytes | str) -> pd.DataFrame | None:
    """The decoded frame, checked against the naive one; if the naive decode raises, the same error type."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    try:
        expected = naive(raw)
    except (UnicodeError, ValueError) as exc:  # e.g. a lone surrogate that Arrow-backed strings refuse
        with pytest.raises(type(exc)):
            dataframe_from_columns_json(raw)
        return None
    got = dataframe_from_columns_json(raw)
    assert_same_frame(got, expected)
    return got


def compact(columns: dict[str, Any]) -> str:
    return json.dumps(columns, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------- equality with the naive frame

SHAPES: dict[str, dict[str, Any]] = {
    "ints": {"a": [1, -2, 0, 3, 1000000, -99999999]},
    "minus zero int": {"a": [0, -0, 5]},
    "floats": {"a": [1.5, -2.25, 0.1, 1e-7, 3.0, 2.5e300, 1e-320]},
    "ints and floats": {"a": [1, 2.5, -3, 4.0]},
    "int with nulls": {"a": [1, None, 3], "b": [None, 2, 3], "c": [1, 2, None]},
    "float with nulls": {"a": [1.5, None, None, 2.0]},
    "only nulls": {"a": [None, None, None]},
    "one null": {"a": [None]},
    "bools": {"a": [True, False, True]},
    "bools and nulls": {"a": [True, None, False]},
    "bools and ints": {"a": [True, 1, 0, False]},
    "bools and floats": {"a": [True, 1.5]},
    "strings": {"a": ["x", "yy", "", "z z", "a,b", "[1]", "{}", "null", "true", "12", "-0"]},
    "strings and nulls": {"a": [None, "x", None, None, "y", None]},
    "strings and numbers": {"a": ["x", 1, 2.5, None]},
    "strings and bools": {"a": ["x", True]},
    "unicode": {"a": ["é", "中文", "😀", "naïve café", "\u00a0", "\u2028"]},
    "escapes": {"a": ['q"uote', "back\\slash", "new\nline", "tab\t", "\b\f\r", "/", "\x00\x1f", "\ud800"]},
    "nested": {"a": [[1, 2], {"k": "v"}, [], {}, None], "b": [1, 2, 3, 4, 5]},
    "empty lists": {"a": [], "b": []},
    "single row": {"a": [1], "b": ["x"], "c": [None], "d": [True], "e": [1.5]},
    "big ints": {"a": [2**53 + 1, 2**63 - 1, -(2**63)]},
    "uint64": {"a": [2**63, 2**64 - 1, 0]},
    "bigger than uint64": {"a": [2**64, 1]},
    "negative beyond int64": {"a": [-(2**63) - 1, 1]},
    "big int and float": {"a": [2**53 + 1, 0.5]},
    "uint64 and float": {"a": [2**63, 0.5]},
    "huge int and float": {"a": [10**30, 0.5]},
    "big int and null": {"a": [2**63 - 1, None]},
    "uint64 and null": {"a": [2**64 - 1, None]},
    "huge int and null": {"a": [10**20, None]},
    "mixed columns": {
        "id": ["A1", "B2", "C3"],
        "n": [1, 2, 3],
        "f": [0.5, None, 1.25],
        "b": [True, False, True],
        "s": ["x", None, "x"],
    },
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_match_the_naive_frame(mode: str, name: str) -> None:
    check(compact(SHAPES[name]))
    check(json.dumps(SHAPES[name]))  # ", " and ": " separators, \u escapes
    check(json.dumps(SHAPES[name], indent=2))


@pytest.mark.parametrize(
    "text",
    [
        '{"a":[1e5,1E5,1e+5,1E-5,-1.5e-3,0e0,0.0,-0.0,1e400,-1e400,4.9e-324,5e-325,1e-400]}',
        '{"a":[0.1,0.2,0.30000000000000004,123456789012345678,1.7976931348623157e308]}',
        '{"a":[9007199254740993,0.5],"b":[9007199254740993,null]}',
        '{"a":[-0.0, null]}',
        '{"a":[-0, 1.5]}',
        '{"a":[NaN,1.5],"b":[Infinity,-Infinity]}',
        '{"a":[1.0000000000000000000000001,2.9999999999999999999999999999]}',
        '{"a":[0.00012345678901234567890123,1]}',
        '{"a":[1234567890123456789.5,1]}',
        '{"a":[1e0000000000000000000001]}',
    ],
)
def test_number_spellings(mode: str, text: str) -> None:
    check(text)


def test_whitespace_variations(mode: str) -> None:
    check(' \r\n\t{ "a" :\t[ 1 ,\n2 , 3 ] ,"b":[ "x" , null ,"y"\n] , "c" : [true,false , true] }\n ')
    check('{"a":[\n  1.5,\n  null,\n  -2\n]}')
    check('{"a":[],"b":[ ],"c":[\n]}')
    check("{ }")
    check("{}")


def test_duplicate_keys_keep_the_first_place_and_the_last_value(mode: str) -> None:
    check('{"a":[1,2],"b":["x","y"],"a":[3.5,4]}')
    check('{"a":[1,2],"a":[1,2,3],"b":[1,2,3]}')


def test_column_names(mode: str) -> None:
    got = check('{"q\\"uote":[1],"\\u00e9t\\u00e9":[2],"":[3],"back\\\\":[4],"sp ace":[5],"中":[6]}')
    assert got is not None
    assert list(got.columns) == ['q"uote', "été", "", "back\\", "sp ace", "中"]


def test_empty_object_is_an_empty_frame() -> None:
    got = dataframe_from_columns_json(b"{}")
    assert got.shape == (0, 0)
    pd.testing.assert_frame_equal(got, pd.DataFrame(data={}))


def test_encodings(mode: str) -> None:
    text = compact({"a": [1, 2], "b": ["é", None]})
    check(b"\xef\xbb\xbf" + text.encode())
    for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32"):
        check(text.encode(encoding))


def test_bytearray_is_accepted(mode: str) -> None:
    body = bytearray(compact({"a": list(range(50)), "s": ["x", "y"] * 25}).encode())
    assert_same_frame(dataframe_from_columns_json(body), naive(bytes(body)))


def test_str_is_refused() -> None:
    with pytest.raises(TypeError):
        dataframe_from_columns_json('{"a":[1]}')  # type: ignore[arg-type]


def _random_column(rng: random.Random, rows: int) -> list[Any]:
    kind = rng.choice(["int", "float", "str", "bool", "cat", "mixed", "bigint"])
    null_rate = rng.choice([0.0, 0.0, 0.1, 0.9])

    def value() -> Any:
        if rng.random() < null_rate:
            return None
        if kind == "int":
            return rng.randint(-(10**9), 10**9)
        if kind == "float":
            return rng.choice([rng.random(), rng.uniform(-1e6, 1e6), round(rng.gauss(27, 5), 1), rng.random() * 1e-8])
        if kind == "str":
            return "".join(rng.choice('ab,"\\]é中 \n') for _ in range(rng.randint(0, 8)))
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "cat":
            return rng.choice(["CT", "MR", "US", "2020-01-02", "", "null"])
        if kind == "bigint":
            return rng.choice([2**63 - 1, 2**63, -(2**63), 2**64 + 5, 7])
        return rng.choice([1, 1.5, "x", True, None, [1], {"a": 1}])

    return [value() for _ in range(rows)]


def test_random_bodies_match_the_naive_frame(mode: str) -> None:
    rng = random.Random(1234)
    for _ in range(60):
        rows = rng.choice([1, 2, 7, 300])
        columns = {f"c{i}": _random_column(rng, rows) for i in range(rng.randint(1, 6))}
        style = rng.choice(["compact", "default", "indent"])
        if style == "compact":
            text = compact(columns)
        elif style == "default":
            text = json.dumps(columns)
        else:
            text = json.dumps(columns, indent=1)
        check(text)


def test_random_float_bits_are_exact(mode: str) -> None:
    rng = random.Random(99)
    values: list[float] = []
    while len(values) < 5000:
        (value,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if math.isfinite(value):
            values.append(value)
    values += [5e-324, 2.2250738585072014e-308, 2.225073858507201e-308, 0.1, 1 / 3, 2**-1074, 9007199254740993.0]
    check(compact({"a": values, "b": [-v for v in values]}))
    # Decimal spellings that are not shortest repr: halfway cases and long mantissas.
    text = '{"a":[' + ",".join(f"{v:.25e}" for v in values[:2000]) + "]}"
    check(text)


def test_older_pandas_float_option_is_exact_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # pandas before 3.1 is asked for its round_trip parser; this pandas still accepts the option.
    monkeypatch.setattr(frames, "_FAST_PATH_MIN_BYTES", 0)
    monkeypatch.setattr(frames, "_pandas_parses_floats_exactly", lambda: False)
    rng = random.Random(7)
    values = [rng.random() * 10 ** rng.randint(-30, 30) for _ in range(3000)] + [None, 5e-324, 1.7976931348623157e308]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas 3.1 deprecates the option it no longer needs
        check(compact({"a": values}))


def test_moderate_cohort_matches_and_shares_repeated_strings() -> None:
    rows = 50_000
    rng = np.random.default_rng(5)
    modalities = np.array(["CT", "MR", "CR", "US"], dtype=object)
    sites = np.array(["Guy's & St Thomas'", "Leeds Teaching", "Barts", "UCLH", None], dtype=object)
    hba1c = rng.integers(20, 120, rows).astype(object)
    hba1c[rng.random(rows) < 0.2] = None
    columns = {
        "accession_id": [f"ACC{i:08d}" for i in rng.permutation(rows).tolist()],
        "person_id": rng.integers(1, 10**8, rows).tolist(),
        "age": rng.integers(18, 96, rows).tolist(),
        "bmi": np.round(rng.normal(27, 5, rows), 1).tolist(),
        "score": rng.random(rows).tolist(),
        "study_date": np.datetime_as_string(
            np.datetime64("2015-01-01") + rng.integers(0, 3000, rows).astype("timedelta64[D]")
        ).tolist(),
        "modality": modalities[rng.integers(0, 4, rows)].tolist(),
        "site": sites[rng.integers(0, 5, rows)].tolist(),
        "contrast": (rng.random(rows) < 0.5).tolist(),
        "hba1c": hba1c.tolist(),
        "delta": rng.normal(0, 1e-3, rows).tolist(),
    }
    body = compact(columns).encode()
    got = dataframe_from_columns_json(body)
    assert_same_frame(got, naive(body))
    # Repeated strings are stored once each: a few thousand objects, not one per row.
    for name in ("study_date", "modality", "site"):
        if arrow_strings():  # Arrow holds the bytes: no Python str per row at all
            assert isinstance(got[name].array, pd.arrays.ArrowStringArray), name
            continue
        distinct_objects = {id(v) for v in got[name].array if isinstance(v, str)}
        assert len(distinct_objects) <= 3000, name
    # The frame behaves like any other: values can be set in place.
    got.loc[0, "age"] = 1
    got.loc[1, "score"] = 0.5
    got.loc[2, "modality"] = "PET"
    got.loc[3, "contrast"] = True
    assert (got.loc[0, "age"], got.loc[1, "score"], got.loc[2, "modality"]) == (1, 0.5, "PET")
    assert got.loc[3, "contrast"]


def test_long_lists_with_awkward_contents(mode: str) -> None:
    rows = 3000
    check(compact({"a": [f"[{i}]" for i in range(rows)], "b": list(range(rows))}))  # ']' inside strings
    check(compact({"a": [[i, [i]] for i in range(rows)], "b": list(range(rows))}))  # nested lists
    check(compact({"a": ['x"y', "z\\"] * (rows // 2), "b": ["é", "ü"] * (rows // 2)}))
    check(compact({"a": ["x" * 100, "y" * 100] * (rows // 2)}))  # long strings
    check(json.dumps({"a": ["CT", None, "MR"] * 1000}))  # whitespace between strings
    check(compact({"a": [None] * 5 + ["CT", None, None, "MR"] * 500 + [None] * 3}))
    check(compact({"a": ["x"] * rows, "b": [None] * rows}))


def test_brackets_inside_strings(mode: str) -> None:
    check('{"a":["]"]}')
    check('{"a":["] ", "x"],"b":[1,2]}')
    check('{"a":["]","]"],"b":["[","["]}')
    check(compact({"a": ["]"] * 3000, "b": ["x]"] * 3000, "c": [f"[{i}]" for i in range(3000)]}))


def test_wide_frames_take_new_columns_without_warnings(mode: str) -> None:
    body = compact({f"c{i}": [i, i + 1] for i in range(150)}).encode()
    got = dataframe_from_columns_json(body)
    assert_same_frame(got, naive(body))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got["extra"] = 1


def test_plain_lists_take_the_vectorised_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = 30_000
    rng = random.Random(3)
    columns = {
        "id": [f"ID{i:07d}" for i in range(rows)],
        "code": [rng.choice(["CT", "MR", None]) for _ in range(rows)],
        "spaced": [rng.choice(["a b", "c, d"]) for _ in range(rows)],
        "n": [rng.randint(-5, 10**6) for _ in range(rows)],
        "x": [rng.random() for _ in range(rows)],
        "xn": [rng.choice([None, 1, 2.5]) for _ in range(rows)],
        "flag": [rng.random() < 0.5 for _ in range(rows)],
    }
    general: list[int] = []
    decode_list = frames._decode_list

    def spy(body: bytes, start: int, close: int, name: str) -> Any:
        general.append(start)
        return decode_list(body, start, close, name)

    monkeypatch.setattr(frames, "_decode_list", spy)
    for text in (compact(columns), json.dumps(columns)):
        general.clear()
        got = check(text)
        assert got is not None
        assert general == [], "every list here is plain: none should need the json module"
        if not arrow_strings():
            code_objects = {id(v) for v in got["code"].array if isinstance(v, str)}
            assert len(code_objects) == 2  # "CT" and "MR", each one object


@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_repeated_strings_with_escapes(mode: str, ensure_ascii: bool) -> None:
    values = ['a "q"', "back\\slash", "tab\t", "é", "\u2028", 'x\\"y', "a\\", '"', "\\", "😀", None, ""]
    rng = random.Random(11)
    column = [rng.choice(values) for _ in range(6000)]
    for text in (
        json.dumps({"a": column}, ensure_ascii=ensure_ascii, separators=(",", ":")),
        json.dumps({"a": column}),
    ):
        got = check(text)
        assert got is not None
        if not arrow_strings():
            assert len({id(v) for v in got["a"].array if isinstance(v, str)}) <= 2 * len(values)
    unique = [f'n\\{i}"' for i in range(6000)]
    check(json.dumps({"a": unique}, ensure_ascii=ensure_ascii))


def test_repeated_strings_are_shared_on_the_general_path_too(mode: str) -> None:
    body = compact({"a": ['q"x', "back\\slash", None, "é"] * 5000}).encode()
    got = dataframe_from_columns_json(body)
    assert_same_frame(got, naive(body))
    if not arrow_strings():
        assert len({id(v) for v in got["a"].array if isinstance(v, str)}) == 3


def test_freed_memory_is_handed_back_without_error() -> None:
    frames._release_free_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert frames._malloc_trim() is not None


# --------------------------------------------------------------------------- refusals

TOKENS = [
    "0", "-0", "7", "-7", "1.5", "-1.5", "1e5", "1E+5", "1e-05", "0.0e0", "null",  # valid
    "01", "-01", "00", "1.", "-1.", ".5", "-.5", "+1", "1e", "1e+", "1E-", "-", "--1", "1-", "1+2",
    "1.2.3", "1e2e3", "1e2.3", "1.e5", "e5", "nul", "nulll", "NULL", "None", "nan", "inf", "NaN",
    "Infinity", "-Infinity", "1_0", "0x10", "1d5", "1 2", "", "true", "tru", "falsey", "\u0661", "\uff11",
    "+inf", "-inf", "nAn", "n", "nu", "1e5x", "1|2", "#", "1#", "1/2", "1:2", "\x01", "1\x00",
    "True", "FALSE", "t", "f", "-null", "null1", "1null", "12345678901234567890", "-9223372036854775809",
    "9223372036854775807", "9223372036854775808", "1.5e", "1E", "0.", "-0.0", "1e-0", "1e+00",
]  # fmt: skip


@pytest.mark.parametrize("token", TOKENS)
@pytest.mark.parametrize("filler", ["7", "1.5", "null", "true", '"CT"'])
def test_any_token_is_accepted_exactly_when_json_accepts_it(mode: str, token: str, filler: str) -> None:
    items = [filler] * 40 + [token] + [filler] * 40
    for separator in (",", ", "):
        body = ('{"a":[' + separator.join(items) + "]}").encode()
        try:
            expected = naive(body)
        except ValueError:
            with pytest.raises(FlipInvalidResponse):
                dataframe_from_columns_json(body)
        else:
            assert_same_frame(dataframe_from_columns_json(body), expected)


@pytest.mark.parametrize(
    "items",
    [
        '"a","b"',
        '"a""b"',
        '"a" "b"',
        '"a",,"b"',
        '"a",',
        ',"a"',
        '"a",null,"b"',
        '"a",nul,"b"',
        '"a",null"b"',
        'null,"a"',
        '"a",null',
        '"a",null,null,',
        '"a",nullnull,"b"',
        '"a",true,"b"',
        '"a\nb","c"',
        '"a\\x","c"',
        '"a\\u00e9","c"',
        '"a",1,"c"',
        '"a"]',
    ],
)
def test_string_lists_are_accepted_exactly_when_json_accepts_them(mode: str, items: str) -> None:
    body = ('{"a":[' + ",".join([items] * 30) + "]}").encode()
    try:
        expected = naive(body)
    except ValueError:
        with pytest.raises(FlipInvalidResponse):
            dataframe_from_columns_json(body)
    else:
        assert_same_frame(dataframe_from_columns_json(body), expected)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1,2]", "top level is a list, expected an object of columns"),
        (b'"x"', "top level is a string, expected an object of columns"),
        (b"42", "top level is a number, expected an object of columns"),
        (b"null", "top level is null, expected an object of columns"),
        (b"true", "top level is a boolean, expected an object of columns"),
        (b"", "body is empty"),
        (b"  \n", "body is empty"),
        (b'{"a":5}', "column 'a' is a number, expected a list"),
        (b'{"a":{"b":[1]}}', "column 'a' is an object, expected a list"),
        (b'{"a":"xyz"}', "column 'a' is a string, expected a list"),
        (b'{"a":null}', "column 'a' is null, expected a list"),
        (b'{"a":[1,2,3],"b":[1,2]}', "column 'b' has 2 values, expected 3"),
        (b'{"a":[1],"b":[1,2]}', "column 'b' has 2 values, expected 1"),
        (b'{"a":[1,2]', "not valid JSON"),
        (b'{"a":[1,2]}}', "not valid JSON"),
        (b'{"a":[1,2]} x', "not valid JSON"),
        (b'{"a":[1,2],}', "not valid JSON"),
        (b'{"a":[1 2]}', "not valid JSON"),
        (b'{"a":[1,2,]}', "not valid JSON"),
        (b'{"a" [1]}', "not valid JSON"),
        (b"{a:[1]}", "not valid JSON"),
        (b'{"a":[1,2', "not valid JSON"),
        (b'{"a":["x]}', "not valid JSON"),
        (b'{"a":["\xff"]}', "not valid UTF-8"),
        (b'{"a":[' + b",".join([b'"ok"', b'"\\q"'] * 5000) + b"]}", "not valid JSON: in column 'a': Invalid"),
        (b'{"a":[' + b",".join([b'"ok"', b'"\xff\\n"'] * 5000) + b"]}", "not valid UTF-8"),
        (b'{"\xff":[1]}', "not valid JSON"),
    ],
)
def test_refusals_say_what_is_wrong(mode: str, body: bytes, message: str) -> None:
    with pytest.raises(FlipInvalidResponse, match=message.replace("[", r"\[")):
        dataframe_from_columns_json(body)


def test_refusal_is_a_flip_error() -> None:
    with pytest.raises(FlipError):
        dataframe_from_columns_json(b"[]")


def test_non_utf8_encodings_are_refused_clearly() -> None:
    with pytest.raises(FlipInvalidResponse, match="top level is a list"):
        dataframe_from_columns_json("[1]".encode("utf-16"))
    with pytest.raises(FlipInvalidResponse, match="column 'a' is a number"):
        dataframe_from_columns_json('{"a":1}'.encode("utf-32"))
    with pytest.raises(FlipInvalidResponse, match="not valid JSON"):
        dataframe_from_columns_json('{"a":[1,}'.encode("utf-16"))


BAD_BODIES = [
    '{"a":["%s",1,2],"b":[1]}',
    '{"a":["%s","%s"],"b":[%d]}',
    '{"a":[%d,%d,%d],"b":[1,2]}',
    '{"a":[%d,"%s"',
    '{"a":["%s\\q"]}',
    '{"a":["%s\x01"]}',
    '{"a":[%d %d]}',
    '{"a":[0%d]}',
    '{"a":"%s"}',
    '["%s", %d]',
    '{"a":[%d],"b":[1,2]}',
    '{"a":[%d.]}',
    '{"a":["%s"] "b":[1]}',
]


@pytest.mark.parametrize("template", BAD_BODIES)
def test_messages_never_carry_values(mode: str, template: str) -> None:
    text = template.replace('"%s"', json.dumps(SECRET_TEXT)).replace("%s", SECRET_TEXT)
    text = text.replace("%d", str(SECRET_NUMBER))
    for body in (text, text.replace("[", "[" + "1," * 5000, 1)):  # also with long lists
        with pytest.raises(FlipInvalidResponse) as caught:
            dataframe_from_columns_json(body.encode())
        error = caught.value
        shown = str(error) + repr(error) + repr(error.args)
        assert SECRET_TEXT not in shown
        assert str(SECRET_NUMBER) not in shown
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__


# --------------------------------------------------------------------------- which path decodes


@pytest.mark.skipif(not arrow_strings(), reason="pandas keeps strings as Python objects here")
def test_plain_string_lists_become_arrow_columns_without_python_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = 20_000
    rng = random.Random(8)
    columns = {
        "uid": [f"1.2.826.{rng.getrandbits(60)}" for _ in range(rows)],
        "code": [rng.choice(["CT", "MR", None, "é中"]) for _ in range(rows)],
        "edge_nulls": [None, None] + ["x"] * (rows - 3) + [None],
    }

    def no_objects(*args: Any) -> Any:
        raise AssertionError("a plain string list went through Python objects")

    monkeypatch.setattr(frames, "_string_column", no_objects)
    monkeypatch.setattr(frames, "_decode_list", no_objects)
    for text in (compact(columns), json.dumps(columns, ensure_ascii=False)):
        got = check(text)
        assert got is not None
        assert all(isinstance(got[name].array, pd.arrays.ArrowStringArray) for name in columns)


def test_invalid_utf8_in_a_plain_string_list_is_still_refused(mode: str) -> None:
    items = b",".join([b'"ok"'] * 9000 + [b'"\xc3\x28"'] + [b'"ok"'] * 9000)
    with pytest.raises(FlipInvalidResponse, match="not valid UTF-8"):
        dataframe_from_columns_json(b'{"a":[' + items + b"]}")


def test_msgspec_decodes_general_lists_and_json_judges_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[int] = []
    json_decode = frames._json_decode_list

    def spy(body: bytes, start: int, close: int, name: str) -> Any:
        used.append(start)
        return json_decode(body, start, close, name)

    monkeypatch.setattr(frames, "_json_decode_list", spy)
    check('{"a":[1,"x",{"k":null},{}],"b":[1.5,2,true,null]}')
    assert used == []  # msgspec took both lists
    for text in ('{"a":[NaN,1]}', '{"a":[1e400,1]}', '{"a":["\\ud800x",1]}', '{"a":["]",1]}', '{"a":[[1],[2]]}'):
        used.clear()
        check(text)
        assert used, text  # what msgspec refuses or cannot see whole, the json module decodes
