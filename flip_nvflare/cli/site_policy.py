"""``flip-nvflare site-policy render`` (a trust's privacy policy into ``local/privacy.json``) and ``allow-list``.

``allow-list`` prints, or merges into ``local/resources.json``, the ``class_allow_list`` a site
needs for FLIP jobs (:mod:`flip_nvflare.jobs.allow_list`).

The policy itself (its schema, the strictest-wins rule, the rendering) is
:mod:`flip_nvflare.filters.site_policy`; this module is only its command line.
"""

from __future__ import annotations

import argparse
import sys

from flip_nvflare.errors import FlipConfigError
from flip_nvflare.filters.site_policy import METRIC_POLICY_FILE, render_site_policy


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
    allow = commands.add_parser(
        "allow-list",
        help="the class_allow_list a site needs for FLIP jobs (printed, or merged into local/resources.json)",
        description=(
            "NVFlare 2.9 builds a job without custom/ code only from classes in the site's class_allow_list "
            "(local/resources.json). Print the list a FLIP site needs (NVFlare's defaults, flip_nvflare., and "
            "the NVFlare classes FLIP's templates use) as a JSON fragment, or merge it into a site's resources.json."
        ),
    )
    allow.add_argument(
        "--site-workspace", metavar="DIR", help="merge the list into DIR/local/resources.json instead of printing it"
    )
    return parser


def _allow_list(site_workspace: str | None) -> int:
    import json
    import os
    from pathlib import Path

    from flip_nvflare.jobs.allow_list import allow_list_fragment

    fragment = allow_list_fragment()
    if site_workspace is None:
        print(json.dumps(fragment, indent=2))
        return 0
    local = Path(site_workspace) / "local"
    if not local.is_dir():
        print(f"error: {local} is not a folder: pass the site's NVFlare workspace", file=sys.stderr)
        return 2
    target = local / "resources.json"
    if target.is_symlink():
        print(f"error: {target} is a symlink; it is not written through", file=sys.stderr)
        return 2
    resources: dict[str, object] = {"format_version": 2}
    if target.is_file():
        try:
            loaded = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(
                f"error: {target} cannot be read as JSON ({type(exc).__name__}); nothing was written", file=sys.stderr
            )
            return 2
        if not isinstance(loaded, dict):
            print(f"error: {target} is not a JSON object; nothing was written", file=sys.stderr)
            return 2
        resources = loaded
    existing = resources.get("class_allow_list")
    kept = [entry for entry in existing if isinstance(entry, str)] if isinstance(existing, list) else []
    allow_list = kept + [entry for entry in fragment["class_allow_list"] if entry not in kept]
    resources["class_allow_list"] = allow_list
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(resources, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    print(f"wrote {target}: class_allow_list has {len(allow_list)} entries, FLIP's included")
    return 0


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
    if args.command == "allow-list":
        return _allow_list(args.site_workspace)
    try:
        result = render_site_policy(args.policy, args.site_workspace)
    except FlipConfigError as exc:
        print(f"error: {exc}; nothing was written", file=sys.stderr)
        return 2
    if result.error is not None:
        print(f"error: site policy {result.error}", file=sys.stderr)
        print(
            f"wrote the STRICTEST policy to {result.path}: no DXO and no metric may leave this site until the "
            "policy is fixed and rendered again",
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
    with_dp = [s.name for s in policy.scopes if s.differential_privacy is not None]
    if with_dp:
        floor = policy.dp_minimum
        shown = (
            f"; site minimum clip_norm {floor.clip_norm}, delta {floor.delta}, noise_multiplier "
            f"{floor.noise_multiplier}, epsilon {floor.epsilon}, budget {floor.budget}"
            if floor is not None
            else ""
        )
        print(f"differential privacy required in scope(s) {', '.join(with_dp)}{shown}")
    else:
        print("differential privacy: not required by this policy")
    rules = policy.metrics
    metrics_path = result.path.with_name(METRIC_POLICY_FILE)
    if rules is None or rules.allow is None:
        print(f"wrote {metrics_path}: every metric label may leave (non-finite values never do)")
    else:
        allowed = ", ".join(rules.allow) or "none"
        print(f"wrote {metrics_path}: metric labels allowed to leave: {allowed}")
    if rules is not None and rules.significant_digits is not None:
        print(f"metric values are rounded to {rules.significant_digits} significant digits before they leave")
    return 0
