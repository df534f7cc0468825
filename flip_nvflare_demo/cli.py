"""``flip-nvflare demo``: train the bundled FLIP app on synthetic data in NVFlare's simulator, then report.

Dev mode (the default) runs the ``flip_standard`` job with the dev backend: the "hub" is a ledger
of files in the server's run folder. ``--prod`` runs the same job in prod mode against the FLIP
services emulator and moto's S3 server, both started for the run, and reports from what the
emulated hub recorded and the zip in the bucket. ``--tracking mlflow`` (dev mode) also tracks the
run in MLflow (a local SQLite store under the working folder unless ``MLFLOW_TRACKING_URI`` is set)
and ends by printing the ``mlflow ui`` command to look at it (:mod:`flip_nvflare_demo.tracking`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from flip_nvflare.constants import FlipMode, JobType
from flip_nvflare.jobs.templates import STYLES
from flip_nvflare_demo.data import MAX_SITES

#: ``--tracking`` choices (flip_nvflare_demo.tracking.CHOICES, without importing it for --help).
TRACKING_CHOICES = ("mlflow",)

if TYPE_CHECKING:
    from flip_nvflare_demo.report import RunRecord

#: The model id the demo's job reports under (any UUID does in dev mode).
DEMO_MODEL_ID = "d3e0f11b-2c4a-4d5e-9f60-7a8b9c0d1e2f"
DEFAULT_WORKDIR = Path(".work") / "demo"
#: Sites the demo runs by default (``--sites`` takes MIN_SITES to data.MAX_SITES).
SITES = 2
MIN_SITES = 2
#: Seconds a run may take before it is stopped: a base, plus this much per site beyond two.
BASE_TIMEOUT = 600.0
TIMEOUT_PER_EXTRA_SITE = 60.0


def site_count(text: str) -> int:
    """``--sites``: an integer from :data:`MIN_SITES` to ``MAX_SITES`` (a clear error naming the limits otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not MIN_SITES <= value <= MAX_SITES:
        raise argparse.ArgumentTypeError(
            f"the demo runs {MIN_SITES} to {MAX_SITES} sites (its data generator's limit), not {text!r}"
        )
    return value


def default_timeout(sites: int) -> float:
    """Seconds the demo waits for a run of ``sites`` sites before stopping it."""
    return BASE_TIMEOUT + TIMEOUT_PER_EXTRA_SITE * max(0, sites - SITES)


def app_dir() -> Path:
    """The bundled demo app (what ``--app`` gets in ``flip-nvflare job create``)."""
    return Path(__file__).resolve().parent / "app"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; exit code 0 when the run succeeded and the model learned."""
    parser = argparse.ArgumentParser(
        prog="flip-nvflare demo",
        description="Train the bundled FLIP app (a small 3-D CNN) on synthetic NIfTI data with 2 sites (or --sites N) "
        "in NVFlare's simulator, then print what the hub received.",
    )
    parser.add_argument(
        "--prod", action="store_true", help="run in prod mode against the FLIP services emulator and moto S3"
    )
    parser.add_argument(
        "--sites",
        type=site_count,
        default=SITES,
        metavar="N",
        help=f"dev mode: how many sites train, {MIN_SITES} to {MAX_SITES} (default {SITES})",
    )
    parser.add_argument(
        "--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"working folder (default {DEFAULT_WORKDIR})"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help=f"seconds before the run is stopped (default {BASE_TIMEOUT:.0f}, plus {TIMEOUT_PER_EXTRA_SITE:.0f} "
        f"per site beyond {SITES})",
    )
    parser.add_argument(
        "--tracking",
        choices=TRACKING_CHOICES,
        default=None,
        help="dev mode: also track the run in MLflow (a local SQLite store under the working folder, or "
        "MLFLOW_TRACKING_URI if set) and print the `mlflow ui` command at the end",
    )
    parser.add_argument(
        "--style",
        choices=STYLES,
        default="executor",
        help="the app's style: executor (FLIP_TRAINER classes, the flip_standard template; default) or client_api "
        "(a Client API script, the job built by FlipFedAvgRecipe as FLIP's tutorials build theirs; dev mode)",
    )
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.prod and args.style != "executor":
        parser.error("--style client_api applies to the dev demo")
    if args.prod and args.sites != SITES:
        parser.error(f"--sites applies to the dev demo; --prod runs {SITES} sites served by one emulated trust")
    if args.tracking is not None:
        from flip_nvflare_demo.tracking import mlflow_missing

        if args.prod:
            parser.error("--tracking applies to the dev demo")
        missing = mlflow_missing()
        if missing:
            parser.error(missing)
    workdir: Path = args.workdir.resolve()
    timeout: float = args.timeout if args.timeout is not None else default_timeout(args.sites)
    try:
        if args.prod:
            from flip_nvflare_demo.prod import run_prod_demo

            return run_prod_demo(workdir, timeout=timeout)
        return run_dev_demo(workdir, timeout=timeout, sites=args.sites, tracking=args.tracking, style=args.style)
    except KeyboardInterrupt:
        print("\ndemo interrupted; every process it started was stopped.", file=sys.stderr)
        return 130


def run_dev_demo(
    workdir: Path,
    *,
    timeout: float | None = None,
    sites: int = SITES,
    tracking: str | None = None,
    style: str = "executor",
) -> int:
    """The dev-mode demo with ``sites`` sites: data, job, simulator, report. Returns the exit code.

    Args:
        workdir: The working folder.
        timeout: Seconds before the run is stopped (default: by the number of sites).
        sites: How many sites train.
        tracking: ``"mlflow"`` to track the run in MLflow too (see :mod:`flip_nvflare_demo.tracking`).
        style: ``"executor"`` (the FLIP_TRAINER app) or ``"client_api"`` (the Client API app and its recipe).
    """
    from flip_nvflare_demo.report import from_dev_ledger, render, with_plot
    from flip_nvflare_demo.simulate import run_simulation

    started = time.monotonic()
    job_dir, workspace = prepare_run(workdir, FlipMode.DEV, sites=sites, style=style)
    tracked = None
    if tracking == "mlflow":
        from flip_nvflare_demo.tracking import DemoTracking

        tracked = DemoTracking.for_workdir(workdir)
        tracked.add_to_job(job_dir)
        print(f"MLflow tracking: {tracked.shown_uri()} (MlflowTracker added to the job)")
    ledger = workspace / "server" / "simulate_job" / "flip_dev"
    progress = StatusPrinter(lambda: _dev_statuses(ledger), started)
    print(f"Running the simulator ({sites} sites); its log: {workspace.with_name(workspace.name + '.log')}")
    result = run_simulation(
        job_dir,
        workspace,
        n_clients=sites,
        threads=sites,
        timeout=timeout if timeout is not None else default_timeout(sites),
        on_poll=progress,
    )
    record = from_dev_ledger(result.server_run_dir / "flip_dev", DEMO_MODEL_ID)
    code = finish(record, result.return_code, result.log_tail(), time.monotonic() - started, with_plot(render, workdir))
    if tracked is not None:
        print()
        print("\n".join(tracked.describe(DEMO_MODEL_ID)))
    return code


def prepare_run(
    workdir: Path, mode: FlipMode, *, sites: int = SITES, style: str = "executor", **job_options: str
) -> tuple[Path, Path]:
    """Generate the data (reused when present) and build the job; return (job folder, fresh workspace).

    In dev mode ``job create`` takes the sites and ``min_clients`` from the data's site folders;
    in prod mode ``min_clients`` is ``sites``, as FLIP's hub would set it. With ``style="client_api"``
    the job is the Client API app's recipe (``app_client_api/job.py``), exported.
    """
    from flip_nvflare.jobs.create import JobRequest, build_job
    from flip_nvflare_demo.data import DemoDataSpec, generate_demo_data, simulator_sites

    workdir.mkdir(parents=True, exist_ok=True)
    data = generate_demo_data(workdir / "data", DemoDataSpec(sites=simulator_sites(sites)))
    counts = {s.cases for s in data.sites}
    shown = (
        f"{len(data.sites)} sites, {counts.pop()} studies each"
        if len(data.sites) > 4 and len(counts) == 1
        else ", ".join(f"{s.site}: {s.cases} studies" for s in data.sites)
    )
    print(f"Demo data: {data.root} ({shown})")
    if style == "client_api":
        job_dir = _export_client_api_job(workdir, data.root, sites, mode, **job_options)
        print(
            f"Job: {job_dir} (exported by FlipFedAvgRecipe from {client_api_dir() / 'job.py'}, flip_mode {mode.value})"
        )
        return job_dir, _fresh_workspace(workdir)
    created = build_job(
        JobRequest(
            job_type=JobType.STANDARD,
            app_dir=app_dir(),
            job_dir=workdir / "job",
            mode=mode,
            dev_data=data.root if mode is FlipMode.DEV else None,
            model_id=job_options.get("model_id", DEMO_MODEL_ID),
            project_id=job_options.get("project_id"),
            query=job_options.get("query"),
            min_clients=None if mode is FlipMode.DEV else sites,
            force=True,
        )
    )
    job_dir = created.job_dir
    print(f"Job: {job_dir} (from the flip_standard template, flip_mode {mode.value})")
    for note in created.notes:
        print(f"  {note}")
    for warning in created.warnings:
        print(f"  warning: {warning}")
    return job_dir, _fresh_workspace(workdir)


def client_api_dir() -> Path:
    """The bundled demo app in the Client API style (its scripts and ``job.py``)."""
    return Path(__file__).resolve().parent / "app_client_api"


def _export_client_api_job(workdir: Path, data_root: Path, sites: int, mode: FlipMode, **job_options: str) -> Path:
    """Build the Client API demo's recipe from its ``job.py`` (as a FLIP user runs it) and export the job."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("flip_demo_client_api_job", client_api_dir() / "job.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rounds = int(json.loads((app_dir() / "config.json").read_text())["GLOBAL_ROUNDS"])
    recipe = module.build(
        rounds,
        sites,
        dev_data=data_root if mode is FlipMode.DEV else None,
        flip_mode=mode.value,
        model_id=job_options.get("model_id", DEMO_MODEL_ID),
        **{k: v for k, v in job_options.items() if k in ("project_id", "query")},
    )
    export = workdir / "job"
    if export.exists():
        shutil.rmtree(export)
    recipe.export(export)
    return export / recipe.job.name


def _fresh_workspace(workdir: Path) -> Path:
    workspace = workdir / "workspace"
    if workspace.exists():
        shutil.rmtree(workspace)
    workspace.with_name(workspace.name + ".log").unlink(missing_ok=True)
    return workspace


class StatusPrinter:
    """Prints each new status as the run reaches it (called while the simulator runs)."""

    def __init__(self, read: Callable[[], list[str]], started: float) -> None:
        self._read = read
        self._started = started
        self._shown = 0

    def __call__(self) -> None:
        try:
            statuses = self._read()
        except Exception:  # progress display only: the report reads the record again at the end
            return
        for status in statuses[self._shown :]:
            print(f"  [{time.monotonic() - self._started:5.1f} s] hub status: {status}", flush=True)
        self._shown = max(self._shown, len(statuses))


def _dev_statuses(ledger: Path) -> list[str]:
    import json

    path = ledger / "status.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["status"] for line in path.read_text().splitlines() if line.strip()]


def finish(record: RunRecord, return_code: int, log_tail: str, seconds: float, render: Callable[..., str]) -> int:
    """Print the report and decide the exit code."""
    print()
    print(render(record, seconds=seconds))
    if return_code != 0:
        print(f"\ndemo FAILED: the simulator exited with {return_code}. End of its log:\n{log_tail}", file=sys.stderr)
        return 1
    if record.final_status != "RESULTS_UPLOADED":
        print(f"\ndemo FAILED: the final status is {record.final_status}, not RESULTS_UPLOADED.", file=sys.stderr)
        return 1
    if not record.learned():
        print("\ndemo FAILED: the model's accuracy did not rise above chance.", file=sys.stderr)
        return 1
    return 0
