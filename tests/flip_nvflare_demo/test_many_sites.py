"""The demo's data generator and ``--sites``: every N from 2 to 32 generates, with a clear error outside."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flip_nvflare_demo.cli import default_timeout, main, site_count
from flip_nvflare_demo.data import (
    MAX_SITES,
    SITE_VARIANTS,
    DemoDataSpec,
    blob_sigma,
    generate_demo_data,
    make_volume,
    simulator_sites,
)


def test_every_site_up_to_the_limit_gets_a_blob_that_fits_the_default_volume() -> None:
    spec = DemoDataSpec(sites=simulator_sites(MAX_SITES))
    for index in range(MAX_SITES):
        volume = make_volume(np.random.default_rng(index), spec, index, positive=True)
        assert volume.shape == spec.shape and np.isfinite(volume).all()


def test_site_differences_repeat_so_the_first_sites_are_unchanged() -> None:
    spec = DemoDataSpec()
    assert [blob_sigma(spec, i) for i in range(3)] == [2.0, 2.2, 2.4]  # as before: 10 % wider per site
    assert blob_sigma(spec, SITE_VARIANTS) == blob_sigma(spec, 0)
    assert max(blob_sigma(spec, i) for i in range(MAX_SITES)) == pytest.approx(2.0 * 1.7)


def test_the_limits_are_named() -> None:
    assert simulator_sites(3) == ("site-1", "site-2", "site-3")
    with pytest.raises(ValueError, match=r"1 to 32 sites \(MAX_SITES\), not 33"):
        simulator_sites(33)
    with pytest.raises(ValueError, match=r"names 33 sites; the demo data supports 1 to 32"):
        DemoDataSpec(sites=tuple(f"s{i}" for i in range(33)))
    with pytest.raises(ValueError, match=r"too small for the blob of site site-8 \(sigma 3.4 voxels needs at least 16"):
        DemoDataSpec(sites=simulator_sites(8), shape=(12, 12, 12))


def test_regenerating_for_fewer_sites_removes_the_others(tmp_path: Path) -> None:
    root = tmp_path / "data"
    small = {"cases_per_site": 4, "shape": (16, 16, 16)}
    generate_demo_data(root, DemoDataSpec(sites=simulator_sites(4), **small))
    (root / "mine").mkdir()  # not the generator's: kept
    data = generate_demo_data(root, DemoDataSpec(sites=simulator_sites(2), **small))
    assert [s.site for s in data.sites] == ["site-1", "site-2"]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["mine", "site-1", "site-2"]


@pytest.mark.parametrize("argv", [["--sites", "1"], ["--sites", "33"], ["--sites", "many"]])
def test_sites_outside_the_range_are_refused_naming_it(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "the demo runs 2 to 32 sites (its data generator's limit)" in capsys.readouterr().err


def test_sites_is_a_dev_demo_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--prod", "--sites", "4"])
    assert "--sites applies to the dev demo" in capsys.readouterr().err
    assert site_count("32") == 32
    assert default_timeout(2) == 600 and default_timeout(8) == 960
