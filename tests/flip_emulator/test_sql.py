from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import pytest

from flip_emulator import sql as sql_module
from flip_emulator.sql import MAX_QUERY_CHARS, CohortDatabase, QueryFailed, QueryRejected, validate_query
from flip_emulator.synthetic import SyntheticData


@pytest.fixture
def db(population: SyntheticData) -> CohortDatabase:
    return CohortDatabase(population.omop_path, timeout=5)


def direct(population: SyntheticData, sql: str) -> list[tuple[object, ...]]:
    """Run ``sql`` straight on the OMOP file (the reference the emulator is compared with)."""
    conn = sqlite3.connect(population.omop_path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_result_is_column_oriented_and_matches_the_database(db: CohortDatabase, population: SyntheticData) -> None:
    result = db.run("SELECT person_id, year_of_birth FROM omop.person ORDER BY person_id")
    rows = direct(population, "SELECT person_id, year_of_birth FROM person ORDER BY person_id")
    assert list(result.columns) == ["person_id", "year_of_birth"]
    assert list(zip(result.columns["person_id"], result.columns["year_of_birth"], strict=True)) == rows
    assert result.rows == len(rows)
    assert result.subjects == len({r[0] for r in rows})


def test_subjects_are_counted_through_accession_ids(db: CohortDatabase, population: SyntheticData) -> None:
    sql = "SELECT accession_id FROM omop.image_occurrence WHERE modality_concept_id = 2000000002"
    result = db.run(sql)
    expected = direct(
        population, "SELECT COUNT(DISTINCT person_id) FROM image_occurrence WHERE modality_concept_id = 2000000002"
    )[0][0]
    assert isinstance(expected, int) and result.subjects == expected
    assert result.rows > expected  # several studies per person: rows are not subjects


def test_result_without_subject_columns_has_no_subject_count(db: CohortDatabase) -> None:
    assert db.run("SELECT year_of_birth FROM omop.person").subjects is None


def test_duplicate_column_names_keep_the_first(db: CohortDatabase) -> None:
    result = db.run(
        "SELECT p.person_id, io.person_id, io.accession_id FROM omop.person p "
        "JOIN omop.image_occurrence io ON io.person_id = p.person_id"
    )
    assert list(result.columns) == ["person_id", "accession_id"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT person_id FROM omop.person UNION SELECT person_id FROM omop.condition_occurrence",
        "SELECT person_id FROM omop.person INTERSECT SELECT person_id FROM omop.image_occurrence",
        "SELECT person_id FROM omop.person EXCEPT SELECT person_id FROM omop.condition_occurrence",
        "WITH c AS (SELECT person_id FROM omop.person) SELECT person_id FROM c",
        "SELECT person_id FROM omop.person;",
        "SELECT person_id FROM omop.person -- a comment; not a statement",
        "SELECT person_id, 'LIMIT x; OFFSET y' AS note FROM omop.person",
        "SELECT person_id FROM omop.person ORDER BY person_id LIMIT 20 OFFSET 5",
        "SELECT person_id FROM omop.person ORDER BY person_id LIMIT 5, 20",
        "select person_id from person",
    ],
)
def test_valid_queries_run(db: CohortDatabase, sql: str) -> None:
    assert db.run(sql).rows > 0


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("", "empty"),
        ("  -- only a comment", "empty"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
        ("SELECT 1; DROP TABLE person", "exactly one statement"),
        ("DELETE FROM omop.person", "Only SELECT"),
        ("INSERT INTO omop.person (person_id) VALUES (999)", "Only SELECT"),
        ("UPDATE omop.person SET year_of_birth = 1900", "Only SELECT"),
        ("PRAGMA table_info(person)", "Only SELECT"),
        ("ATTACH DATABASE ':memory:' AS x", "Only SELECT"),
        ("CREATE TABLE omop.x (a)", "Only SELECT"),
        ("VALUES (1)", "Only SELECT"),
        ("EXPLAIN SELECT 1", "Only SELECT"),
        ("WITH x AS (SELECT 1) DELETE FROM omop.person", "Only SELECT"),
        ("SELECT * FROM main.sqlite_master", "omop schema"),
        ("SELECT * FROM sqlite_master", "omop schema"),
        ("SELECT * FROM omop.sqlite_master", "omop schema"),
        ("SELECT * FROM temp.sqlite_master", "omop schema"),
        ("SELECT * FROM public.person", "omop schema"),
        ("SELECT * FROM pragma_table_info('person')", "omop schema"),
        ("SELECT * FROM omop.person LIMIT (SELECT 1)", "LIMIT"),
        ("SELECT * FROM omop.person LIMIT ?", "LIMIT"),
        ("SELECT * FROM omop.person LIMIT person_id", "LIMIT"),
        ("SELECT * FROM omop.person LIMIT -1", "LIMIT"),
        ("SELECT * FROM omop.person LIMIT 5 OFFSET 1 + 1", "OFFSET"),
        ("SELECT * FROM omop.person LIMIT 5, x", "LIMIT"),
        ("SELECT * FROM omop.persons", "Unknown table: omop.persons"),
        ("SELECT shoe_size FROM omop.person", "Unknown column: shoe_size"),
        ("SELECT FROM WHERE", "syntax"),
        ("SELECT load_extension('x')", "load_extension"),
    ],
)
def test_rule_breaking_queries_are_rejected(db: CohortDatabase, sql: str, reason: str) -> None:
    with pytest.raises(QueryRejected) as err:
        db.run(sql)
    assert reason in str(err.value)


def test_rejection_messages_never_repeat_the_query(db: CohortDatabase) -> None:
    secret = "'patient-name-Alice'"
    for sql in (
        f"SELECT * FROM omop.person WHERE x = {secret}",
        f"SELECT {secret} FROM WHERE",
        f"SELECT {secret}; SELECT 1",
    ):
        with pytest.raises(QueryRejected) as err:
            db.run(sql)
        assert "Alice" not in str(err.value)


def test_length_limit_is_exact(db: CohortDatabase) -> None:
    base = "SELECT person_id FROM omop.person "
    at_limit = base + "-" * (MAX_QUERY_CHARS - len(base))
    assert len(at_limit) == MAX_QUERY_CHARS
    validate_query(at_limit)
    assert db.run(at_limit).rows > 0
    with pytest.raises(QueryRejected, match="longer than 10,240"):
        validate_query(at_limit + "-")


def test_the_database_is_read_only(db: CohortDatabase, population: SyntheticData) -> None:
    before = direct(population, "SELECT COUNT(*) FROM person")
    with pytest.raises(QueryRejected):
        db.run("WITH x AS (SELECT 1) DELETE FROM omop.person")
    assert direct(population, "SELECT COUNT(*) FROM person") == before


def test_runaway_query_is_stopped_by_the_time_limit(population: SyntheticData, monkeypatch: pytest.MonkeyPatch) -> None:
    readings: list[float] = []

    def ticking() -> float:  # a clock that moves 0.125 s each time it is read
        readings.append(0.125 * len(readings))
        return readings[-1]

    monkeypatch.setattr(sql_module, "time", SimpleNamespace(monotonic=ticking))
    db = CohortDatabase(population.omop_path, timeout=0.3)
    with pytest.raises(QueryFailed, match="time limit"):
        db.run("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x AS person_id FROM c")
    # the deadline (0 + 0.3), two progress checks within it, the one past it stopped the query, and
    # one more reading when naming the failure: the query ran no longer than its limit allowed
    assert readings == [0.0, 0.125, 0.25, 0.375, 0.5]
