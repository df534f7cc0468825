"""``flip-nvflare job create ...`` and ``flip-nvflare check-app ...``.

Examples::

    flip-nvflare check-app --type standard my_app/
    flip-nvflare job create --type standard --app my_app/ --job jobs/my_job --dev-data data/
    flip-nvflare check-app jobs/my_job            # a job folder: its app, and min_clients against its sites
    nvflare simulator jobs/my_job -w /tmp/ws -n 2 -t 2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from flip_nvflare.constants import FlipMode, JobType
from flip_nvflare.errors import FlipError
from flip_nvflare.jobs.check import app_defaults, check_app, check_job, format_problems, is_job_dir
from flip_nvflare.jobs.create import JobRequest, build_job

_TYPES = [t.value for t in JobType]


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
    parser.add_argument("app", type=Path, help="the app folder (what becomes a job's custom/ folder), or a job folder")
    args = parser.parse_args(list(argv))
    if is_job_dir(args.app):
        return _check_job(args.app, args.type, args.sites)
    if args.type is None:
        parser.error(f"--type is required: {args.app} is not a job folder (no meta.conf and app/config/)")
    if args.sites is not None:
        parser.error("--sites applies to a job folder")
    try:
        problems = check_app(args.app, args.type, checkpoints_dir=args.checkpoints)
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
    create.add_argument("--force", action="store_true", help="replace an existing job folder")
    args = parser.parse_args(list(argv))

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
    )
    try:
        created = build_job(request)
    except FlipError as exc:
        print(f"job create: {exc}", file=sys.stderr)
        return 1
    job_dir = created.job_dir
    print(f"Created {args.type} job {job_dir} (flip_mode {args.mode}).")
    for note in created.notes:
        print(f"  {note}")
    for warning in created.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    clients = len(created.sites) if created.sites else created.min_clients
    print(f"Run it in the simulator: nvflare simulator {job_dir} -w /tmp/flip-workspace -n {clients} -t {clients}")
    return 0
