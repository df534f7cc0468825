"""What FLIP app code calls inside a job: ``FLIP()``, ``send_metrics_value`` and small helpers.

An existing FLIP app runs with its ``from flip ...`` imports changed to ``from flip_nvflare ...``:

- :func:`FLIP` returns the running job's backend (dev or prod, as the job config says);
- :func:`send_metrics_value` reports a metric towards the hub (through the server);
- :func:`get_model_weights_diff` builds the weight-difference DXO a trainer returns;
- :func:`prepared_cohort` gives the cohort CohortPreparer prepared (dataframe and image folders),
  so user code does not fetch it again.

Nothing here imports NVFlare, pandas or PyTorch until a function that needs them is called.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from flip_nvflare.compat.weights import get_model_weights_diff
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.metrics import send_metrics_value

if TYPE_CHECKING:
    from nvflare.apis.fl_context import FLContext

    from flip_nvflare.core.base import FLIPBase
    from flip_nvflare.executors.manifest import PreparedCohort

__all__ = [
    "FLIP",
    "clear_script_backend",
    "get_model_weights_diff",
    "prepared_cohort",
    "send_metrics_value",
    "set_script_backend",
    "using_backend",
    "using_run_dir",
]

_current: ContextVar[FLIPBase | None] = ContextVar("flip_nvflare_current_backend", default=None)
_current_run_dir: ContextVar[Path | None] = ContextVar("flip_nvflare_current_run_dir", default=None)
#: The backend a Client API script's FLIP() returns in this process (set by ClientApiRunner).
_script_backend: list[FLIPBase] = []


# ---------------------------------------------------------------------- the job's backend


@contextmanager
def using_backend(backend: FLIPBase) -> Iterator[FLIPBase]:
    """Make ``backend`` what :func:`FLIP` returns in this thread for the duration of the block."""
    token = _current.set(backend)
    try:
        yield backend
    finally:
        _current.reset(token)


def set_script_backend(backend: FLIPBase) -> None:
    """Make ``backend`` what :func:`FLIP` returns to a Client API script in this process (ClientApiRunner)."""
    _script_backend[:] = [backend]


def clear_script_backend() -> None:
    """Forget the Client API script's backend (at the end of the run)."""
    _script_backend.clear()


def FLIP(job_type: str | None = None) -> FLIPBase:
    """Return the running job's FLIP backend (dev or prod, as the job config says).

    Where the answer comes from:

    - in code the FLIP runners call (TrainerRunner, ValidatorRunner, EvaluatorRunner: the app's
      constructor, ``execute`` and ``handle_event``), the backend of the job the call belongs to;
    - in a Client API script run in process (ClientApiRunner), the job's backend;
    - in a Client API script run as its own process, the backend the job's client app config
      describes (built once; see :mod:`flip_nvflare.executors.script_backend`).

    Args:
        job_type: Accepted for FLIP's signature (``FLIP(job_type=...)``); the job's config, not
            this argument, decides which backend is returned.

    Raises:
        FlipConfigError: Called outside a job (or from a thread of an executor-style app that the
            runners did not start), or the script's job config names no usable backend.
    """
    current = _current.get()
    if current is not None:
        return current
    if _script_backend:
        return _script_backend[0]
    from flip_nvflare.executors.script_backend import script_backend

    built = script_backend()
    if built is not None:
        return built
    raise FlipConfigError(
        "FLIP() returns the backend of the running job, and it was called outside a job: not in a call the FLIP "
        "runners make into your app (its constructor, execute and handle_event), nor in a Client API script "
        "inside a job's app folder. In an executor-style app, keep the backend from your constructor "
        "(self.flip = FLIP()) and pass it to the threads you start. Outside a job, build a backend yourself: "
        "flip_nvflare.FLIPStandardDev(dataframe_csv=..., images_dir=..., output_dir=...) for local files, or "
        "flip_nvflare.FLIPStandardProd() with the FLIP environment variables set."
    )


# ---------------------------------------------------------------------- the prepared cohort


@contextmanager
def using_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Make ``run_dir`` the job run folder :func:`prepared_cohort` reads in this thread (used by the runners)."""
    token = _current_run_dir.set(Path(run_dir))
    try:
        yield Path(run_dir)
    finally:
        _current_run_dir.reset(token)


def prepared_cohort(fl_ctx: FLContext | None = None) -> PreparedCohort:
    """The cohort CohortPreparer prepared for this job at this trust.

    Args:
        fl_ctx: The task's FLContext. May be omitted in code the FLIP runners call (including
            the app's constructor).

    Returns:
        A :class:`~flip_nvflare.executors.manifest.PreparedCohort`: ``.dataframe`` (the cohort as the
        trust returned it), ``.folders`` (accession id -> image folder), ``.missing`` (accession id ->
        reason), ``.folder_of(accession_id)`` and ``.ready_dataframe()``.

    Raises:
        FlipConfigError: No job context (pass ``fl_ctx``).
        PreparedCohortError: The job has no prepared cohort (the message says how to add one).
    """
    from flip_nvflare.executors.manifest import PreparedCohort

    if fl_ctx is not None:
        from flip_nvflare.workspace import job_run_dir

        run_dir = job_run_dir(fl_ctx)
    else:
        current = _current_run_dir.get()
        if current is None:
            raise FlipConfigError(
                "prepared_cohort() cannot tell which job it is called for: pass the task's fl_ctx "
                "(prepared_cohort(fl_ctx)), or call it from code run by TrainerRunner, ValidatorRunner or "
                "EvaluatorRunner."
            )
        run_dir = current
    return PreparedCohort.open(run_dir)
