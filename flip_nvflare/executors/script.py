"""``python -m flip_nvflare.executors.script SCRIPT [ARGS...]``: run a Client API script in its own process.

The external-process command of FLIP's Client API jobs. It runs ``SCRIPT`` as ``__main__`` (as
``python SCRIPT ARGS`` would: ``sys.argv`` and the script's folder on ``sys.path``), and if the
script raises, leaves the traceback in ``.flip_script_failure.txt`` in the current folder (the
job's app folder, where NVFlare starts the process) and ends the process at once with a non-zero
status (NVFlare's Client API threads would otherwise keep it alive, and the site would wait for a
result that never comes). The site's
ClientApiRunner sanitizes that text and sends it to the hub; the file never leaves the site.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from pathlib import Path

#: The file a failed script's traceback is written to (read by ClientApiRunner; same name there).
FAILURE_FILE = ".flip_script_failure.txt"


def main(argv: list[str]) -> int:
    """Run the script named by ``argv[0]`` with the rest as its arguments; return the exit code."""
    if not argv:
        print("usage: python -m flip_nvflare.executors.script SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    script = Path(argv[0])
    if not script.is_file():
        print(f"flip_nvflare.executors.script: no script {argv[0]!r} in {os.getcwd()}", file=sys.stderr)
        return 2
    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.resolve().parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        if exc.code in (None, 0):
            return 0
        _leave_failure(f"The script exited with status {exc.code!r}.")
        _end_now(exc.code if isinstance(exc.code, int) else 1)
    except BaseException as exc:
        text = "".join(traceback.format_exception(exc))
        _leave_failure(text)
        sys.stderr.write(text)
        _end_now(1)
    return 0


def _end_now(code: int) -> None:
    """Exit at once: the Client API's own threads would otherwise keep a failed script's process alive."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _leave_failure(text: str) -> None:
    target = Path(FAILURE_FILE)
    if target.is_symlink():
        target.unlink()
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
