"""Where the FLIP job templates are, and which template each job type uses.

The templates ship inside the package (``flip_nvflare/job_templates/<name>/``); the repository's
top-level ``job_templates`` is a link to that folder, so ``nvflare job create -w
job_templates/flip_standard`` works from a checkout and :func:`template_dir` works from an
installed package.
"""

from __future__ import annotations

from pathlib import Path

from flip_nvflare.constants import JobType
from flip_nvflare.errors import FlipConfigError

#: Template folder name of each job type.
TEMPLATE_NAMES: dict[JobType, str] = {
    JobType.STANDARD: "flip_standard",
    JobType.EVALUATION: "flip_evaluation",
    JobType.FED_OPT: "flip_fed_opt",
}

#: Files every template folder holds.
TEMPLATE_FILES = ("info.conf", "meta.conf", "config_fed_server.json", "config_fed_client.json")


def templates_root() -> Path:
    """The folder holding every FLIP job template."""
    return Path(__file__).resolve().parent.parent / "job_templates"


def as_job_type(value: str | JobType) -> JobType:
    """``value`` as a :class:`JobType`; a clear error naming the choices otherwise."""
    if isinstance(value, JobType):
        return value
    try:
        return JobType(str(value).strip().lower().replace("-", "_"))
    except ValueError:
        choices = ", ".join(t.value for t in JobType)
        raise FlipConfigError(f"Unknown job type {value!r}; use one of {choices}.") from None


def template_dir(job_type: str | JobType) -> Path:
    """The template folder of ``job_type``.

    Raises:
        FlipConfigError: Unknown job type, or the template is missing from the installation.
    """
    folder = templates_root() / TEMPLATE_NAMES[as_job_type(job_type)]
    missing = [name for name in TEMPLATE_FILES if not (folder / name).is_file()]
    if missing:
        raise FlipConfigError(
            f"The job template {folder} is incomplete (missing {', '.join(missing)}); reinstall flip-nvflare."
        )
    return folder
