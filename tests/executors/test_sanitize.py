from __future__ import annotations

import re
import sysconfig
from pathlib import Path

import pytest

from flip_nvflare.executors.sanitize import ID_MARK, PATH_MARK, QUERY_MARK, SECRET_MARK, SQL_MARK, Sanitizer

QUERY = "SELECT p.person_id, io.accession_id\n  FROM omop.person p JOIN omop.image_occurrence io USING (person_id)"
CUSTOM = "/ws/site-1/job_42/app_site-1/custom"


def wide(text: str) -> str:
    """``text`` in full-width forms (U+FF01 to U+FF5E, and the ideographic space), as some systems write names."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def _raise_from_user_code(path: str, accession: str) -> None:
    def load_image(p: str) -> None:
        raise FileNotFoundError(f"cannot open {p} (accession {accession})")

    try:
        load_image(path)
    except FileNotFoundError as exc:
        raise RuntimeError(f"batch failed for {accession}") from exc


def test_traceback_keeps_type_lines_and_functions_but_not_ids_or_paths() -> None:
    sanitizer = Sanitizer(identifiers=["ACC793792", "ACC000001"], query=QUERY, secrets=["envelope-secret-1"])
    with pytest.raises(RuntimeError) as info:
        _raise_from_user_code("/data/images/net-1/ACC793792/scans/1/img.nii", "ACC793792")
    text = sanitizer.exception(info.value)

    assert "ACC793792" not in text
    assert "/data/images" not in text
    assert "FileNotFoundError: cannot open [path] (accession [id])" in text
    assert "RuntimeError: batch failed for [id]" in text
    assert re.search(r'File "[^"]*test_sanitize\.py", line \d+, in load_image', text)
    assert "The above exception was the direct cause" in text


def test_query_is_redacted_whitespace_insensitively_and_other_sql_too() -> None:
    sanitizer = Sanitizer(query=QUERY)
    flattened = " ".join(QUERY.split())
    out = sanitizer.text(f"bad query: {flattened}\nother: select name from omop.concept where x = 'Smith'")
    assert QUERY_MARK in out
    assert SQL_MARK in out
    assert "person_id" not in out and "Smith" not in out


def test_secrets_are_removed() -> None:
    out = Sanitizer(secrets=["gAAAAB-envelope-xyz", None, "ab"]).text("project gAAAAB-envelope-xyz refused; ab stays")
    assert out == f"project {SECRET_MARK} refused; ab stays"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ACC1", ID_MARK),
        ("ACC1_seg.nii", f"{ID_MARK}_seg.nii"),
        ("XACC1", "XACC1"),
        ("ACC10", "ACC10"),
        ("RJZ-2023.0001/scan", f"{ID_MARK}/scan"),
        ("pre-RJZ-2023.0001-post", f"pre-{ID_MARK}-post"),
        ("ids ACC1,ACC2", f"ids {ID_MARK},{ID_MARK}"),
    ],
)
def test_identifiers_match_whole_pieces_only(text: str, expected: str) -> None:
    assert Sanitizer(identifiers=["ACC1", "ACC2", "RJZ-2023.0001"]).text(text) == expected


def test_numeric_ids_do_not_erase_line_numbers() -> None:
    sanitizer = Sanitizer(identifiers=["42"])
    out = sanitizer.text('  File "/somewhere/trainer.py", line 42, in execute\nValueError: got 42 rows')
    assert "line 42, in execute" in out
    assert out.endswith(f"ValueError: got {ID_MARK} rows")


def test_code_paths_are_shortened_data_paths_removed() -> None:
    sanitizer = Sanitizer(code_roots=[CUSTOM])
    purelib = sysconfig.get_paths()["purelib"]
    text = (
        f'  File "{CUSTOM}/trainer.py", line 10, in execute\n'
        f'  File "{purelib}/torch/nn/module.py", line 3, in forward\n'
        f'  File "/home/alice/ACC1/helper.py", line 7, in go\n'
        f"OSError: cannot read /mnt/images/net-1/ACC1/x.nii nor {CUSTOM}/config.json"
    )
    out = sanitizer.text(text)
    assert 'File "custom/trainer.py", line 10' in out
    assert 'File "<site-packages>/torch/nn/module.py", line 3' in out
    assert f'File "{PATH_MARK}/helper.py", line 7' in out
    assert "/mnt/images" not in out and "alice" not in out
    assert "nor custom/config.json" in out


def test_service_routes_are_paths_too_and_urls_keep_only_their_host() -> None:
    text = "data-access-api POST /cohort/dataframe failed: HTTP 403; see http://hub:8000/api/model/x"
    assert (
        Sanitizer().text(text) == f"data-access-api POST {PATH_MARK} failed: HTTP 403; see http://hub:8000/{PATH_MARK}"
    )


def test_cap_keeps_the_end() -> None:
    sanitizer = Sanitizer(max_chars=500)
    text = "x" * 5000 + "\nValueError: the real problem"
    out = sanitizer.text(text)
    assert len(out) <= 500
    assert out.endswith("ValueError: the real problem")
    assert "characters removed" in out


def test_huge_input_is_bounded_and_fast() -> None:
    ids = [f"ACC{i:06d}" for i in range(100_000)]
    sanitizer = Sanitizer(identifiers=ids, max_chars=8000)
    text = "\n".join(f"row {i}: ACC{i:06d} /data/x/ACC{i:06d}.nii" for i in range(20_000))
    out = sanitizer.text(text)
    assert len(out) <= 8000
    assert not re.search(r"ACC\d{6}", out)


def test_tiny_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        Sanitizer(max_chars=10)


def test_relative_code_root_given_as_path(tmp_path: Path) -> None:
    custom = tmp_path / "custom"
    custom.mkdir()
    out = Sanitizer(code_roots=[custom]).text(f'  File "{custom.resolve()}/trainer.py", line 1, in <module>')
    assert 'File "custom/trainer.py", line 1' in out


# ---------------------------------------------------------------------------------------------
# Patient data in text that reaches the hub: multi-word values, identifier shapes, paths, the cap


NAME = "John Smith"
ADDRESS = "12 Acacia Avenue, Leeds"
NOTE = "Pt. O'Brien-Jones: chest pain (left side)"
VALUES = [NAME, ADDRESS, NOTE, "ACC000001"]
#: The words of VALUES, as a test looks for them in the output (any case).
WORDS = ["john", "smith", "acacia", "avenue", "leeds", "brien", "jones", "chest", "pain", "left", "side"]


def _leaked_words(text: str) -> list[str]:
    folded = text.casefold()
    return [word for word in WORDS if word in folded]


@pytest.mark.parametrize(
    "written",
    [
        "John Smith",
        "JOHN SMITH",
        "john smith",
        "jOhN   sMiTh",
        "John\nSmith",
        "John\n        Smith",
        "John\t \n  Smith",
        "John_Smith",
        "John-Smith",
        wide("JOHN SMITH"),
        wide("John Smith"),
    ],
)
def test_a_multi_word_value_is_redacted_however_it_is_written(written: str) -> None:
    out = Sanitizer(identifiers=VALUES).text(f"KeyError: no label for {written!s} (row 3)")
    assert _leaked_words(out) == []
    assert out == f"KeyError: no label for {ID_MARK} (row 3)"


@pytest.mark.parametrize(
    "written",
    [
        "12 Acacia Avenue, Leeds",
        "12 ACACIA AVENUE,\n    LEEDS",
        "12 acacia avenue , leeds",
        wide("12 Acacia Avenue, Leeds"),
        "Pt. O'Brien-Jones: chest pain (left side)",
        "PT. O'BRIEN-JONES:\n  CHEST PAIN\n  (LEFT SIDE)",
        "pt o brien jones chest pain left side",
    ],
)
def test_values_with_punctuation_newlines_and_full_width_forms_are_redacted(written: str) -> None:
    out = Sanitizer(identifiers=VALUES).text(f"ValueError: cannot parse {written!r}")
    assert _leaked_words(out) == [], out
    assert ID_MARK in out and out.startswith("ValueError: cannot parse")


def test_a_value_split_by_a_traceback_line_break_is_redacted() -> None:
    def load(name: str) -> None:
        raise KeyError(f"no scan for patient\n    {name}")

    with pytest.raises(KeyError) as info:
        load("JOHN\n    smith")
    out = Sanitizer(identifiers=VALUES).exception(info.value)
    assert _leaked_words(out) == []
    assert re.search(r'File "[^"]*test_sanitize\.py", line \d+, in load', out)


def test_a_value_is_found_only_as_whole_words() -> None:
    out = Sanitizer(identifiers=VALUES).text("Johnson Smithers; john smithy; Leeds United")
    assert out == "Johnson Smithers; john smithy; Leeds United"


def _fragments(value: str) -> list[str]:
    """Every 4-character piece of the value's words: none may be visible after a cut."""
    words = re.findall(r"[A-Za-z]+", value.casefold())
    return sorted({w[i : i + 4] for w in words for i in range(len(w) - 3)})


CUT_VALUE = "Zebulon Quackenbush"


@pytest.mark.parametrize("value", [CUT_VALUE, "Quackenbush"])
@pytest.mark.parametrize("inside", range(len(CUT_VALUE) + 1))
def test_a_value_across_the_input_bound_is_never_half_visible(value: str, inside: int) -> None:
    """The value straddles the point where a huge input is cut (only its last ``8 * max_chars`` are read)."""
    inside = min(inside, len(value))
    sanitizer = Sanitizer(identifiers=[value], max_chars=500)
    end = " is unknown\nValueError: the real problem"
    after = end.rjust(500 * 8 - inside, "=")  # ``inside`` characters of the value lie after the cut point
    text = "=" * 3000 + " " + value + after
    assert text[-500 * 8 :].startswith(value[len(value) - inside :] + "=")
    out = sanitizer.text(text)
    assert len(out) <= 500
    assert out.endswith("ValueError: the real problem")
    visible = out.casefold()
    assert [f for f in _fragments(value) if f in visible] == [], out


_MARKER = len("\n[... 0000 characters removed ...]\n")
_HEAD = (500 - _MARKER) // 4
_TAIL = 500 - _MARKER - _HEAD


@pytest.mark.parametrize("inside", range(-1, len(CUT_VALUE) + 2))
def test_a_value_across_the_length_cap_is_never_half_visible(inside: int) -> None:
    """The value straddles the cap's cuts (``inside`` of its characters in the kept head, or tail), or ends on them."""
    sanitizer = Sanitizer(identifiers=[CUT_VALUE], max_chars=500)
    end = "\nValueError: end"
    at_head = "=" * (_HEAD - inside) + CUT_VALUE + "=" * 2000 + end
    at_tail = "=" * 2000 + CUT_VALUE + end.rjust(_TAIL - inside, "=")
    for text in (at_head, at_tail):
        out = sanitizer.text(text)
        assert len(out) <= 500 and out.endswith(end)
        visible = out.casefold()
        assert [f for f in _fragments(CUT_VALUE) if f in visible] == [], out


def test_text_exactly_at_the_cap_is_not_cut_and_still_redacted() -> None:
    sanitizer = Sanitizer(identifiers=[CUT_VALUE], max_chars=500)
    text = ("=" * (500 - len(CUT_VALUE) - 1)) + " " + CUT_VALUE
    assert len(text) == 500
    out = sanitizer.text(text)
    assert out == ("=" * (500 - len(CUT_VALUE) - 1)) + " " + ID_MARK


@pytest.mark.parametrize(
    "identifier",
    [
        "9434765919",  # NHS number, 10 digits
        "943 476 5919",  # NHS number as 3-3-4 with spaces
        "943-476-5919",  # ... and with dashes
        "943 - 476 - 5919",
        wide("943 476 5919"),  # full-width digits
        "12345678",  # any long digit run
        "MRN0012345678",
        "1980-02-03",
        "03/02/1980",
        "3/2/1980",
        "03-02-1980",
        "03.02.1980",
        "1980/02/03",
        "3 March 1980",
        "March 3, 1980",
        wide("2021-04-05"),
    ],
)
def test_identifier_shapes_are_redacted_without_a_cohort(identifier: str) -> None:
    out = Sanitizer().text(f"ValueError: bad row {identifier} (born?)")
    assert re.fullmatch(r"ValueError: bad row (MRN)?\[(number|date)\] \(born\?\)", out), out


def test_dates_in_python_reprs_are_redacted() -> None:
    out = Sanitizer().text("row: {'dob': datetime.date(1980, 2, 3), 'seen': Timestamp('2021-04-05 10:11:12')}")
    assert "1980" not in out and "2021" not in out
    assert "datetime.date(" in out and "Timestamp(" in out


def test_what_a_developer_needs_survives_the_shape_rules() -> None:
    sanitizer = Sanitizer(code_roots=[CUSTOM])
    text = (
        "Traceback (most recent call last):\n"
        f'  File "{CUSTOM}/trainer.py", line 1234, in execute\n'
        "    loss = step(batch)\n"
        f'  File "{sysconfig.get_paths()["purelib"]}/torch/nn/module.py", line 1736, in _call_impl\n'
        "RuntimeError: shape [4, 128, 128, 64] vs (2, 3) at epoch 12 of 100, lr 0.001, version 2.9.1"
    )
    out = sanitizer.text(text)
    assert 'File "custom/trainer.py", line 1234, in execute' in out
    assert 'File "<site-packages>/torch/nn/module.py", line 1736, in _call_impl' in out
    assert out.endswith("RuntimeError: shape [4, 128, 128, 64] vs (2, 3) at epoch 12 of 100, lr 0.001, version 2.9.1")


@pytest.mark.parametrize(
    "path",
    [
        "/health/records/john-smith.csv",
        "/healthcare/data/ACC1/img.nii",
        "/api/patients/ACC1.json",
        "/cohort/export/ACC1.csv",
        "/download/images/net-1/ACC1/scan.nii",
        "/upload/images/net-1/ACC1/seg.nii",
        "/data/images/net-1/ACC1/scan.nii",
        "~/data/cohort.csv",
        "../data/cohort.csv",
        "./images/ACC1/scan.nii",
        "C:\\data\\cohort.csv",
        "file:///data/images/ACC1/scan.nii",
        "s3://trust-bucket/cohort/ACC1.nii",
    ],
)
def test_data_paths_are_redacted_whatever_their_prefix(path: str) -> None:
    out = Sanitizer().text(f"OSError: cannot read {path} now")
    assert "ACC1" not in out and "cohort" not in out and "data" not in out.split(": ", 1)[1], out
    assert out.startswith("OSError: cannot read ") and out.endswith(" now")
    assert PATH_MARK in out


@pytest.mark.parametrize(
    "path",
    [
        "/mnt/Patient Data/Jane Doe/scan 1.nii",
        "/data/records/jane o doe.csv",
        "'/data/Jane Doe/x.nii'",
        "C:\\Trust Data\\Jane Doe\\notes.txt",
    ],
)
def test_data_paths_with_spaces_are_redacted_whole(path: str) -> None:
    out = Sanitizer().text(f"OSError: cannot read {path} now")
    assert "Jane" not in out and "jane" not in out and "doe" not in out.casefold() and "nii" not in out, out
    assert out.endswith(" now")


def test_code_paths_stay_readable_when_the_cohort_shares_their_digits() -> None:
    sanitizer = Sanitizer(identifiers=["42", "app"], code_roots=[CUSTOM])
    out = sanitizer.text(f'  File "{CUSTOM}/trainer.py", line 42, in execute\nKeyError: 42 (see {CUSTOM}/cfg.json)')
    assert out == '  File "custom/trainer.py", line 42, in execute\nKeyError: [id] (see custom/cfg.json)'


def test_no_path_prefix_is_allow_listed_in_the_module() -> None:
    from flip_nvflare.executors import sanitize

    assert not hasattr(sanitize, "_SERVICE_ROUTES")
    for prefix in ("/health", "/api/", "/cohort/", "/download/images/", "/upload/images/"):
        assert Sanitizer().text(f"x {prefix}ACC1/y.nii") == f"x {PATH_MARK}"


# --------------------------------------------------------------------------- the server's rules


def test_the_server_side_rules_redact_shapes_and_paths_but_keep_sanitized_client_text() -> None:
    from flip_nvflare.executors import sanitize

    client_text = Sanitizer(identifiers=VALUES, code_roots=[CUSTOM]).text(
        "Traceback (most recent call last):\n"
        f'  File "{CUSTOM}/trainer.py", line 63, in execute\n'
        f'  File "{sysconfig.get_paths()["purelib"]}/torch/nn/module.py", line 3, in forward\n'
        '  File "/home/alice/helper.py", line 7, in go\n'
        "FileNotFoundError: John Smith"
    )
    assert sanitize.sanitize_hub_text(client_text) == client_text  # nothing more to remove
    assert 'File "custom/trainer.py", line 63' in client_text

    raw = (
        f"EXECUTION_EXCEPTION for Mrs Jane Doe, NHS {wide('943 476 5919')}, dob 03.02.1980,\n"
        "see /health/records/jane-doe.csv or C:\\trust\\notes.txt (MRN 1234567890)"
    )
    out = sanitize.sanitize_hub_text(raw)
    for leaked in ("943", wide("943"), "5919", "1980", "jane-doe", "/health", "notes.txt", "1234567890"):
        assert leaked not in out, out
    assert out.startswith("EXECUTION_EXCEPTION for Mrs Jane Doe, NHS [")


def test_the_server_side_rules_cut_after_redacting() -> None:
    from flip_nvflare.executors import sanitize

    raw = "x" * 1000 + " 943 476 5919 " + "y" * 9000 + "\nValueError: end 9434765919"
    out = sanitize.sanitize_hub_text(raw, max_chars=500)
    assert len(out) <= 500 and "5919" not in out and "943" not in out
    assert out.endswith("ValueError: end [number]")


@pytest.mark.parametrize(
    ("return_code", "shown"),
    [
        ("EXECUTION_EXCEPTION", "EXECUTION_EXCEPTION"),
        ("TASK_UNKNOWN", "TASK_UNKNOWN"),
        ("John Smith 943 476 5919", None),
        ("/data/ACC1/x.nii", None),
        ("JOHN_SMITH", None),
        (None, None),
    ],
)
def test_a_return_code_is_shown_only_if_it_is_one_of_nvflares(return_code: object, shown: str | None) -> None:
    from flip_nvflare.executors import sanitize

    out = sanitize.hub_return_code(return_code)
    assert out == (shown if shown is not None else sanitize.UNKNOWN_RETURN_CODE)
    assert "John" not in out and "5919" not in out and "ACC1" not in out
