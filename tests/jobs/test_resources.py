"""GPU requests: the resource_spec written into a job's meta file, as NVFlare reads and enforces it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from nvflare.app_common.resource_managers.gpu_resource_manager import GPUResourceManager
from nvflare.private.fed.server.job_meta_validator import JobMetaValidator
from nvflare.utils.job_launcher_utils import get_resource_manager_spec

from flip_nvflare.cli.jobs import job_main
from flip_nvflare.constants import FlipMode, JobType
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.jobs.create import FlipJobError, JobRequest, build_job
from flip_nvflare.jobs.resources import (
    MAX_GPUS_PER_SITE,
    MAX_MEM_PER_GPU_GIB,
    GpuRequest,
    app_gpu_request,
    check_gpu_request,
    gpu_resource_spec,
)
from flip_nvflare_demo.cli import app_dir
from flip_nvflare_demo.simulate import run_simulation
from tests.support.simjob import (
    client_config,
    flip_backend,
    numpy_model_components,
    scatter_and_gather,
    server_config,
    write_job,
)

SITES = ["site-1", "site-2"]


def _validated(spec: dict[str, Any]) -> None:
    """NVFlare's own check of a job's resource_spec (what submission and the simulator run)."""
    JobMetaValidator._validate_resource("job", {"resource_spec": spec})


def test_one_flat_entry_per_site() -> None:
    spec = gpu_resource_spec(SITES, 2, 16)
    assert spec == {site: {"num_of_gpus": 2, "mem_per_gpu_in_GiB": 16} for site in SITES}
    assert gpu_resource_spec(("site-1",), 1) == {"site-1": {"num_of_gpus": 1}}
    assert gpu_resource_spec(SITES, 1, 7.5)["site-2"] == {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 7.5}
    _validated(spec)


def test_without_sites_nvflares_wildcard_is_written_and_memory_is_refused() -> None:
    spec = gpu_resource_spec(None, 3)
    assert spec == {"@default": {"num_of_gpus": 3}} == gpu_resource_spec([], 3)
    _validated(spec)
    assert get_resource_manager_spec({"resource_spec": spec}, "any-site") == {"num_of_gpus": 3}
    with pytest.raises(FlipConfigError, match="needs the sites named"):
        gpu_resource_spec(None, 1, 8)
    with pytest.raises(ValueError, match="unsupported"):  # why: NVFlare refuses the memory there
        _validated({"@default": {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 8}})


@pytest.mark.parametrize("gpus", [0, -1, True, False, 1.0, 1.5, "1", None, MAX_GPUS_PER_SITE + 1])
def test_the_gpu_count_must_be_a_positive_integer(gpus: Any) -> None:
    with pytest.raises(FlipConfigError, match="number of GPUs"):
        gpu_resource_spec(SITES, gpus)


@pytest.mark.parametrize("gpu_mem", [0, -1, True, "8", float("nan"), float("inf"), MAX_MEM_PER_GPU_GIB + 1])
def test_the_memory_must_be_a_positive_number(gpu_mem: Any) -> None:
    with pytest.raises(FlipConfigError, match="memory per GPU"):
        check_gpu_request(1, gpu_mem)


@pytest.mark.parametrize("sites", [["site-1", "site-1"], ["site-1", ""], ["@default"], [3]])
def test_site_names_are_checked(sites: Any) -> None:
    with pytest.raises(FlipConfigError, match="Site names"):
        gpu_resource_spec(sites, 1)


def test_each_sites_resource_manager_reads_the_entry_and_holds_the_job_until_enough_gpus_are_free() -> None:
    spec = gpu_resource_spec(SITES, 2, 16)
    request = get_resource_manager_spec({"resource_spec": spec}, "site-1")
    assert request == {"num_of_gpus": 2, "mem_per_gpu_in_GiB": 16}
    assert get_resource_manager_spec({"resource_spec": spec}, "site-9") == {}  # a site not named asks nothing
    big = GPUResourceManager(num_of_gpus=2, mem_per_gpu_in_GiB=24, ignore_host=True)
    small = GPUResourceManager(num_of_gpus=2, mem_per_gpu_in_GiB=8, ignore_host=True)
    one = GPUResourceManager(num_of_gpus=1, mem_per_gpu_in_GiB=80, ignore_host=True)
    assert big._check_required_resource_available(request)
    assert not small._check_required_resource_available(request)  # too little memory per GPU
    assert not one._check_required_resource_available(request)  # too few GPUs


def test_flips_config_json_resource_spec() -> None:
    assert app_gpu_request({}) is None
    assert app_gpu_request({"RESOURCE_SPEC": {"num_of_gpus": 0}}) is None
    assert app_gpu_request({"RESOURCE_SPEC": {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 7}}) == GpuRequest(1, 7)
    assert app_gpu_request({"RESOURCE_SPEC": {"num_of_gpus": 2, "mem_per_gpu_in_GiB": 0}}) == GpuRequest(2, None)
    for bad in (
        [1],
        {"mem_per_gpu_in_GiB": 7},
        {"num_of_gpus": 1, "gpus": 1},
        {"num_of_gpus": 1.0},
        {"num_of_gpus": 9},
        {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 7.5},
    ):
        with pytest.raises(FlipConfigError, match="RESOURCE_SPEC"):
            app_gpu_request({"RESOURCE_SPEC": bad})


# ---------------------------------------------------------------------- job create


@pytest.fixture
def app(tmp_path: Path) -> Path:
    target = tmp_path / "app"
    shutil.copytree(app_dir(), target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture
def dev_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for site in SITES:
        (root / site / "images").mkdir(parents=True)
        (root / site / "cohort.csv").write_text("accession_id,label\n")
    return root


def _meta(job: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((job / "meta.conf").read_text())
    return data


def test_job_create_gpus_writes_the_spec_into_the_meta_file(
    app: Path, dev_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "job"
    args = ["create", "--type", "standard", "--app", str(app), "--job", str(job), "--dev-data", str(dev_data)]
    assert job_main([*args, "--gpus", "2", "--gpu-mem", "16"]) == 0
    assert _meta(job)["resource_spec"] == {s: {"num_of_gpus": 2, "mem_per_gpu_in_GiB": 16} for s in SITES}
    out = capsys.readouterr().out
    assert "resource_spec: 2 GPU(s) with >= 16 GiB each at each of site-1, site-2 (from --gpus)" in out
    _validated(_meta(job)["resource_spec"])

    assert job_main([*args, "--force"]) == 0
    assert _meta(job)["resource_spec"] == {}  # no request: the template's empty spec


@pytest.mark.parametrize("bad", [["--gpus", "0"], ["--gpus", "-1"], ["--gpus", "1.5"], ["--gpus", "x"],
                                 ["--gpus", "1", "--gpu-mem", "0"], ["--gpus", "1", "--gpu-mem", "-2"],
                                 ["--gpus", "1", "--gpu-mem", "nan"], ["--gpu-mem", "8"]])  # fmt: skip
def test_job_create_refuses_bad_gpu_options(app: Path, tmp_path: Path, bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        job_main(["create", "--type", "standard", "--app", str(app), "--job", str(tmp_path / "job"), *bad])
    assert exit_info.value.code == 2
    assert not (tmp_path / "job").exists()


def test_the_apps_resource_spec_is_used_and_the_option_wins(app: Path, dev_data: Path, tmp_path: Path) -> None:
    config = json.loads((app / "config.json").read_text())
    config["RESOURCE_SPEC"] = {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 7}
    (app / "config.json").write_text(json.dumps(config))
    created = build_job(JobRequest(JobType.STANDARD, app, tmp_path / "a", dev_data=dev_data))
    assert created.resource_spec == {s: {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 7} for s in SITES}
    assert any("(from config.json RESOURCE_SPEC)" in note for note in created.notes)
    created = build_job(JobRequest(JobType.STANDARD, app, tmp_path / "b", dev_data=dev_data, gpus=4))
    assert _meta(created.job_dir)["resource_spec"] == {s: {"num_of_gpus": 4} for s in SITES}

    prod = build_job(JobRequest(JobType.STANDARD, app, tmp_path / "c", mode=FlipMode.PROD, gpus=1))
    assert prod.resource_spec == {"@default": {"num_of_gpus": 1}}
    assert any("FLIP's hub writes resource_spec itself" in note for note in prod.notes)
    with pytest.raises(FlipJobError, match="needs the sites named"):
        build_job(JobRequest(JobType.STANDARD, app, tmp_path / "d", mode=FlipMode.PROD, gpus=1, gpu_mem=8))
    assert not (tmp_path / "d").exists()

    config["RESOURCE_SPEC"] = {"num_of_gpus": "1"}
    (app / "config.json").write_text(json.dumps(config))
    with pytest.raises(FlipJobError, match="RESOURCE_SPEC num_of_gpus"):
        build_job(JobRequest(JobType.STANDARD, app, tmp_path / "e", dev_data=dev_data))


# ---------------------------------------------------------------------- the simulator


def _numpy_job(job_dir: Path, resource_spec: dict[str, Any]) -> Path:
    """A one-round NumPy job in dev mode whose meta asks for GPUs."""
    server = server_config(
        "dev",
        rounds=1,
        components=[flip_backend(mode="dev", model_id="{model_id}"), *numpy_model_components("WEIGHTS")],
        workflows=[scatter_and_gather(aggregator_id="aggregator", shareable_generator_id="shareable_generator")],
        model_id="6b0f2d4e-1c3a-4e5f-8a7b-9c0d1e2f3a4b",
    )
    trainer = {"tasks": ["train"], "executor": {"path": "nvflare.app_common.np.np_trainer.NPTrainer", "args": {}}}
    write_job(job_dir, name="gpu-job", server=server, client=client_config("dev", executors=[trainer], components=[]))
    meta = json.loads((job_dir / "meta.json").read_text())
    meta["resource_spec"] = resource_spec
    (job_dir / "meta.json").write_text(json.dumps(meta))
    return job_dir


@pytest.mark.e2e
def test_a_simulator_job_with_the_spec_runs_and_one_nvflare_refuses_does_not(tmp_path: Path) -> None:
    """The simulator validates resource_spec as a submission does, then runs without scheduling by it."""
    good = _numpy_job(tmp_path / "good", gpu_resource_spec(SITES, 8, 192))  # more than this machine has
    result = run_simulation(good, tmp_path / "ws-good", n_clients=2, threads=2, timeout=120)
    assert result.ok, result.log_tail()
    deployed = json.loads((result.workspace / "site-1" / "simulate_job" / "meta.json").read_text())
    assert deployed["resource_spec"] == gpu_resource_spec(SITES, 8, 192)

    bad = _numpy_job(tmp_path / "bad", {"@default": {"num_of_gpus": 1, "mem_per_gpu_in_GiB": 8}})
    refused = run_simulation(bad, tmp_path / "ws-bad", n_clients=2, threads=2, timeout=120)
    assert not refused.ok
    assert "mem_per_gpu_in_GiB" in refused.log_tail(200)
