"""``flip-nvflare job create ...`` and ``flip-nvflare check-app ...``.

Examples::

    flip-nvflare check-app --type standard my_app/
    flip-nvflare job create --type standard --app my_app/ --job jobs/my_job --dev-data data/
    nvflare simulator jobs/my_job -w /tmp/ws -n 2 -t 2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from flip_nvflare.constants import FlipMode, JobType
from flip_nvflare.errors import FlipError
from flip_nvflare.jobs.check import check_app, format_problems
from flip_nvflare.jobs.create import JobRequest, create_job

_TYPES = [t.value for t in JobType]


def check_app_main(argv: Sequence[str]) -> int:
    """Run ``flip-nvflare check-app``; exit code 0 if the app is valid, 1 if not, 2 on usage errors."""
    parser = argparse.ArgumentParser(
        prog="flip-nvflare check-app",
        description="Check a FLIP app folder for every file, class, function and config.json key its job type needs.",
    )
    parser.add_argument("--type", required=True, choices=_TYPES, help="the job type the app is for")
    parser.add_argument(
        "--checkpoints", type=Path, help="evaluation: folder holding the checkpoints (default: the app folder)"
    )
    parser.add_argument("app", type=Path, help="the app folder (what becomes the job's custom/ folder)")
    args = parser.parse_args(list(argv))
    try:
        problems = check_app(args.app, args.type, checkpoints_dir=args.checkpoints)
    except FlipError as exc:
        print(f"check-app: {exc}", file=sys.stderr)
        return 2
    report = format_problems(args.app, args.type, problems)
    print(report, file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


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
    create.add_argument("--min-clients", type=int, help="clients needed to run (default 2)")
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
        job_dir = create_job(request)
    except FlipError as exc:
        print(f"job create: {exc}", file=sys.stderr)
        return 1
    print(f"Created {args.type} job {job_dir} (flip_mode {args.mode}).")
    print(f"Run it in the simulator: nvflare simulator {job_dir} -w /tmp/flip-workspace -n 2 -t 2")
    return 0
