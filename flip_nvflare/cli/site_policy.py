"""``flip-nvflare site-policy render``: a trust's privacy policy into the site's ``local/privacy.json``.

The policy itself (its schema, the strictest-wins rule, the rendering) is
:mod:`flip_nvflare.filters.site_policy`; this module is only its command line.
"""

from __future__ import annotations

import argparse
import sys

from flip_nvflare.errors import FlipConfigError
from flip_nvflare.filters.site_policy import render_site_policy


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flip-nvflare site-policy",
        description="A trust's privacy policy for NVFlare (see docs/site_policy.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    render = commands.add_parser(
        "render",
        help="render POLICY.yaml into the site's local/privacy.json (fail-closed)",
        description=(
            "Render a site policy into SITE_WORKSPACE/local/privacy.json. If the policy is missing or "
            "invalid, the strictest policy (no DXO leaves the site) is written and the exit code is 1."
        ),
    )
    render.add_argument("policy", metavar="POLICY.yaml", help="the site policy")
    render.add_argument(
        "--site-workspace", required=True, metavar="DIR", help="the site's NVFlare workspace (holds startup/, local/)"
    )
    return parser


def main(argv: list[str]) -> int:
    """Command line: ``flip-nvflare site-policy render POLICY.yaml --site-workspace DIR``.

    Args:
        argv: Arguments after ``site-policy``, e.g. ``["render", "policy.yaml", "--site-workspace", "ws"]``.

    Returns:
        0 if the policy was rendered; 1 if it was missing or invalid and the strictest policy was
        written instead; 2 on a usage error or when nothing could be written.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        result = render_site_policy(args.policy, args.site_workspace)
    except FlipConfigError as exc:
        print(f"error: {exc}; nothing was written", file=sys.stderr)
        return 2
    if result.error is not None:
        print(f"error: site policy {result.error}", file=sys.stderr)
        print(
            f"wrote the STRICTEST policy to {result.path}: no DXO may leave this site until the policy is "
            "fixed and rendered again",
            file=sys.stderr,
        )
        return 1
    assert result.policy is not None
    policy = result.policy
    names = ", ".join(s.name + (" (default)" if s.name == policy.default_scope else "") for s in policy.scopes)
    print(
        f"wrote {result.path}: scopes {names}; minimum percentile {policy.minimum.percentile}, "
        f"gamma {policy.minimum.gamma}; result kinds allowed: {', '.join(policy.allowed_result_kinds)}"
    )
    return 0
