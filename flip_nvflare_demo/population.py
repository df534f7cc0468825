"""Serve the demo's data from the FLIP services emulator: write it as an emulator population.

The emulator's trust answers cohort queries from an OMOP SQLite database and image downloads from
an XNAT-style archive, both in its "synthetic population" folder. This module writes that folder
from the demo data (every site's studies, since the emulator runs one trust): one person and one
imaging study per demo study, a radiology report saying whether the lesion is present (the label,
recoverable with SQL), and the study's NIfTI in the archive. The emulator is then started with
``--synthetic-dir`` on this folder and the matching ``--seed`` / ``--subjects``.

It relies on the emulator's population format (``flip_emulator.synthetic``); the demo
tests check the two stay compatible.
"""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from flip_nvflare_demo.data import NIFTI_RELATIVE_PATH, DemoData

#: The cohort query of the prod demo: one row per study, labelled from its radiology report.
DEMO_QUERY = (
    "SELECT io.accession_id, CASE WHEN n.note_text LIKE '%lesion present%' THEN 1 ELSE 0 END AS label "
    "FROM omop.image_occurrence io JOIN omop.note n ON n.note_event_id = io.image_occurrence_id"
)
_POSITIVE = "MR brain: focal bright lesion present. (Synthetic report of the flip-nvflare demo.)"
_NEGATIVE = "MR brain: no focal lesion. (Synthetic report of the flip-nvflare demo.)"
_MR, _BRAIN, _FEMALE, _MALE = 2000000001, 2000000101, 8532, 8507


@dataclass(frozen=True)
class Population:
    """An emulator population written from the demo data.

    Attributes:
        root: The folder (the emulator's ``--synthetic-dir``).
        seed: The seed recorded in its manifest (the emulator's ``--seed``).
        subjects: People in it (the emulator's ``--subjects``).
        studies: Imaging studies in it.
    """

    root: Path
    seed: int
    subjects: int
    studies: int

    def emulator_args(self) -> list[str]:
        """Command-line arguments that make the emulator use this population."""
        return [f"--seed={self.seed}", f"--subjects={self.subjects}"]


def write_population(data: DemoData, root: Path) -> Population:
    """Write (or rewrite) the emulator population of ``data`` into ``root``."""
    from flip_emulator import synthetic

    if root.exists():
        shutil.rmtree(root)
    archive = root / synthetic.ARCHIVE_DIR
    archive.mkdir(parents=True)
    people: list[tuple[object, ...]] = []
    studies: list[tuple[object, ...]] = []
    notes: list[tuple[object, ...]] = []
    for site in data.sites:
        with open(site.cohort_csv, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:
            index = len(studies) + 1
            person_id = int(row["person_id"])
            accession = row["accession_id"]
            gender = _FEMALE if row["gender"] == "F" else _MALE
            year = int(row["year_of_birth"])
            birth = f"{year:04d}-01-01T00:00:00"
            people.append((person_id, gender, year, 1, 1, birth, 0, 38003564, 1, f"DEMO-P{person_id}", row["gender"]))
            studies.append(
                (
                    index,
                    person_id,
                    _BRAIN,
                    f"{synthetic.ARCHIVE_DIR}/{accession}",
                    row["study_date"],
                    f"1.2.826.0.1.3680043.10.9{index}",
                    f"1.2.826.0.1.3680043.10.9{index}.1",
                    _MR,
                    accession,
                )
            )
            report = _POSITIVE if row["label"] == "1" else _NEGATIVE
            notes.append((index, person_id, row["study_date"], report, index))
            target = archive / accession / NIFTI_RELATIVE_PATH
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(site.images_dir / accession / NIFTI_RELATIVE_PATH, target)
    omop = sqlite3.connect(root / synthetic.OMOP_FILE)
    try:
        omop.executescript(synthetic._SCHEMA)  # the emulator's OMOP schema
        omop.executemany("INSERT INTO concept VALUES (?, ?, ?, ?, ?)", synthetic.CONCEPTS)
        omop.executemany("INSERT INTO person VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", people)
        omop.executemany("INSERT INTO image_occurrence VALUES (?, ?, NULL, NULL, ?, NULL, ?, ?, ?, ?, ?, ?)", studies)
        omop.executemany("INSERT INTO note VALUES (?, ?, ?, 2000000301, 'Radiology report', ?, ?, 2000000401)", notes)
        omop.commit()
    finally:
        omop.close()
    population = Population(root=root, seed=data.spec.seed, subjects=len(people), studies=len(studies))
    manifest = {
        "format_version": synthetic.FORMAT_VERSION,
        "seed": population.seed,
        "subjects": population.subjects,
        "studies": population.studies,
        "note": "The flip-nvflare demo's synthetic data, served by the emulator; it describes no real person.",
    }
    (root / synthetic.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return population
