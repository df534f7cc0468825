"""Deterministic synthetic imaging data for the demo: small NIfTI volumes with a label a CNN can learn.

Each site gets a cohort of small 3-D volumes of noise; in about half of them a bright, blurred blob
sits somewhere inside the volume, and the cohort's ``label`` says whether it does. A small CNN
learns to find the blob within a few federated rounds. The sites differ a little (intensity
offset and scale, blob size), as real hospitals' scanners do; those differences repeat every
:data:`SITE_VARIANTS` sites, so the blob always fits the volume and any number of sites from 1 to
:data:`MAX_SITES` generates.

Layout written under ``root`` (the dev-data layout ``flip-nvflare job create --dev-data`` expects)::

    root/
      demo_data.json                 what was generated (spec + per-site counts)
      site-1/
        cohort.csv                   accession_id, person_id, label, ... (one row per study)
        images/<accession_id>/scans/1/resources/NIFTI/files/image.nii.gz
      site-2/
        ...

The image folders follow XNAT's layout, as the imaging-api delivers them in production, so the
same app code finds the images in dev and prod mode. Nothing is generated at import time.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Name of the file describing a generated data folder.
MANIFEST_NAME = "demo_data.json"
#: Name of a site's cohort file.
COHORT_NAME = "cohort.csv"
#: Name of a site's images folder (one sub-folder per accession).
IMAGES_NAME = "images"
#: Where an accession's NIfTI lives inside its folder (XNAT layout).
NIFTI_RELATIVE_PATH = Path("scans") / "1" / "resources" / "NIFTI" / "files" / "image.nii.gz"
#: Cohort CSV columns, in order.
COHORT_COLUMNS = ("accession_id", "person_id", "label", "year_of_birth", "gender", "study_date", "modality")
_FORMAT_VERSION = 1
#: Most sites a data set may have (the demo's ``--sites`` accepts 2 to this).
MAX_SITES = 32
#: Sites differ in intensity and blob width in a cycle of this many (site 9 looks like site 1).
SITE_VARIANTS = 8


@dataclass(frozen=True)
class DemoDataSpec:
    """What to generate; the same spec always produces the same bytes.

    Attributes:
        sites: Site names (NVFlare client names), one data folder each.
        cases_per_site: Studies per site (about half of them positive).
        shape: Volume shape (x, y, z) in voxels.
        seed: Seed of the whole data set.
        blob_amplitude: Peak brightness of the blob, in units of the noise's standard deviation.
        blob_sigma: Width (standard deviation, voxels) of the blob at the first site.
    """

    sites: tuple[str, ...] = ("site-1", "site-2")
    cases_per_site: int = 56
    shape: tuple[int, int, int] = (24, 24, 24)
    seed: int = 1234
    blob_amplitude: float = 1.2
    blob_sigma: float = 2.0

    def __post_init__(self) -> None:
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ValueError("DemoDataSpec.sites must name at least one site, each once.")
        if len(self.sites) > MAX_SITES:
            raise ValueError(
                f"DemoDataSpec.sites names {len(self.sites)} sites; the demo data supports 1 to {MAX_SITES} "
                "(MAX_SITES)."
            )
        for site in self.sites:
            if not site or "/" in site or site in (".", ".."):
                raise ValueError(f"DemoDataSpec.sites: {site!r} is not a usable folder name.")
        if self.cases_per_site < 4:
            raise ValueError("DemoDataSpec.cases_per_site must be at least 4.")
        if len(self.shape) != 3 or min(self.shape) < 8:
            raise ValueError("DemoDataSpec.shape must be three sizes of at least 8 voxels.")
        if self.blob_sigma <= 0:
            raise ValueError("DemoDataSpec.blob_sigma must be > 0.")
        widest = max(range(len(self.sites)), key=lambda index: blob_sigma(self, index))
        margin = blob_margin(blob_sigma(self, widest))
        if min(self.shape) < 2 * margin + 2:
            raise ValueError(
                f"DemoDataSpec.shape {tuple(self.shape)} is too small for the blob of site {self.sites[widest]} "
                f"(sigma {blob_sigma(self, widest):.1f} voxels needs at least {2 * margin + 2} voxels per side); "
                "use a larger shape or a smaller blob_sigma."
            )


@dataclass(frozen=True)
class SiteData:
    """Where one site's generated data is.

    Attributes:
        site: The site (NVFlare client) name.
        cohort_csv: The site's cohort CSV.
        images_dir: The folder holding one sub-folder per accession.
        cases: Number of studies.
        positives: Number of studies with label 1.
    """

    site: str
    cohort_csv: Path
    images_dir: Path
    cases: int
    positives: int


@dataclass(frozen=True)
class DemoData:
    """A generated demo data folder.

    Attributes:
        root: The folder (pass it to ``job create --dev-data``).
        spec: What was generated.
        sites: Per-site paths and counts, in the spec's site order.
    """

    root: Path
    spec: DemoDataSpec
    sites: tuple[SiteData, ...] = field(default_factory=tuple)

    def site(self, name: str) -> SiteData:
        """The data of site ``name``.

        Raises:
            KeyError: No such site was generated.
        """
        for item in self.sites:
            if item.site == name:
                return item
        raise KeyError(f"No demo data for site {name!r}; generated sites: {[s.site for s in self.sites]}.")


def simulator_sites(count: int) -> tuple[str, ...]:
    """The names NVFlare's simulator gives ``count`` clients: ``site-1`` ... ``site-<count>``.

    Raises:
        ValueError: ``count`` is not in 1..:data:`MAX_SITES`.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SITES:
        raise ValueError(f"The demo data supports 1 to {MAX_SITES} sites (MAX_SITES), not {count!r}.")
    return tuple(f"site-{index}" for index in range(1, count + 1))


def site_cohort_csv(root: str | Path, site: str) -> Path:
    """The cohort CSV of ``site`` in a dev-data folder."""
    return Path(root) / site / COHORT_NAME


def site_images_dir(root: str | Path, site: str) -> Path:
    """The images folder (one sub-folder per accession) of ``site`` in a dev-data folder."""
    return Path(root) / site / IMAGES_NAME


def generate_demo_data(root: str | Path, spec: DemoDataSpec | None = None, *, force: bool = False) -> DemoData:
    """Generate the demo data under ``root``, or reuse it if the same spec is already there.

    Args:
        root: Folder to write into (created if needed).
        spec: What to generate (default: :class:`DemoDataSpec`).
        force: Regenerate even if ``root`` already holds data of the same spec.

    Returns:
        Where everything is.
    """
    spec = spec or DemoDataSpec()
    root = Path(root).resolve()
    manifest_path = root / MANIFEST_NAME
    existing = _read_manifest(manifest_path)
    if not force and existing is not None and existing.get("spec") == _spec_json(spec):
        sites = tuple(_site_from_manifest(root, item) for item in existing.get("sites", []))
        if len(sites) == len(spec.sites) and all(s.cohort_csv.is_file() for s in sites):
            return DemoData(root=root, spec=spec, sites=sites)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    _remove_stale_sites(root, existing, spec)
    sites = tuple(_generate_site(root, index, name, spec) for index, name in enumerate(spec.sites))
    manifest = {
        "format_version": _FORMAT_VERSION,
        "spec": _spec_json(spec),
        "sites": [{"site": s.site, "cases": s.cases, "positives": s.positives} for s in sites],
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return DemoData(root=root, spec=spec, sites=sites)


def make_volume(rng: np.random.Generator, spec: DemoDataSpec, site_index: int, positive: bool) -> np.ndarray:
    """One synthetic volume (float32): noise, plus a blob when ``positive``.

    Args:
        rng: The random generator (advanced by this call).
        spec: The data spec.
        site_index: Index of the site (changes intensity offset, scale and blob width a little).
        positive: Whether to add the blob.
    """
    variant = site_variant(site_index)
    offset = 0.3 * variant
    scale = 1.0 + 0.15 * variant
    volume = rng.normal(0.0, 1.0, size=spec.shape)
    if positive:
        sigma = blob_sigma(spec, site_index)
        margin = blob_margin(sigma)
        center = [rng.uniform(margin, size - 1 - margin) for size in spec.shape]
        axes = np.ogrid[tuple(slice(0, size) for size in spec.shape)]
        squared = sum((axis - c) ** 2 for axis, c in zip(axes, center, strict=True))
        volume = volume + spec.blob_amplitude * np.exp(-squared / (2 * sigma**2))
    return (scale * volume + offset).astype(np.float32)


def site_variant(site_index: int) -> int:
    """Which of the :data:`SITE_VARIANTS` intensity and blob-width variants site ``site_index`` gets."""
    return site_index % SITE_VARIANTS


def blob_sigma(spec: DemoDataSpec, site_index: int) -> float:
    """The blob width (standard deviation, voxels) at site ``site_index``: 10 % wider per variant."""
    return spec.blob_sigma * (1.0 + 0.1 * site_variant(site_index))


def blob_margin(sigma: float) -> int:
    """Voxels kept between a blob's centre and the volume's edge."""
    return int(np.ceil(2 * sigma))


def _generate_site(root: Path, site_index: int, site: str, spec: DemoDataSpec) -> SiteData:
    import nibabel as nib

    rng = np.random.default_rng([spec.seed, site_index])
    labels = np.array([i % 2 for i in range(spec.cases_per_site)])
    rng.shuffle(labels)
    site_dir = root / site
    images_dir = site_dir / IMAGES_NAME
    images_dir.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    rows: list[dict[str, Any]] = []
    for case, label in enumerate(labels.tolist()):
        accession_id = f"DEMO{site_index + 1}-{case + 1:04d}"
        volume = make_volume(rng, spec, site_index, positive=bool(label))
        path = images_dir / accession_id / NIFTI_RELATIVE_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(volume, affine), str(path))
        rows.append(
            {
                "accession_id": accession_id,
                "person_id": 1000 * (site_index + 1) + case + 1,
                "label": int(label),
                "year_of_birth": int(rng.integers(1940, 2000)),
                "gender": "F" if rng.random() < 0.5 else "M",
                "study_date": f"2023-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}",
                "modality": "MR",
            }
        )
    cohort_csv = site_dir / COHORT_NAME
    with open(cohort_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COHORT_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return SiteData(
        site=site,
        cohort_csv=cohort_csv,
        images_dir=images_dir,
        cases=len(rows),
        positives=int(labels.sum()),
    )


def _remove_stale_sites(root: Path, existing: dict[str, Any] | None, spec: DemoDataSpec) -> None:
    """Delete the site folders an earlier generation wrote here that ``spec`` no longer has.

    Only folders the previous ``demo_data.json`` lists are touched, so a dev-data folder made for
    8 sites and regenerated for 2 does not keep offering 6 sites to ``job create --dev-data``.
    """
    import shutil

    listed = existing.get("sites", []) if existing else []
    for item in listed if isinstance(listed, list) else []:
        site = item.get("site") if isinstance(item, dict) else None
        if not isinstance(site, str) or site in spec.sites or not site or "/" in site or site in (".", ".."):
            continue
        folder = root / site
        if folder.is_dir() and (folder / COHORT_NAME).is_file():
            shutil.rmtree(folder)


def _spec_json(spec: DemoDataSpec) -> dict[str, Any]:
    data = asdict(spec)
    data["sites"] = list(spec.sites)
    data["shape"] = list(spec.shape)
    return data


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format_version") != _FORMAT_VERSION:
        return None
    return data


def _site_from_manifest(root: Path, item: dict[str, Any]) -> SiteData:
    site = str(item["site"])
    return SiteData(
        site=site,
        cohort_csv=site_cohort_csv(root, site),
        images_dir=site_images_dir(root, site),
        cases=int(item["cases"]),
        positives=int(item["positives"]),
    )


def read_volume(path: str | Path) -> np.ndarray:
    """Read a NIfTI volume as float32 (used by the demo app and tests)."""
    import nibabel as nib

    image: Any = nib.load(str(path))
    return np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32)


def find_niftis(folder: str | Path) -> Sequence[Path]:
    """Every ``*.nii.gz`` / ``*.nii`` file under ``folder``, sorted."""
    base = Path(folder)
    return sorted([*base.rglob("*.nii.gz"), *base.rglob("*.nii")])
