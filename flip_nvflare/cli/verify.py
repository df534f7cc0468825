"""``flip-nvflare verify-results RESULTS.zip``: check a results zip against its provenance.json.

Every member is streamed through SHA-256 (nothing is extracted); the provenance is printed, then
each member that differs, is missing or was added, and any other problem (an edited provenance,
an unsafe member name such as ``../x``). Exit code 0: everything matches; 1: something does not;
2: the file cannot be checked (not a zip, no such file) or the arguments are wrong.

The checking itself is :func:`flip_nvflare.components.provenance.verify_results_zip`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flip_nvflare.components.provenance import (
    DEFAULT_MAX_BYTES,
    PROVENANCE_FILE,
    ResultsZipError,
    Verification,
    safe_name,
    verify_results_zip,
)

#: Provenance fields printed first, in this order (the rest follow as JSON).
_HEADLINE = ("model_id", "job_id", "job_type", "flip_mode", "outcome", "rounds_completed", "trusts", "created_at")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flip-nvflare verify-results",
        description=f"Check a FLIP results zip against its {PROVENANCE_FILE}: the SHA-256 of every file, "
        "files missing or added, and an edited provenance. Nothing is extracted.",
    )
    parser.add_argument("zip", type=Path, metavar="RESULTS.zip", help="the results zip")
    parser.add_argument(
        "--expect-digest",
        metavar="SHA256",
        help="the provenance digest the FL server logged when it uploaded the results",
    )
    parser.add_argument(
        "--app", type=Path, metavar="DIR", help="a job's app folder (JOB/app): its code must hash as the one that ran"
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        metavar="N",
        help=f"uncompressed bytes to hash at most (default {DEFAULT_MAX_BYTES})",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    return parser


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(safe_name(str(v)) for v in value) or "(none)"
    return safe_name(str(value)) if value is not None else "-"


def render(result: Verification) -> str:
    """The findings as text: the provenance, then what matched and what did not."""
    lines: list[str] = []
    provenance = result.provenance or {}
    if provenance:
        lines.append("Provenance")
        lines += [f"  {key}: {_value(provenance.get(key))}" for key in _HEADLINE]
        app_code = provenance.get("app_code")
        if isinstance(app_code, dict):
            lines.append(f"  app_code: sha256 {_value(app_code.get('sha256'))} ({_value(app_code.get('files'))} files)")
        for key in ("versions", "aggregation", "privacy", "resource_spec"):
            text = json.dumps(provenance.get(key), indent=2, sort_keys=True, ensure_ascii=True)
            lines.append(f"  {key}: " + text.replace("\n", "\n  "))
        digest = provenance.get("digest")
        if isinstance(digest, dict):
            lines.append(f"  digest: {_value(digest.get('sha256'))}")
        lines.append("")
    lines.append(f"Files: {len(result.verified)} verified")
    lines += [f"  ok        {safe_name(name)}" for name in result.verified]
    lines += [f"  TAMPERED  {safe_name(name)}: {why}" for name, why in result.tampered]
    lines += [f"  MISSING   {safe_name(name)}" for name in result.missing]
    lines += [f"  EXTRA     {safe_name(name)}" for name in result.extra]
    lines += [f"  PROBLEM   {problem}" for problem in result.problems]
    lines.append("")
    if result.ok:
        lines.append("OK: every file matches the provenance.")
    else:
        counts = (
            f"{len(result.tampered)} tampered, {len(result.missing)} missing, {len(result.extra)} extra, "
            f"{len(result.problems)} other problem(s)"
        )
        lines.append(f"FAILED: {counts}.")
    return "\n".join(lines)


def as_json(result: Verification) -> dict[str, Any]:
    """The findings as JSON-able data."""
    return {
        "ok": result.ok,
        "verified": result.verified,
        "tampered": [{"file": name, "why": why} for name, why in result.tampered],
        "missing": result.missing,
        "extra": result.extra,
        "problems": result.problems,
        "provenance": result.provenance,
    }


def main(argv: Sequence[str]) -> int:
    """Run ``flip-nvflare verify-results``; see the module docstring for the exit codes.

    Args:
        argv: The arguments after ``verify-results``.

    Returns:
        The exit code.
    """
    args = _parser().parse_args(list(argv))
    if args.max_bytes < 0:
        print("verify-results: --max-bytes must be >= 0.", file=sys.stderr)
        return 2
    if not args.zip.is_file():
        print(f"verify-results: {safe_name(str(args.zip))} is not a file.", file=sys.stderr)
        return 2
    try:
        result = verify_results_zip(
            args.zip, max_bytes=args.max_bytes, expect_digest=args.expect_digest, app_dir=args.app
        )
    except ResultsZipError as exc:
        print(f"verify-results: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(as_json(result), indent=2, sort_keys=True, ensure_ascii=True))
    else:
        print(render(result))
    return 0 if result.ok else 1
