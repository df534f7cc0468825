"""The prod demo's data, served by the real emulator (over loopback) from the population written from it."""

import csv
from pathlib import Path

from flip_emulator.handle import start_emulator
from flip_nvflare_demo.data import NIFTI_RELATIVE_PATH, DemoDataSpec, generate_demo_data
from flip_nvflare_demo.population import DEMO_QUERY, write_population


def test_the_emulator_serves_the_demo_data(tmp_path: Path) -> None:
    data = generate_demo_data(tmp_path / "data", DemoDataSpec(cases_per_site=8, shape=(12, 12, 12)))
    population = write_population(data, tmp_path / "population")
    assert (population.subjects, population.studies) == (16, 16)
    expected = {}
    for site in data.sites:
        with open(site.cohort_csv, newline="") as fh:
            expected.update({row["accession_id"]: int(row["label"]) for row in csv.DictReader(fh)})

    with start_emulator(
        tmp_path / "emulator", s3=False, synthetic_dir=population.root, extra_args=population.emulator_args()
    ) as emulator:
        model = emulator.register_model(trusts=("Trust_1", "Trust_2"))
        backend = emulator.prod_backend()
        frame = backend.get_dataframe(model.encrypted_project_id, DEMO_QUERY)
        assert dict(zip(frame["accession_id"], frame["label"], strict=True)) == expected
        accession = sorted(expected)[0]
        folder = backend.get_by_accession_number(model.encrypted_project_id, accession)
        site = data.site("site-1")
        assert (folder / NIFTI_RELATIVE_PATH).read_bytes() == (
            site.images_dir / accession / NIFTI_RELATIVE_PATH
        ).read_bytes()
        backend.close()
