"""The errors flip-nvflare raises. Every one is a :class:`FlipError`.

Messages name the service, method, path and HTTP status involved and never carry keys, SQL,
request or response bodies, or accession ids.
"""

from __future__ import annotations


class FlipError(Exception):
    """Base class of every error raised by flip-nvflare."""


class FlipConfigError(FlipError, ValueError):
    """A setting or argument is missing or malformed; the message says which and how to fix it."""


class FlipInvalidArgument(FlipError, ValueError):
    """An argument was refused before any request was made (e.g. an unsafe accession id)."""


class FlipHTTPError(FlipError):
    """A FLIP service answered with an error, or could not be reached.

    Attributes:
        service: Name of the service ("flip-api", "data-access-api", "imaging-api").
        method: HTTP method of the request.
        path: Route template of the request (identifiers that could be patient data are elided).
        status_code: HTTP status of the answer, or ``None`` if there was no answer.
        detail: The service's ``detail`` text, when it gave one and it is safe to repeat.
    """

    def __init__(
        self,
        service: str,
        method: str,
        path: str,
        status_code: int | None,
        detail: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.service = service
        self.method = method
        self.path = path
        self.status_code = status_code
        self.detail = detail
        where = f"{service} {method} {path}"
        what = f"HTTP {status_code}" if status_code is not None else (reason or "no response")
        message = f"{where} failed: {what}"
        if detail:
            message += f": {detail}"
        super().__init__(message)


class FlipAuthenticationError(FlipHTTPError):
    """The service refused the key (HTTP 401): check the service key environment variables."""


class FlipNotFoundError(FlipHTTPError):
    """The service does not know the model, project, accession or data asked for (HTTP 404)."""


class FlipRequestRejected(FlipHTTPError):
    """The service rejected the request (HTTP 400, 403, 422 and other non-retryable 4xx)."""


class FlipServiceUnavailable(FlipHTTPError):
    """The service could not be reached or kept failing (timeouts, 5xx, 429) after all retries."""


class FlipResultsUploadError(FlipError):
    """Results could not be zipped or stored in S3; the results folder was left intact."""


class FlipInvalidResponse(FlipError):
    """A FLIP service answered 2xx with a body that breaks its contract (e.g. not a column dict)."""


class FlipMissingData(FlipError, FileNotFoundError):
    """Local data a dev-mode backend needs is missing; the message names what to create."""
