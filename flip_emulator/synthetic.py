"""A small synthetic population, generated deterministically from a seed.

Two artefacts, written once into one folder and then only read (the archive may be written in the
background after the database, see :func:`ensure_archive`):

- ``omop.sqlite``: an OMOP-shaped database: ``person``, ``concept``, ``image_occurrence`` (with an
  ``accession_id`` per imaging study), ``note`` (a radiology report per study, linked by
  ``note_event_id = image_occurrence_id``) and ``condition_occurrence``.
- ``xnat/<accession>/scans/<scan>/resources/<R>/files/...``: one small NIfTI volume per study
  (``NIFTI``) and, for most studies, a segmentation of the same shape (``SEG``), as an XNAT
  archive lays them out. The emulator has no DICOM data: a ``DICOM`` download answers 404.

Everything is a pure function of the seed and the number of people: the same arguments give the
same rows and the same bytes. None of it describes a real person.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
OMOP_FILE = "omop.sqlite"
ARCHIVE_DIR = "xnat"
VOLUME_SHAPE = (32, 32, 16)

# Standard OMOP gender concepts; everything else uses local concept ids (> 2,000,000,000).
MALE, FEMALE = 8507, 8532
CONCEPTS: tuple[tuple[int, str, str, str, str], ...] = (
    (MALE, "MALE", "Gender", "Gender", "M"),
    (FEMALE, "FEMALE", "Gender", "Gender", "F"),
    (2000000001, "Magnetic resonance imaging", "Procedure", "Emulator", "MR"),
    (2000000002, "Computed tomography", "Procedure", "Emulator", "CT"),
    (2000000101, "Brain", "Spec Anatomic Site", "Emulator", "BRAIN"),
    (2000000102, "Chest", "Spec Anatomic Site", "Emulator", "CHEST"),
    (2000000201, "Hypertension", "Condition", "Emulator", "HTN"),
    (2000000202, "Type 2 diabetes mellitus", "Condition", "Emulator", "T2DM"),
    (2000000203, "Glioblastoma", "Condition", "Emulator", "GBM"),
    (2000000204, "Multiple sclerosis", "Condition", "Emulator", "MS"),
    (2000000205, "Pneumonia", "Condition", "Emulator", "PNA"),
    (2000000301, "Radiology report", "Type Concept", "Emulator", "RADREP"),
    (2000000302, "EHR record", "Type Concept", "Emulator", "EHR"),
    (2000000401, "image_occurrence.image_occurrence_id", "Metadata", "Emulator", "IMAGE_OCCURRENCE"),
)
MR, CT = 2000000001, 2000000002
BRAIN, CHEST = 2000000101, 2000000102
#: Condition concept -> (share of people, or an exact count when >= 1).
CONDITIONS: dict[int, float] = {
    2000000201: 0.4,  # hypertension: common
    2000000202: 0.2,  # type 2 diabetes
    2000000203: 6,  # glioblastoma: exactly 6 people, below the default threshold of 10
    2000000204: 8,  # multiple sclerosis: exactly 8 people
    2000000205: 0.25,  # pneumonia
}

_SCHEMA = """
CREATE TABLE concept (
    concept_id INTEGER PRIMARY KEY, concept_name TEXT NOT NULL, domain_id TEXT NOT NULL,
    vocabulary_id TEXT NOT NULL, concept_code TEXT NOT NULL);
CREATE TABLE person (
    person_id INTEGER PRIMARY KEY, gender_concept_id INTEGER NOT NULL, year_of_birth INTEGER NOT NULL,
    month_of_birth INTEGER, day_of_birth INTEGER, birth_datetime TEXT, race_concept_id INTEGER NOT NULL,
    ethnicity_concept_id INTEGER NOT NULL, care_site_id INTEGER, person_source_value TEXT,
    gender_source_value TEXT);
CREATE TABLE image_occurrence (
    image_occurrence_id INTEGER PRIMARY KEY, person_id INTEGER NOT NULL, procedure_occurrence_id INTEGER,
    visit_occurrence_id INTEGER, anatomic_site_concept_id INTEGER, wadors_uri TEXT, local_path TEXT,
    image_occurrence_date TEXT NOT NULL, image_study_uid TEXT NOT NULL, image_series_uid TEXT NOT NULL,
    modality_concept_id INTEGER NOT NULL, accession_id TEXT NOT NULL UNIQUE);
CREATE TABLE note (
    note_id INTEGER PRIMARY KEY, person_id INTEGER NOT NULL, note_date TEXT NOT NULL,
    note_type_concept_id INTEGER NOT NULL, note_title TEXT, note_text TEXT NOT NULL,
    note_event_id INTEGER, note_event_field_concept_id INTEGER);
CREATE TABLE condition_occurrence (
    condition_occurrence_id INTEGER PRIMARY KEY, person_id INTEGER NOT NULL,
    condition_concept_id INTEGER NOT NULL, condition_start_date TEXT NOT NULL,
    condition_type_concept_id INTEGER NOT NULL);
CREATE INDEX image_occurrence_person ON image_occurrence (person_id);
CREATE INDEX condition_person ON condition_occurrence (person_id);
"""

_SIDES = ("left", "right")
_LOBES = ("frontal", "parietal", "temporal", "occipital")
_NORMAL = (
    "No focal abnormality. Ventricles and sulci are normal for age.",
    "No acute intracranial abnormality.",
    "Unremarkable study.",
)


@dataclass(frozen=True)
class Study:
    """One synthetic imaging study."""

    image_occurrence_id: int
    person_id: int
    accession_id: str
    modality: str
    anatomic_site: str
    study_date: str
    has_seg: bool
    lesion: tuple[int, int, int, int] | None  # centre x, y, z and radius, in voxels


@dataclass(frozen=True)
class SyntheticData:
    """Where a generated population lives.

    Attributes:
        root: The folder.
        omop_path: The OMOP SQLite database.
        archive: The XNAT-style archive folder.
        seed: The seed it was generated from.
        subjects: Number of people.
        studies: Number of imaging studies.
    """

    root: Path
    omop_path: Path
    archive: Path
    seed: int
    subjects: int
    studies: int


def ensure_synthetic(root: Path, *, seed: int = 0, subjects: int = 60, images: bool = True) -> SyntheticData:
    """Return the population in ``root``, generating what is missing or was made differently.

    Each part is written in a temporary sibling folder that is renamed into place, so concurrent
    callers never see a half-written population.

    Args:
        root: The population folder.
        seed: Seed of the population.
        subjects: Number of people.
        images: Also make sure the image archive exists. With ``False`` only the OMOP database
            is guaranteed (fast); call :func:`ensure_archive` later, e.g. in a background thread.

    Raises:
        ValueError: ``root`` holds something that is not a population of this emulator.
    """
    found = _read_manifest(root)
    if found is None or found.seed != seed or found.subjects != subjects:
        if root.exists() and found is None and any(root.iterdir()):
            raise ValueError(
                f"{root} is not empty and holds no emulator population; choose another --synthetic-dir or empty it."
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            _write_database(staging, seed=seed, subjects=subjects)
            if root.exists():
                shutil.rmtree(root)
            try:
                os.replace(staging, root)
            except OSError:
                # Someone else finished first: use theirs if it was made the same way.
                found = _read_manifest(root)
                if found is None or found.seed != seed or found.subjects != subjects:
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        found = _read_manifest(root)
        assert found is not None
    if images:
        ensure_archive(found)
    return found


def archive_ready(data: SyntheticData) -> bool:
    """Whether the image archive of ``data`` is complete."""
    return data.archive.is_dir()


def ensure_archive(data: SyntheticData) -> None:
    """Write the image archive of ``data`` unless it exists (safe to call from several processes)."""
    if archive_ready(data):
        return
    staging = Path(tempfile.mkdtemp(prefix=f".{ARCHIVE_DIR}.", dir=data.root))
    try:
        for study in plan(data.seed, data.subjects)[1]:
            _write_study(staging, study, data.seed)
        try:
            os.replace(staging, data.archive)
        except OSError:
            if not archive_ready(data):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _read_manifest(root: Path) -> SyntheticData | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return None
    return SyntheticData(
        root=root,
        omop_path=root / OMOP_FILE,
        archive=root / ARCHIVE_DIR,
        seed=int(manifest["seed"]),
        subjects=int(manifest["subjects"]),
        studies=int(manifest["studies"]),
    )


def plan(seed: int, subjects: int) -> tuple[list[tuple[Any, ...]], list[Study], list[tuple[Any, ...]]]:
    """The rows of the population: people, studies and conditions (pure function of the arguments)."""
    rng = random.Random(f"flip-emulator-population-{seed}")
    people: list[tuple[Any, ...]] = []
    for person_id in range(1, subjects + 1):
        gender = rng.choice((MALE, FEMALE))
        year = rng.randint(1940, 2004)
        month, day = rng.randint(1, 12), rng.randint(1, 28)
        people.append(
            (
                person_id,
                gender,
                year,
                month,
                day,
                f"{year:04d}-{month:02d}-{day:02d}T00:00:00",
                rng.choice((8527, 8516, 8515, 0)),
                38003564,
                rng.choice((1, 2)),
                f"EMU-P{person_id:05d}",
                "M" if gender == MALE else "F",
            )
        )
    study_counts = [rng.choices((1, 2, 3), weights=(4, 4, 2))[0] for _ in range(subjects)]
    numbers = rng.sample(range(100000, 999999), sum(study_counts))
    studies: list[Study] = []
    start = date(2018, 1, 1)
    for person_id, count in enumerate(study_counts, start=1):
        for _ in range(count):
            index = len(studies) + 1
            modality = rng.choices(("MR", "CT"), weights=(6, 4))[0]
            site = "BRAIN" if modality == "MR" or rng.random() < 0.5 else "CHEST"
            lesion = None
            if rng.random() < 0.6:
                lesion = (rng.randint(10, 21), rng.randint(10, 21), rng.randint(5, 10), rng.randint(2, 4))
            studies.append(
                Study(
                    image_occurrence_id=index,
                    person_id=person_id,
                    accession_id=f"ACC{numbers[index - 1]:06d}",
                    modality=modality,
                    anatomic_site=site,
                    study_date=(start + timedelta(days=rng.randint(0, 6 * 365))).isoformat(),
                    has_seg=rng.random() < 0.85,
                    lesion=lesion,
                )
            )
    conditions: list[tuple[Any, ...]] = []
    person_ids = list(range(1, subjects + 1))
    for concept_id, share in CONDITIONS.items():
        count = int(share) if share >= 1 else round(share * subjects)
        for person_id in sorted(rng.sample(person_ids, min(count, subjects))):
            when = (start + timedelta(days=rng.randint(-3 * 365, 6 * 365))).isoformat()
            conditions.append((len(conditions) + 1, person_id, concept_id, when, 2000000302))
    return people, studies, conditions


def _report(study: Study) -> str:
    what = "MR" if study.modality == "MR" else "CT"
    site = study.anatomic_site.lower()
    if study.lesion is None:
        finding = _NORMAL[study.image_occurrence_id % len(_NORMAL)]
    else:
        side = _SIDES[study.lesion[0] % 2]
        lobe = _LOBES[study.lesion[1] % len(_LOBES)]
        finding = f"Well-defined lesion in the {side} {lobe} region measuring {study.lesion[3] * 4} mm."
    return f"{what} {site}: {finding} (Synthetic report generated by the FLIP emulator.)"


def generate(root: Path, *, seed: int, subjects: int) -> SyntheticData:
    """Write the OMOP database, the manifest and the archive into ``root`` (which must be empty)."""
    data = _write_database(root, seed=seed, subjects=subjects)
    ensure_archive(data)
    return data


def _write_database(root: Path, *, seed: int, subjects: int) -> SyntheticData:
    """Write the OMOP database and the manifest into ``root``."""
    people, studies, conditions = plan(seed, subjects)
    root.mkdir(parents=True, exist_ok=True)
    omop = sqlite3.connect(root / OMOP_FILE)
    try:
        omop.executescript(_SCHEMA)
        omop.executemany("INSERT INTO concept VALUES (?, ?, ?, ?, ?)", CONCEPTS)
        omop.executemany("INSERT INTO person VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", people)
        omop.executemany(
            "INSERT INTO image_occurrence VALUES (?, ?, NULL, NULL, ?, NULL, ?, ?, ?, ?, ?, ?)",
            [
                (
                    s.image_occurrence_id,
                    s.person_id,
                    BRAIN if s.anatomic_site == "BRAIN" else CHEST,
                    f"{ARCHIVE_DIR}/{s.accession_id}",
                    s.study_date,
                    f"1.2.826.0.1.3680043.10.1{seed % 1000:03d}.{s.image_occurrence_id}",
                    f"1.2.826.0.1.3680043.10.1{seed % 1000:03d}.{s.image_occurrence_id}.1",
                    MR if s.modality == "MR" else CT,
                    s.accession_id,
                )
                for s in studies
            ],
        )
        omop.executemany(
            "INSERT INTO note VALUES (?, ?, ?, 2000000301, 'Radiology report', ?, ?, 2000000401)",
            [(s.image_occurrence_id, s.person_id, s.study_date, _report(s), s.image_occurrence_id) for s in studies],
        )
        omop.executemany("INSERT INTO condition_occurrence VALUES (?, ?, ?, ?, ?)", conditions)
        omop.commit()
    finally:
        omop.close()
    manifest = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "subjects": subjects,
        "studies": len(studies),
        "note": "Synthetic data generated by flip-nvflare's FLIP emulator; it describes no real person.",
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return SyntheticData(root, root / OMOP_FILE, root / ARCHIVE_DIR, seed, subjects, len(studies))


def _write_study(archive: Path, study: Study, seed: int) -> None:
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng([seed, study.image_occurrence_id])
    x, y, z = np.meshgrid(*(np.arange(n) for n in VOLUME_SHAPE), indexing="ij")
    cx, cy, cz = (n / 2 - 0.5 for n in VOLUME_SHAPE)
    body = ((x - cx) / 13) ** 2 + ((y - cy) / 14) ** 2 + ((z - cz) / 7) ** 2 <= 1.0
    base = 400 if study.modality == "MR" else 40
    volume = rng.normal(0, 20, VOLUME_SHAPE) + body * base
    mask = np.zeros(VOLUME_SHAPE, dtype=np.uint8)
    if study.lesion is not None:
        lx, ly, lz, radius = study.lesion
        lesion = (x - lx) ** 2 + (y - ly) ** 2 + ((z - lz) * 2) ** 2 <= radius**2
        volume = volume + lesion * base * 0.8
        mask[lesion] = 1
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    series = "T1w" if study.modality == "MR" else "CT"
    scan = archive / study.accession_id / "scans" / "1" / "resources"
    image = nib.Nifti1Image(volume.astype(np.int16), affine)
    _write_gz(scan / "NIFTI" / "files" / f"1_{series}.nii.gz", image.to_bytes())
    if study.has_seg:
        seg = nib.Nifti1Image(mask, affine)
        _write_gz(scan / "SEG" / "files" / f"1_{series}_seg.nii.gz", seg.to_bytes())


def _write_gz(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the bytes a function of the content alone.
    path.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
