"""The dev job of the sites sweep (``bench_sites``) and of the many-sites simulator test.

:func:`make_sites_job` writes tiny dev data for ``site-1`` ... ``site-N`` (a few studies each, one
folder per accession) and builds a ``flip_standard`` job from the trivial app in ``sites_app/``
with ``flip-nvflare job create --dev-data`` (no manual edit: ``min_clients`` and the participating
sites come from the data's site folders). :func:`ledger_metrics` reads what reached the dev ledger.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent / "sites_app"
#: Studies per site in the dev data.
ROWS_PER_SITE = 4
#: The labels the trivial trainer reports once per round.
TRAIN_LABELS = ("train_loss", "cohort_rows")


@dataclass(frozen=True)
class SitesJob:
    """A job of the sweep: where it is and what ``job create`` decided."""

    job_dir: Path
    data_dir: Path
    sites: tuple[str, ...]
    rounds: int
    min_clients: int
    notes: tuple[str, ...]


def write_dev_data(root: Path, sites: int, rows: int = ROWS_PER_SITE) -> Path:
    """``root/site-K/cohort.csv`` and ``root/site-K/images/<accession>/`` for K = 1..``sites``."""
    for index in range(1, sites + 1):
        site = root / f"site-{index}"
        lines = ["accession_id,label"]
        for row in range(rows):
            accession = f"S{index:02d}-{row:03d}"
            folder = site / "images" / accession
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "image.txt").write_text(accession)
            lines.append(f"{accession},{row % 2}")
        (site / "cohort.csv").write_text("\n".join(lines) + "\n")
    return root


def make_sites_job(root: Path, sites: int, rounds: int = 3, probe: Path | None = None) -> SitesJob:
    """Dev data for ``sites`` sites and a job made from it by ``job create --dev-data``.

    Args:
        root: Folder for the data, the app copy and the job.
        sites: Number of sites (``site-1`` ...).
        rounds: Federated rounds (the app's ``GLOBAL_ROUNDS``).
        probe: If set, a ResourceProbe server component writing there is added to the job.
    """
    from flip_nvflare.constants import JobType
    from flip_nvflare.jobs.create import JobRequest, build_job

    data = write_dev_data(root / "data", sites)
    app = root / "app"
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    config = json.loads((app / "config.json").read_text())
    config["GLOBAL_ROUNDS"] = rounds
    (app / "config.json").write_text(json.dumps(config, indent=2))
    created = build_job(JobRequest(JobType.STANDARD, app, root / "job", dev_data=data, force=True))
    if probe is not None:
        server_path = created.job_dir / "app" / "config" / "config_fed_server.json"
        server = json.loads(server_path.read_text())
        server["components"].append(
            {"id": "resource_probe", "path": "resource_probe.ResourceProbe", "args": {"path": str(probe)}}
        )
        server_path.write_text(json.dumps(server, indent=2))
    return SitesJob(
        created.job_dir, data, created.sites or (), rounds, created.min_clients, created.notes + created.warnings
    )


def ledger_metrics(server_run_dir: Path) -> list[dict[str, Any]]:
    """Every metric record of the run's dev ledger (``<server run dir>/flip_dev/metrics.jsonl``)."""
    path = server_run_dir / "flip_dev" / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def missing_train_metrics(records: list[dict[str, Any]], sites: tuple[str, ...], rounds: int) -> list[str]:
    """``site/round/label`` of every train metric the ledger should hold and does not."""
    have = {(r.get("fl_client_name"), r.get("global_round"), r.get("label")) for r in records}
    return [
        f"{site}/{round_}/{label}"
        for site in sites
        for round_ in range(rounds)
        for label in TRAIN_LABELS
        if (site, round_, label) not in have
    ]
