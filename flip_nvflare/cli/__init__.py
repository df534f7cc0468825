"""The ``flip-nvflare`` command: a thin dispatcher to each sub-command's own module.

Each sub-command parses its own arguments, so ``flip-nvflare emulate --help`` shows the
emulator's options. Sub-command modules are imported only when chosen.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib import import_module

#: sub-command -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "flip_nvflare_demo.cli",
        "main",
        "run the bundled FLIP app in the NVFlare simulator (--prod: emulator; needs the demo extra)",
    ),
    "emulate": (
        "flip_emulator.cli",
        "main",
        "run the FLIP services emulator (hub + trust) on this machine (needs the emulator extra)",
    ),
    "job": ("flip_nvflare.cli.jobs", "job_main", "create a job from a FLIP template: job create --type ... --app ..."),
    "check-app": ("flip_nvflare.cli.jobs", "check_app_main", "check a FLIP app folder for what its job type needs"),
    "site-policy": ("flip_nvflare.cli.site_policy", "main", "render a trust's privacy policy: site-policy render"),
    "verify-results": (
        "flip_nvflare.cli.verify",
        "main",
        "check a results zip against its provenance.json (SHA-256 of every file) and print the provenance",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: flip-nvflare COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    lines += ["", "Run 'flip-nvflare COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``flip-nvflare`` command line.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"flip-nvflare: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[name]
    command: Callable[[list[str]], int] = getattr(import_module(module_name), function_name)
    return int(command(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
