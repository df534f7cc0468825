from __future__ import annotations

import sqlite3
from pathlib import Path

import nibabel as nib
import numpy as np

from flip_emulator.synthetic import (
    SyntheticData,
    archive_ready,
    ensure_archive,
    ensure_synthetic,
    generate,
    plan,
)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.nii.gz"))}


def test_generation_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", seed=3, subjects=10)
    b = generate(tmp_path / "b", seed=3, subjects=10)
    c = ensure_synthetic(tmp_path / "c", seed=4, subjects=10, images=False)
    assert _files(a.archive) == _files(b.archive)
    dump = [list(sqlite3.connect(d.omop_path).iterdump()) for d in (a, b, c)]
    assert dump[0] == dump[1]
    assert dump[0] != dump[2]
    accessions = [{s.accession_id for s in plan(seed, 10)[1]} for seed in (3, 4)]
    assert {p.name for p in a.archive.iterdir()} == accessions[0] != accessions[1]


def test_population_shape(population: SyntheticData) -> None:
    conn = sqlite3.connect(population.omop_path)
    people = conn.execute("SELECT COUNT(*) FROM person").fetchone()[0]
    studies = conn.execute("SELECT COUNT(*), COUNT(DISTINCT accession_id) FROM image_occurrence").fetchone()
    reports = conn.execute(
        "SELECT COUNT(*) FROM note n JOIN image_occurrence io ON io.image_occurrence_id = n.note_event_id"
    ).fetchone()[0]
    assert people == population.subjects == 60
    assert studies[0] == studies[1] == population.studies
    assert 80 <= population.studies <= 140
    assert reports == population.studies
    rare = conn.execute(
        "SELECT COUNT(DISTINCT person_id) FROM condition_occurrence WHERE condition_concept_id = 2000000203"
    ).fetchone()[0]
    assert rare < 10  # a narrow cohort for threshold tests


def test_every_study_has_a_readable_volume_and_most_a_matching_segmentation(population: SyntheticData) -> None:
    conn = sqlite3.connect(population.omop_path)
    accessions = [r[0] for r in conn.execute("SELECT accession_id FROM image_occurrence")]
    assert accessions
    with_seg = 0
    for accession in accessions:
        scans = population.archive / accession / "scans"
        (image_path,) = scans.glob("*/resources/NIFTI/files/*.nii.gz")
        image = np.asarray(nib.load(image_path).get_fdata())  # type: ignore[attr-defined]
        assert image.shape == (32, 32, 16)
        segs = list(scans.glob("*/resources/SEG/files/*.nii.gz"))
        if segs:
            with_seg += 1
            seg = np.asarray(nib.load(segs[0]).get_fdata())  # type: ignore[attr-defined]
            assert seg.shape == image.shape
            assert set(np.unique(seg)) <= {0, 1}
    assert len(accessions) // 2 < with_seg < len(accessions)  # some studies have no segmentation


def test_database_first_images_later(tmp_path: Path) -> None:
    data = ensure_synthetic(tmp_path / "pop", seed=5, subjects=10, images=False)
    assert data.omop_path.is_file() and not archive_ready(data)
    ensure_archive(data)
    assert archive_ready(data) and len(list(data.archive.iterdir())) == data.studies
    assert not [p for p in data.root.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_existing_population_is_reused(tmp_path: Path) -> None:
    first = ensure_synthetic(tmp_path / "pop", seed=1, subjects=10, images=False)
    marker = first.omop_path.stat().st_mtime_ns
    again = ensure_synthetic(tmp_path / "pop", seed=1, subjects=10, images=False)
    assert again.omop_path.stat().st_mtime_ns == marker
    other = ensure_synthetic(tmp_path / "pop", seed=2, subjects=10, images=False)
    assert other.seed == 2 and len(plan(2, 10)[1]) == other.studies
