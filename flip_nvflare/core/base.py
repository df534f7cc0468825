"""FLIPBase: the FLIP methods every backend implements, and the argument checks they share."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import stat
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flip_nvflare.constants import MAX_X_LABEL, HubApi, ModelStatus, ResourceType, default_trust_name
from flip_nvflare.errors import FlipConfigError, FlipInvalidArgument

if TYPE_CHECKING:
    import pandas as pd

    from flip_nvflare.retry import RetryPolicy

logger = logging.getLogger(__name__)

#: Longest exception text sent to the hub's logs (both backends cut it here).
MAX_LOG_CHARS = 64 * 1024
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")

ResourceTypes = ResourceType | str | Sequence[ResourceType | str]


def check_accession_id(accession_id: object) -> str:
    """Return ``accession_id`` if it is one safe URL path segment, else raise.

    The value itself is never put in the message: it may identify a patient.
    """
    if not isinstance(accession_id, str) or not accession_id:
        raise FlipInvalidArgument("accession_id must be a non-empty string.")
    if accession_id in (".", "..") or not _SAFE_SEGMENT.fullmatch(accession_id):
        raise FlipInvalidArgument(
            "accession_id must be a single path segment of letters, digits, '.', '_', '~' or '-' "
            "(and not '.' or '..'); the value is not shown because it may identify a patient."
        )
    return accession_id


def check_model_id(model_id: object) -> str:
    """Return ``model_id`` in canonical form if it is a UUID, else raise."""
    try:
        return str(uuid.UUID(str(model_id)))
    except (ValueError, TypeError, AttributeError):
        shown = repr(model_id) if len(repr(model_id)) <= 60 else repr(model_id)[:57] + "..."
        raise FlipInvalidArgument(
            f"model_id must be a UUID such as '3fa85f64-5717-4562-b3fc-2c963f66afa6', got {shown}."
        ) from None


def check_text(name: str, value: object) -> str:
    """Return ``value`` if it is a non-empty string, else raise naming the argument (not the value)."""
    if not isinstance(value, str) or not value.strip():
        raise FlipInvalidArgument(f"{name} must be a non-empty string.")
    return value


def check_round(value: object) -> int:
    """Return ``value`` as a global round (an int >= 0), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FlipInvalidArgument(f"round must be an integer >= 0, got {value!r}.")
    return value


def as_model_status(value: object) -> ModelStatus:
    """Return ``value`` as a :class:`ModelStatus`, accepting its name as a string."""
    try:
        return value if isinstance(value, ModelStatus) else ModelStatus(str(value))
    except ValueError:
        names = ", ".join(s.value for s in ModelStatus)
        raise FlipInvalidArgument(f"Unknown model status {value!r}; use one of {names}.") from None


def as_resource_types(resource_type: ResourceTypes) -> list[ResourceType]:
    """Normalise one resource type or a list of them (names accepted) to a de-duplicated list."""
    items: Iterable[ResourceType | str]
    items = [resource_type] if isinstance(resource_type, (str, ResourceType)) else resource_type
    result: list[ResourceType] = []
    for item in items:
        try:
            rt = item if isinstance(item, ResourceType) else ResourceType(str(item).upper())
        except ValueError:
            names = ", ".join(r.value for r in ResourceType)
            raise FlipInvalidArgument(f"Unknown resource type {item!r}; use one of {names}.") from None
        if rt not in result:
            result.append(rt)
    if not result:
        raise FlipInvalidArgument("resource_type must name at least one resource type.")
    return result


def finite_float(value: object) -> float | None:
    """``value`` as a float if it is a finite real number, else ``None``."""
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metric_body(
    client_name: str,
    model_id: str,
    label: str,
    value: object,
    round: int,
    x_value: float | None,
    x_label: str | None,
    trust_name: str | None,
) -> dict[str, Any] | None:
    """Check one metric's arguments and return what a backend records or sends for it.

    Returns:
        The fields (``model_id``, ``trust``, ``fl_client_name``, ``global_round``, ``label``,
        ``result`` and, when given, ``x_value`` / ``x_label``), or ``None`` when the value is not
        finite (logged as a warning: the hub cannot store it).

    Raises:
        FlipInvalidArgument: An argument is malformed.
    """
    model_id = check_model_id(model_id)
    check_text("client_name", client_name)
    check_text("label", label)
    check_round(round)
    if x_value is not None and finite_float(x_value) is None:
        raise FlipInvalidArgument(f"x_value must be a finite number, got {x_value!r}.")
    if x_label is not None and (not isinstance(x_label, str) or not 1 <= len(x_label) <= MAX_X_LABEL):
        raise FlipInvalidArgument(f"x_label must be a string of 1 to {MAX_X_LABEL} characters.")
    result = finite_float(value)
    if result is None:
        logger.warning("Metric %r of %s skipped: value is not a finite number.", label, client_name)
        return None
    body: dict[str, Any] = {
        "model_id": model_id,
        "trust": trust_name or default_trust_name(client_name),
        "fl_client_name": client_name,
        "global_round": round,
        "label": label,
        "result": result,
    }
    if x_value is not None:
        body["x_value"] = float(x_value)
    if x_label is not None:
        body["x_label"] = x_label
    return body


def exception_log_body(
    formatted_exception: object, client_name: str, model_id: str, trust_name: str | None
) -> tuple[str, dict[str, Any]]:
    """Check a client exception's arguments; return the model id and the hub log entry for it.

    The text is capped at :data:`MAX_LOG_CHARS`; the trust defaults to FLIP's ``site-N`` rule.
    """
    model_id = check_model_id(model_id)
    check_text("client_name", client_name)
    return model_id, {
        "trust": trust_name or default_trust_name(client_name),
        "fl_client_name": client_name,
        "log": capped_log_text(formatted_exception),
        "success": False,
    }


def progress_event_body(
    model_id: str, event_type: str, global_round: int | None, details: Mapping[str, Any], client_name: str | None
) -> tuple[str, dict[str, Any]]:
    """Check a progress event's arguments; return the model id and the hub log entry (H2's typed event)."""
    model_id = check_model_id(model_id)
    body: dict[str, Any] = {"event_type": event_type, "details": dict(details), "fl_client_name": client_name}
    if global_round is not None:
        body["global_round"] = global_round
    return model_id, body


def capped_log_text(formatted_exception: object) -> str:
    """The exception text sent to the hub's logs, cut at :data:`MAX_LOG_CHARS` with a visible marker."""
    text = str(formatted_exception)
    if len(text) > MAX_LOG_CHARS:
        return text[:MAX_LOG_CHARS] + "\n[truncated]"
    return text


def remove_inside(path: str | Path, roots: Sequence[Path]) -> bool:
    """Delete ``path`` (file or folder) if it lies strictly inside one of ``roots``, never through a symlink.

    Only the folders above ``path`` are resolved: a ``path`` that is itself a symlink is unlinked
    and whatever it points to (inside or outside the roots) is left untouched; a ``path`` reached
    through a linked folder is judged by where it really is. A folder is deleted without following
    the links inside it.

    Returns:
        True if something was deleted, False if the path did not exist.

    Raises:
        FlipConfigError: No roots were configured.
        FlipInvalidArgument: The path is not strictly inside a root.
    """
    if not roots:
        raise FlipConfigError(
            "cleanup is disabled: this backend was given no folders it may clean "
            "(pass cleanable_dirs=, or set IMAGES_DIR and NET_ID in prod)."
        )
    target = _entry_path(Path(path))
    for root in roots:
        resolved_root = Path(root).resolve()
        if target is not None and target != resolved_root and target.is_relative_to(resolved_root):
            break
    else:
        raise FlipInvalidArgument(
            "cleanup refused: the path is not inside a folder this backend may clean (for prod, IMAGES_DIR/NET_ID)."
        )
    return _remove_entry(target)


def _entry_path(path: Path) -> Path | None:
    """``path`` with its parent folders resolved but not its last part; ``None`` if it has no last part."""
    if path.name in ("", ".", ".."):
        return None
    return path.parent.resolve() / path.name


def _remove_entry(target: Path) -> bool:
    """Delete one directory entry without following it: a link is unlinked, a folder removed with its content."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(info.st_mode):
        # shutil.rmtree never follows the links inside, and refuses a folder swapped for a link meanwhile.
        shutil.rmtree(target)
    else:
        target.unlink()
    return True


class FLIPBase(ABC):
    """The FLIP methods, with the same names, arguments and meaning in every backend.

    A backend is cheap to construct: settings are read and checked when a method that needs them
    first runs. Backends are safe to use from several threads.
    """

    @abstractmethod
    def get_dataframe(self, project_id: str, query: str) -> pd.DataFrame:
        """Fetch the cohort of ``query`` for ``project_id`` as a DataFrame.

        Args:
            project_id: The encrypted project id written into the client job config by the hub.
            query: The cohort SQL (against the ``omop`` schema).

        Returns:
            One row per record; usually with an ``accession_id`` column.
        """

    @abstractmethod
    def get_by_accession_number(
        self, project_id: str, accession_id: str, resource_type: ResourceTypes = ResourceType.NIFTI
    ) -> Path:
        """Make the images of one accession available locally and return their folder.

        Args:
            project_id: The encrypted project id.
            accession_id: The accession (a single safe path segment).
            resource_type: One resource type or a list of them; all land in the same folder.
        """

    @abstractmethod
    def add_resource(
        self,
        project_id: str,
        accession_id: str,
        scan_id: str,
        resource_id: str,
        files: Sequence[str | Path],
    ) -> list[str]:
        """Upload files as a new resource of a scan of an accession; return what the service reports."""

    @abstractmethod
    def update_status(self, model_id: str, new_model_status: ModelStatus | str) -> None:
        """Report the model's lifecycle status to the hub."""

    @abstractmethod
    def send_metrics(
        self,
        client_name: str,
        model_id: str,
        label: str,
        value: float,
        round: int,
        *,
        x_value: float | None = None,
        x_label: str | None = None,
        trust_name: str | None = None,
    ) -> bool:
        """Send one metric value of one client to the hub.

        Args:
            client_name: The NVFlare client name (``site-1``) or the hub's trust name.
            model_id: The model (a UUID).
            label: The metric's name, e.g. ``LOSS_FUNCTION``.
            value: The value; a non-finite value is skipped with a warning.
            round: The global round (>= 0).
            x_value: Optional x coordinate (H2 hubs); defaults to the round.
            x_label: Optional x-axis name (H2 hubs), 1-64 characters.
            trust_name: The hub's name for the client's trust; by default ``site-N`` -> ``Trust_N``.

        Returns:
            True if sent, False if skipped as non-finite.
        """

    @abstractmethod
    def send_handled_exception(
        self, formatted_exception: str, client_name: str, model_id: str, *, trust_name: str | None = None
    ) -> None:
        """Record a client's (sanitized) exception text in the hub's logs for the model."""

    @abstractmethod
    def upload_results_to_s3(self, results_folder: str | Path, model_id: str) -> str:
        """Zip ``results_folder`` and store it for the model; return where it was stored.

        The folder is never modified or deleted.
        """

    @abstractmethod
    def cleanup(self, path: str | Path) -> bool:
        """Delete ``path`` if it lies inside a folder this backend may clean; refuse otherwise."""

    # ------------------------------------------------------------------ what components need (with defaults)

    @property
    def mode(self) -> str:
        """``"dev"``, ``"prod"``, or ``"custom"`` for another implementation (recorded in manifests)."""
        return "custom"

    @property
    def hub_api(self) -> HubApi | None:
        """The generation of the hub this backend reports to, or ``None`` when it reports to no real hub.

        Raises:
            FlipConfigError: The backend talks to a hub but its settings are incomplete.
        """
        return None

    def setting(self, name: str) -> str | None:
        """A FLIP setting this backend holds that app code may read (``FlipConstants``), or ``None``.

        The default holds none; the dev backend answers ``DEV_DATAFRAME``, ``DEV_IMAGES_DIR`` and
        ``DEV_OUTPUT_DIR``. Service URLs and keys are never answered.
        """
        return None

    def images_root(self) -> Path | None:
        """The folder that holds the accession folders :meth:`get_by_accession_number` downloads.

        Components that track and clean up downloads (CohortPreparer, ImageCleanup) use it; ``None``
        (the default) means the backend downloads nothing that may be deleted (e.g. dev data).
        """
        return None

    def send_run_log(self, model_id: str, text: str, trust_names: Sequence[str] = ()) -> int:
        """Record a log entry about the whole run (not one client's failure) in the hub's logs.

        An H1 hub files every log entry under a trust, so the default sends one entry per trust in
        ``trust_names`` (the trusts the run was for); a hub that has run-level entries (H2) may send
        one entry without a client instead.

        Args:
            model_id: The model (a UUID).
            text: What happened, already fit for the hub (names and codes, never patient data).
            trust_names: The trusts the run was for.

        Returns:
            How many entries were sent.
        """
        for trust in dict.fromkeys(trust_names):
            self.send_handled_exception(text, trust, model_id, trust_name=trust)
        return len(dict.fromkeys(trust_names))

    def with_retry(self, retry: RetryPolicy) -> FLIPBase:
        """This backend with ``retry`` as the retry policy of its service calls.

        A layer that owns the retries of its calls (the hub delivery queue, the image downloader)
        asks for ``with_retry(RetryPolicy.single())`` so attempts never multiply. The default
        returns the backend itself: a backend without retries of its own has nothing to change.
        """
        return self

    def send_progress_event(  # noqa: B027 - optional hook
        self,
        model_id: str,
        event_type: str,
        global_round: int | None,
        details: Mapping[str, Any],
        client_name: str | None = None,
    ) -> None:
        """Record a typed progress event (round started, client joined...) of the model at the hub.

        The default does nothing: a backend whose hub has no typed events ignores them.

        Args:
            model_id: The model (a UUID).
            event_type: The event's type, e.g. ``ROUND_STARTED``.
            global_round: The round it belongs to, if any.
            details: Counts and names only; never patient data.
            client_name: The client it is about, if any.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release pooled connections and other resources. Safe to call more than once."""
