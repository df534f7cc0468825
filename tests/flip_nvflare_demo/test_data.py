import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from flip_nvflare_demo.data import (
    COHORT_COLUMNS,
    NIFTI_RELATIVE_PATH,
    DemoDataSpec,
    find_niftis,
    generate_demo_data,
    read_volume,
)

SMALL = DemoDataSpec(cases_per_site=12, shape=(16, 16, 16))


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "demo_data.json":
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_layout_cohort_and_labels(tmp_path: Path) -> None:
    data = generate_demo_data(tmp_path / "data", SMALL)
    assert [s.site for s in data.sites] == ["site-1", "site-2"]
    for site in data.sites:
        rows = _rows(site.cohort_csv)
        assert list(rows[0]) == list(COHORT_COLUMNS)
        assert len(rows) == site.cases == 12
        assert sum(int(r["label"]) for r in rows) == site.positives == 6
        for row in rows:
            (nifti,) = find_niftis(site.images_dir / row["accession_id"])
            assert nifti == site.images_dir / row["accession_id"] / NIFTI_RELATIVE_PATH
            assert read_volume(nifti).shape == (16, 16, 16)
    ids = [r["accession_id"] for s in data.sites for r in _rows(s.cohort_csv)]
    assert len(set(ids)) == len(ids)


def test_same_spec_same_bytes_and_other_seed_other_bytes(tmp_path: Path) -> None:
    first = generate_demo_data(tmp_path / "a", SMALL).root
    second = generate_demo_data(tmp_path / "b", SMALL).root
    third = generate_demo_data(tmp_path / "c", DemoDataSpec(cases_per_site=12, shape=(16, 16, 16), seed=7)).root
    assert _digest(first) == _digest(second) != _digest(third)


def test_the_label_is_visible_in_the_image(tmp_path: Path) -> None:
    data = generate_demo_data(tmp_path / "data", DemoDataSpec(cases_per_site=40))
    site = data.site("site-1")
    peaks = {0: [], 1: []}
    for row in _rows(site.cohort_csv):
        volume = read_volume(find_niftis(site.images_dir / row["accession_id"])[0])
        smoothed = volume.reshape(6, 4, 6, 4, 6, 4).mean(axis=(1, 3, 5))  # averaging brings out the blob
        peaks[int(row["label"])].append(float(smoothed.max()))
    assert np.median(peaks[1]) > np.percentile(peaks[0], 90)


def test_existing_data_is_reused_unless_forced_or_changed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    generate_demo_data(root, SMALL)
    marker = root / "site-1" / "images" / "marker"
    marker.write_text("kept")
    generate_demo_data(root, SMALL)
    assert marker.exists()
    generate_demo_data(root, SMALL, force=True)
    (root / "site-1" / "cohort.csv").unlink()
    regenerated = generate_demo_data(root, SMALL)
    assert regenerated.site("site-1").cohort_csv.is_file()


def test_default_data_size(tmp_path: Path) -> None:
    data = generate_demo_data(tmp_path / "data")
    assert [(s.cases, s.positives) for s in data.sites] == [(56, 28), (56, 28)]


@pytest.mark.parametrize(
    "kwargs",
    [{"sites": ()}, {"sites": ("a", "a")}, {"sites": ("../x",)}, {"cases_per_site": 2}, {"shape": (4, 4, 4)}],
)
def test_bad_specs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="DemoDataSpec"):
        DemoDataSpec(**kwargs)
