"""The hand-off between a FLIP job's server process and the server's JobWatcher (its parent process).

When the server runs a :class:`~flip_nvflare.components.job_watch.JobWatcher` (a site-level
component in the server's ``local/resources.json``), it creates ``<workspace>/flip_job_watch/``
with a ``WATCHING`` marker. A job process that sees the marker writes one small JSON file per job
there (``<job_id>.json``): the model id, flip mode, hub generation, the trust names, the final
status it queued (if any) and whether it left an aborted run's final status to the watcher. Only
the watcher knows why NVFlare ended a job (a person's abort, or a site's failure), so an aborted
run's final status is decided there. Nothing here is patient data; nothing here imports NVFlare.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flip_nvflare.workspace import write_atomically

logger = logging.getLogger(__name__)

#: Folder of the hand-off files, in the server's workspace root.
HANDOFF_DIR = "flip_job_watch"
#: Marker file: a JobWatcher runs in this server's parent process.
WATCHING_MARKER = "WATCHING"


def handoff_dir(workspace_root: str | Path) -> Path:
    """The hand-off folder of a server workspace."""
    return Path(workspace_root) / HANDOFF_DIR


def watcher_present(workspace_root: str | Path) -> bool:
    """Whether a JobWatcher watches this server's jobs."""
    return (handoff_dir(workspace_root) / WATCHING_MARKER).is_file()


def _job_file(workspace_root: str | Path, job_id: str) -> Path:
    name = str(job_id)
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError("not a job id")
    return handoff_dir(workspace_root) / f"{name}.json"


def update_handoff(workspace_root: str | Path, job_id: str, **fields: Any) -> None:
    """Merge ``fields`` into the job's hand-off file (only when a watcher is present; never raises)."""
    if not watcher_present(workspace_root):
        return
    try:
        path = _job_file(workspace_root, job_id)
        data = read_handoff(workspace_root, job_id) or {}
        data.update(fields)
        write_atomically(path, json.dumps(data, sort_keys=True))
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("FLIP: could not write the job watcher's hand-off file: %s", type(exc).__name__)


def read_handoff(workspace_root: str | Path, job_id: str) -> dict[str, Any] | None:
    """The job's hand-off data, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads(_job_file(workspace_root, job_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_handoff(workspace_root: str | Path, job_id: str) -> None:
    """Delete the job's hand-off file, if any."""
    try:
        _job_file(workspace_root, job_id).unlink(missing_ok=True)
    except (OSError, ValueError):
        pass
