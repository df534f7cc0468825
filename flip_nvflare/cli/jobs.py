"""``flip-nvflare job create ...`` and ``flip-nvflare check-app ...``.

Examples::

    flip-nvflare check-app --type standard my_app/
    flip-nvflare job create --type standard --app my_app/ --job jobs/my_job --dev-data data/
    flip-nvflare check-app jobs/my_job            # a job folder: its app, and min_clients against its sites
    flip-nvflare job create --type standard --app my_app/ --job jobs/gpu_job --dev-data data/ --gpus 1 --gpu-mem 16
    flip-nvflare job create --type standard --style client_api --app my_scripts/ --job jobs/my_job --dev-data data/
    nvflare simulator jobs/my_job -w /tmp/ws -n 2 -t 2
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from flip_nvflare.constants import FlipMode, JobType
from flip_nvflare.errors import FlipError
from flip_nvflare.jobs.check import app_defaults, check_app, check_job, format_problems, is_job_dir
from flip_nvflare.jobs.create import JobRequest, build_job
from flip_nvflare.jobs.resources import MAX_GPUS_PER_SITE, MAX_MEM_PER_GPU_GIB
from flip_nvflare.jobs.templates import STYLES

_TYPES = [t.value for t in JobType]


def gpu_count(text: str) -> int:
    """``--gpus``: an integer from 1 to MAX_GPUS_PER_SITE (``1.5``, ``0``, ``-1`` and ``true`` are refused)."""
    try:
        value = int(text.strip(), 10)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_GPUS_PER_SITE:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_GPUS_PER_SITE}, not {text!r}")
    return value


def gpu_memory(text: str) -> float:
    """``--gpu-mem``: GiB per GPU, a number above 0 and at most MAX_MEM_PER_GPU_GIB (an integer stays one)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_MEM_PER_GPU_GIB):
        raise argparse.ArgumentTypeError(
            f"must be a number of GiB above 0 and at most {MAX_MEM_PER_GPU_GIB}, not {text!r}"
        )
    return int(value) if value.is_integer() else value


def check_app_main(argv: Sequence[str]) -> int:
    """Run ``flip-nvflare check-app``; exit code 0 if the app is valid, 1 if not, 2 on usage errors.

    Given a job folder, it checks the job's app and warns when the job's ``min_clients`` is below
    the number of sites that take part (warnings do not change the exit code).
    """
    parser = argparse.ArgumentParser(
        prog="flip-nvflare check-app",
        description="Check a FLIP app folder for every file, class, function and config.json key its job type needs; "
        "or a job folder: its app, and its min_clients against the sites that take part.",
    )
    parser.add_argument(
        "--type", choices=_TYPES, help="the job type the app is for (required for an app folder; a job's is read)"
    )
    parser.add_argument(
        "--checkpoints", type=Path, help="evaluation: folder holding the checkpoints (default: the app folder)"
    )
    parser.add_argument(
        "--sites", type=int, help="job folder: how many sites will run it (default: participating_clients or dev data)"
    )
    parser.add_argument(
        "--style", choices=STYLES, default="executor", help="the app's style: executor (default) or client_api"
    )
    parser.add_argument("app", type=Path, help="the app folder (what becomes a job's custom/ folder), or a job folder")
    args = parser.parse_args(list(argv))
    if is_job_dir(args.app):
        return _check_job(args.app, args.type, args.sites)
    if args.type is None:
        parser.error(f"--type is required: {args.app} is not a job folder (no meta.conf and app/config/)")
    if args.sites is not None:
        parser.error("--sites applies to a job folder")
    try:
        problems = check_app(args.app, args.type, checkpoints_dir=args.checkpoints, style=args.style)
    except FlipError as exc:
        print(f"check-app: {exc}", file=sys.stderr)
        return 2
    report = format_problems(args.app, args.type, problems)
    print(report, file=sys.stderr if problems else sys.stdout)
    for note in app_defaults(args.app, args.type) if not problems else []:
        print(f"  note: {note}")
    return 1 if problems else 0


def _check_job(job_dir: Path, job_type: str | None, sites: int | None) -> int:
    if sites is not None and sites < 1:
        print("check-app: --sites must be at least 1.", file=sys.stderr)
        return 2
    try:
        result = check_job(job_dir, job_type, sites=sites)
    except FlipError as exc:
        print(f"check-app: {exc}", file=sys.stderr)
        return 2
    report = format_problems(result.app_dir, result.job_type, result.problems)
    print(f"job {job_dir}: " + report, file=sys.stderr if result.problems else sys.stdout)
    if result.min_clients is not None:
        where = f"; sites: {len(result.sites)}" if result.sites else ""
        print(f"  min_clients {result.min_clients}{where}")
    for note in result.notes:
        print(f"  note: {note}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 1 if result.problems else 0


def job_main(argv: Sequence[str]) -> int:
    """Run ``flip-nvflare job ...`` (sub-command ``create``)."""
    parser = argparse.ArgumentParser(prog="flip-nvflare job", description="Build NVFlare jobs from FLIP templates.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    create = sub.add_parser(
        "create",
        help="create a job folder from a FLIP template and a FLIP app",
        description="Create an NVFlare job folder from a FLIP template and a FLIP app (the app is checked first).",
    )
    create.add_argument("--type", required=True, choices=_TYPES, help="the job type (template)")
    create.add_argument("--app", required=True, type=Path, help="the FLIP app folder (becomes custom/)")
    create.add_argument("--job", required=True, type=Path, help="the job folder to create")
    create.add_argument(
        "--mode", choices=[m.value for m in FlipMode], default=FlipMode.DEV.value, help="flip_mode (default: dev)"
    )
    create.add_argument(
        "--dev-data",
        type=Path,
        help="dev mode: folder with <site>/cohort.csv and <site>/images/<accession_id>/ for each site",
    )
    create.add_argument(
        "--checkpoints", type=Path, help="evaluation: server folder holding the checkpoints (default: the app folder)"
    )
    create.add_argument("--model-id", help="the model's id on the hub (a UUID)")
    create.add_argument("--project-id", help="the project's encrypted id (client config)")
    create.add_argument("--query", help="the cohort query (client config)")
    create.add_argument(
        "--min-clients",
        type=int,
        help="clients needed to run (default: one per --dev-data site folder, else 2; prod: the hub sets it)",
    )
    create.add_argument(
        "--gpus",
        type=gpu_count,
        metavar="N",
        help="GPUs each site must give the job: NVFlare's resource_spec in meta.conf (default: the app's "
        "config.json RESOURCE_SPEC, else none)",
    )
    create.add_argument(
        "--gpu-mem",
        type=gpu_memory,
        metavar="GiB",
        help="memory each of those GPUs must have, in GiB (needs --gpus and the sites named by --dev-data)",
    )
    create.add_argument(
        "--style",
        choices=STYLES,
        default="executor",
        help="the app's style: executor (FLIP_TRAINER... classes, default) or client_api (NVFlare Client API "
        "scripts trainer.py / evaluator.py; the *_client_api templates the recipes export)",
    )
    create.add_argument("--force", action="store_true", help="replace an existing job folder")
    args = parser.parse_args(list(argv))
    if args.gpu_mem is not None and args.gpus is None:
        create.error("--gpu-mem needs --gpus (the number of GPUs per site)")

    request = JobRequest(
        job_type=JobType(args.type),
        app_dir=args.app,
        job_dir=args.job,
        mode=FlipMode(args.mode),
        dev_data=args.dev_data,
        checkpoints_dir=args.checkpoints,
        model_id=args.model_id,
        project_id=args.project_id,
        query=args.query,
        min_clients=args.min_clients,
        force=args.force,
        gpus=args.gpus,
        gpu_mem=args.gpu_mem,
        style=args.style,
    )
    try:
        created = build_job(request)
    except FlipError as exc:
        print(f"job create: {exc}", file=sys.stderr)
        return 1
    job_dir = created.job_dir
    style = " Client API" if args.style == "client_api" else ""
    print(f"Created {args.type}{style} job {job_dir} (flip_mode {args.mode}).")
    for note in created.notes:
        print(f"  {note}")
    for warning in created.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    clients = len(created.sites) if created.sites else created.min_clients
    print(f"Run it in the simulator: nvflare simulator {job_dir} -w /tmp/flip-workspace -n {clients} -t {clients}")
    return 0
