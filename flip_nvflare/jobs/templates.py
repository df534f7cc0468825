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

#: Template folder name of each job type (executor-style apps: FLIP_TRAINER, FLIP_VALIDATOR, FLIP_EVALUATOR).
TEMPLATE_NAMES: dict[JobType, str] = {
    JobType.STANDARD: "flip_standard",
    JobType.EVALUATION: "flip_evaluation",
    JobType.FED_OPT: "flip_fed_opt",
}

#: The app styles FLIP uses: executor classes, or Client API scripts (``<name>_client_api`` templates,
#: exported from the recipes by :mod:`flip_nvflare.jobs.client_api_templates`).
STYLES = ("executor", "client_api")

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


def template_name(job_type: str | JobType, style: str = "executor") -> str:
    """The template folder name of ``job_type`` in app ``style`` (``flip_standard``, ``flip_standard_client_api``...).

    Raises:
        FlipConfigError: Unknown job type or style.
    """
    if style not in STYLES:
        raise FlipConfigError(f"Unknown app style {style!r}; use one of {', '.join(STYLES)}.")
    name = TEMPLATE_NAMES[as_job_type(job_type)]
    return f"{name}_client_api" if style == "client_api" else name


def template_dir(job_type: str | JobType, style: str = "executor") -> Path:
    """The template folder of ``job_type`` in app ``style``.

    Raises:
        FlipConfigError: Unknown job type or style, or the template is missing from the installation.
    """
    folder = templates_root() / template_name(job_type, style)
    missing = [name for name in TEMPLATE_FILES if not (folder / name).is_file()]
    if missing:
        raise FlipConfigError(
            f"The job template {folder} is incomplete (missing {', '.join(missing)}); reinstall flip-nvflare."
        )
    return folder
