from __future__ import annotations

import re
import sysconfig
from pathlib import Path

import pytest

from flip_nvflare.executors.sanitize import ID_MARK, PATH_MARK, QUERY_MARK, SECRET_MARK, SQL_MARK, Sanitizer

QUERY = "SELECT p.person_id, io.accession_id\n  FROM omop.person p JOIN omop.image_occurrence io USING (person_id)"
CUSTOM = "/ws/site-1/job_42/app_site-1/custom"


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


def test_service_routes_and_urls_survive() -> None:
    text = "data-access-api POST /cohort/dataframe failed: HTTP 403; see http://hub:8000/api/model/x"
    assert Sanitizer().text(text) == text


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
