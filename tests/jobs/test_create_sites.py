"""``job create`` takes min_clients and the participating sites from dev data; check-app warns about min_clients."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flip_nvflare.cli.jobs import check_app_main, job_main
from flip_nvflare.constants import FlipMode, JobType
from flip_nvflare.errors import FlipJobError
from flip_nvflare.jobs.check import check_job, dev_data_sites, min_clients_warning, name_sites
from flip_nvflare.jobs.create import JobRequest, build_job
from flip_nvflare_demo.cli import app_dir

WARNING = "each round aggregates only the first 2 results that arrive and the other sites' work is discarded"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    target = tmp_path / "app"
    shutil.copytree(app_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def dev_data(root: Path, sites: list[str]) -> Path:
    for site in sites:
        (root / site / "images").mkdir(parents=True)
        (root / site / "cohort.csv").write_text("accession_id,label\n")
    (root / "notes").mkdir()  # a folder without a cohort is not a site
    return root


def server_config(job: Path) -> dict:
    return json.loads((job / "app" / "config" / "config_fed_server.json").read_text())


def test_dev_sites_become_participants_and_min_clients(app: Path, tmp_path: Path) -> None:
    data = dev_data(tmp_path / "data", ["site-10", "site-2", "site-1", "site-3"])
    created = build_job(JobRequest(JobType.STANDARD, app, tmp_path / "job", dev_data=data))

    order = ["site-1", "site-2", "site-3", "site-10"]
    assert created.sites == tuple(order) and created.min_clients == 4 and created.warnings == ()
    server = server_config(created.job_dir)
    assert server["participating_clients"] == order and server["min_clients"] == 4
    sag = next(w for w in server["workflows"] if w["id"] == "scatter_and_gather")
    assert sag["args"]["min_clients"] == "{min_clients}"  # the workflows read the top-level key
    assert json.loads((created.job_dir / "meta.conf").read_text())["min_clients"] == 4
    (note,) = created.notes
    assert note.startswith("participating_clients: site-1, site-2, site-3, site-10 (from the 4 site folder(s) in ")
    assert "min_clients 4, one per site, so every site trains every round (--min-clients overrides it)" in note


def test_an_explicit_min_clients_overrides_and_is_warned_when_below_the_sites(app: Path, tmp_path: Path) -> None:
    data = dev_data(tmp_path / "data", ["site-1", "site-2", "site-3", "site-4"])
    created = build_job(JobRequest(JobType.STANDARD, app, tmp_path / "job", dev_data=data, min_clients=2))

    assert created.min_clients == 2 and server_config(created.job_dir)["min_clients"] == 2
    (warning,) = created.warnings
    assert warning.startswith("min_clients is 2 but 4 sites take part (site-1, site-2, site-3, site-4): " + WARNING)
    assert created.notes[0].endswith("min_clients 2 (from --min-clients).")

    with pytest.raises(FlipJobError, match=r"--min-clients 5 is more than the 4 site\(s\) in --dev-data"):
        build_job(JobRequest(JobType.STANDARD, app, tmp_path / "job5", dev_data=data, min_clients=5))


def test_the_command_says_what_it_decided_and_warns(
    app: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = dev_data(tmp_path / "data", ["site-1", "site-2", "site-3", "site-4"])
    base = ["create", "--type", "standard", "--app", str(app), "--dev-data", str(data)]

    assert job_main([*base, "--job", str(tmp_path / "all")]) == 0
    out, err = capsys.readouterr()
    assert "min_clients 4, one per site" in out and "-n 4 -t 4" in out and err == ""

    assert job_main([*base, "--job", str(tmp_path / "two"), "--min-clients", "2"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("warning: min_clients is 2 but 4 sites take part") and WARNING in err


def test_check_app_on_a_job_warns_about_min_clients(
    app: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = dev_data(tmp_path / "data", ["site-1", "site-2", "site-3", "site-4"])
    job = build_job(JobRequest(JobType.STANDARD, app, tmp_path / "job", dev_data=data, min_clients=2)).job_dir

    assert check_app_main([str(job)]) == 0  # a warning, not a problem
    out, err = capsys.readouterr()
    assert "a valid FLIP standard app" in out and "min_clients 2; sites: 4" in out
    assert err.startswith("warning: min_clients is 2 but 4 sites take part") and WARNING in err

    full = build_job(JobRequest(JobType.STANDARD, app, tmp_path / "full", dev_data=data)).job_dir
    assert check_app_main([str(full)]) == 0
    assert capsys.readouterr().err == ""


def test_check_app_on_a_prod_job_needs_the_site_count(
    app: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    created = build_job(JobRequest(JobType.FED_OPT, app, tmp_path / "job", mode=FlipMode.PROD))
    assert created.min_clients == 2 and created.sites is None and created.warnings == ()
    assert "In prod, FLIP's hub writes min_clients and participating_clients" in created.notes[0]
    assert server_config(created.job_dir)["participating_clients"] is None

    result = check_job(created.job_dir)
    assert result.job_type is JobType.FED_OPT and result.warnings == [] and result.problems == []
    assert "pass --sites N to check now" in result.notes[0]

    assert check_app_main(["--sites", "5", str(created.job_dir)]) == 0
    assert "warning: min_clients is 2 but 5 sites take part: each round" in capsys.readouterr().err


def test_check_job_reads_participants_and_evaluation_jobs(app: Path, tmp_path: Path) -> None:
    (app / "FL_global_model.pt").write_bytes(b"final")
    (app / "best_FL_global_model.pt").write_bytes(b"best")
    job = build_job(JobRequest(JobType.EVALUATION, app, tmp_path / "job", min_clients=1)).job_dir
    config = server_config(job)
    config["participating_clients"] = ["site-1", "site-2", "site-3"]
    (job / "app" / "config" / "config_fed_server.json").write_text(json.dumps(config))

    result = check_job(job)
    assert result.job_type is JobType.EVALUATION and result.problems == []  # checkpoints read on the server
    assert result.sites == ("site-1", "site-2", "site-3") and result.min_clients == 1
    (warning,) = result.warnings
    assert "the run goes on once 1 have prepared their data" in warning

    config["min_clients"] = 4
    (job / "app" / "config" / "config_fed_server.json").write_text(json.dumps(config))
    assert "the run can never start" in str(check_job(job).problems[0])


def test_check_app_needs_a_type_for_an_app_folder(app: Path) -> None:
    with pytest.raises(SystemExit) as info:
        check_app_main([str(app)])
    assert info.value.code == 2


def test_helpers() -> None:
    assert min_clients_warning(4, ["a", "b", "c", "d"]) is None
    assert min_clients_warning(0, 8) is None
    assert name_sites([f"site-{i}" for i in range(1, 12)]).endswith("site-8 and 3 more")


def test_dev_data_sites_in_natural_order(tmp_path: Path) -> None:
    dev_data(tmp_path, ["site-2", "site-10", "site-1"])
    assert dev_data_sites(tmp_path) == ("site-1", "site-2", "site-10")
    assert dev_data_sites(tmp_path / "nowhere") == ()
