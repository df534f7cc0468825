"""FlipConstants: FLIP's settings object, answered from the running job's backend.

FLIP apps read ``FlipConstants.LOCAL_DEV`` (and, rarely, other settings) to tell dev runs from
prod runs. FLIP decides it from an environment variable; flip-nvflare never does: the answer comes
from the backend of the job the code runs in (:func:`flip_nvflare.FLIP`, dev or prod as the job
config's ``flip_mode`` says), so nothing in a site's environment can make a prod job behave as a
dev one. Read it where ``FLIP()`` works: in code the FLIP runners call (the app's constructor,
``execute``, ``handle_event``) or in a backend made current with
:func:`flip_nvflare.client.using_backend`.

Settings the app has no business with (service URLs and keys, the results bucket, ``MIN_CLIENTS``)
are not given out: reading one raises :class:`~flip_nvflare.errors.FlipUnsupportedName` saying
what to use instead.
"""

from __future__ import annotations

from typing import Any

from flip_nvflare.errors import FlipConfigError, FlipUnsupportedName

#: Settings FlipConstants answers from the job's backend.
ANSWERED = ("LOCAL_DEV", "DEV_DATAFRAME", "DEV_IMAGES_DIR")

_SERVICE_CALLS = (
    "the FLIP services are called through the job's backend: FLIP().get_dataframe(...), "
    "FLIP().get_by_accession_number(...), FLIP().add_resource(...); it holds the URLs and keys, app code never does"
)
#: FLIP settings flip-nvflare does not give to app code, and what to use instead.
WITHHELD: dict[str, str] = {
    "FLIP_API_INTERNAL_URL": "the hub is reached by the server's FLIP components only (send_metrics_value for metrics)",
    "INTERNAL_SERVICE_KEY": "the hub key never reaches a client; send metrics with send_metrics_value",
    "INTERNAL_SERVICE_KEY_HEADER": "the hub key never reaches a client; send metrics with send_metrics_value",
    "DATA_ACCESS_API_URL": _SERVICE_CALLS,
    "IMAGING_API_URL": _SERVICE_CALLS,
    "TRUST_INTERNAL_SERVICE_KEY": _SERVICE_CALLS,
    "TRUST_INTERNAL_SERVICE_KEY_HEADER": _SERVICE_CALLS,
    "IMAGES_DIR": "FLIP().get_by_accession_number(...) returns an accession's folder; prepared_cohort().folders "
    "maps every prepared accession to its folder",
    "NET_ID": "FLIP().get_by_accession_number(...) returns an accession's folder; prepared_cohort().folders "
    "maps every prepared accession to its folder",
    "UPLOADED_FEDERATED_DATA_BUCKET": "the server's ResultsUploader uploads the results; save files in the run "
    "folder and list them in its 'include'",
    "MIN_CLIENTS": "min_clients is a key of the job's server config (FLIP's hub writes it); it is not known at a site",
}


def flip_setting(name: str) -> Any:
    """The value of FLIP setting ``name`` for the running job (see the module docstring).

    Raises:
        FlipUnsupportedName: A setting flip-nvflare does not give to app code, or a dev-only setting
            read in a prod job (the message says what to use instead).
        FlipConfigError: Read outside a job (no current backend), or the backend is neither dev nor prod.
        AttributeError: ``name`` is not one of FLIP's settings.
    """
    if name in WITHHELD:
        raise FlipUnsupportedName(f"FlipConstants.{name} is not available in flip-nvflare: {WITHHELD[name]}.")
    if name not in ANSWERED:
        raise AttributeError(f"FlipConstants has no setting {name!r}; flip-nvflare answers {', '.join(ANSWERED)}.")
    from flip_nvflare.client import FLIP

    try:
        backend = FLIP()
    except FlipConfigError:
        raise FlipConfigError(
            f"FlipConstants.{name} is answered by the running job's backend (dev or prod, as the job config's "
            "flip_mode says) and was read outside a job: read it in code the FLIP runners call (the app's "
            "constructor, execute or handle_event), or make a backend current with "
            "flip_nvflare.client.using_backend(backend)."
        ) from None
    mode = backend.mode
    if mode not in ("dev", "prod"):
        raise FlipConfigError(
            f"FlipConstants.{name}: the job's backend ({type(backend).__name__}) is neither dev nor prod (mode "
            f"{mode!r}); use FLIPStandardDev or FLIPStandardProd, or read FLIP().mode."
        )
    if name == "LOCAL_DEV":
        return mode == "dev"
    if mode != "dev":
        raise FlipUnsupportedName(
            f"FlipConstants.{name} exists only in dev mode and this job runs in prod; "
            "check FlipConstants.LOCAL_DEV first, or use prepared_cohort() / FLIP().get_dataframe(...)."
        )
    return backend.setting(name)


class _FlipConstantsType(type):
    """Answers ``FlipConstants.<SETTING>`` from the running job's backend."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return flip_setting(name)

    def __dir__(cls) -> list[str]:
        return sorted({*super().__dir__(), *ANSWERED})


class FlipConstants(metaclass=_FlipConstantsType):
    """FLIP's settings, as class attributes answered by the running job's backend.

    ``FlipConstants.LOCAL_DEV`` is True in a dev job and False in a prod job; ``DEV_DATAFRAME`` and
    ``DEV_IMAGES_DIR`` are the dev backend's settings (None if unset). See the module docstring.
    """

    def __init__(self) -> None:
        raise TypeError("FlipConstants is read as a class, e.g. FlipConstants.LOCAL_DEV; it is not instantiated.")


def get_flip_constants() -> type[FlipConstants]:
    """FLIP's accessor of its settings object: here :class:`FlipConstants` itself (read its attributes)."""
    return FlipConstants
