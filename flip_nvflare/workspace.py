"""A job's files on this site: where its folders are, and how files in them are written.

Every component that needs the job's run folder or its ``custom/`` folder asks here, and every
file another process may read while it changes (manifests, result JSON, a site's
``privacy.json``) is written with :func:`write_atomically`. Imports NVFlare only for type hints.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nvflare.apis.fl_context import FLContext


def job_run_dir(fl_ctx: FLContext) -> Path:
    """This site's run folder of the current job (``<workspace>/<job_id>``; server and clients alike)."""
    workspace = fl_ctx.get_engine().get_workspace()
    return Path(workspace.get_run_dir(fl_ctx.get_job_id()))


def job_custom_dir(fl_ctx: FLContext) -> Path | None:
    """The job app's ``custom/`` folder on this site, or ``None`` if the engine cannot tell."""
    try:
        workspace = fl_ctx.get_engine().get_workspace()
        return Path(workspace.get_app_custom_dir(fl_ctx.get_job_id()))
    except Exception:
        return None


def write_atomically(target: str | os.PathLike[str], text: str, *, mode: int | None = None) -> None:
    """Write ``text`` to ``target`` so readers see the old file or the new one, never half of one.

    The text goes to a temporary file in the same folder (created if needed), which then replaces
    ``target`` in one rename. On any failure the temporary file is removed and ``target`` is
    left as it was.

    Args:
        target: The file to write.
        text: Its new content (UTF-8).
        mode: Permission bits to give the file (default: the temporary file's, owner-only).

    Raises:
        OSError: The folder or the file could not be written.
    """
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
