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


class FlipArgumentTypeError(FlipError, TypeError):
    """An argument has the wrong type (e.g. a metric value that is not a number)."""


class FlipConfigTypeError(FlipConfigError, FlipArgumentTypeError):
    """A job-config argument has the wrong JSON type: a :class:`FlipConfigError` and a TypeError."""


class FlipKeyError(FlipError, KeyError):
    """A name asked for is not there (a weight missing from a model, an accession not in the cohort)."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; a message reads better as itself.
        return str(self.args[0]) if self.args else ""


class FlipHTTPError(FlipError):
    """A FLIP service answered with an error, or could not be reached.

    Attributes:
        service: Name of the service ("flip-api", "data-access-api", "imaging-api").
        method: HTTP method of the request.
        path: Route template of the request (identifiers that could be patient data are elided).
        status_code: HTTP status of the answer, or ``None`` if there was no answer.
        detail: A description of the failure. For the hub's answers it is the hub's own ``detail``
            (about models and trusts, never patient data); for a trust's services it is a fixed
            description of the status, never the answer's content (which may echo SQL, a column
            value or a path: it stays in the trust's DEBUG log).
        retry_after: Seconds the service asked the caller to wait (``Retry-After``), if it did.
    """

    def __init__(
        self,
        service: str,
        method: str,
        path: str,
        status_code: int | None,
        detail: str | None = None,
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.service = service
        self.method = method
        self.path = path
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after
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


#: FLIP's name of :class:`FlipResultsUploadError` (``from flip import ResultsUploadError``).
ResultsUploadError = FlipResultsUploadError


class FlipInvalidResponse(FlipError):
    """A FLIP service answered 2xx with a body that breaks its contract (e.g. not a column dict)."""


class FlipMissingData(FlipError, FileNotFoundError):
    """Local data a dev-mode backend needs is missing; the message names what to create."""


class FlipJobError(FlipError):
    """A job cannot be created from a template; the message says what to change."""


class FlipAppError(FlipError):
    """The user's app is not what a FLIP job needs (missing file or class, wrong constructor)."""


class FlipUnsupportedName(FlipError, AttributeError):
    """A FLIP name flip-nvflare does not provide (an attribute); the message says what to use instead."""


class FlipUnsupportedImport(FlipError, ImportError):
    """Importing a FLIP name flip-nvflare does not provide; the message says what to use instead.

    An ImportError, so ``from flip_nvflare... import NAME`` shows this message, not Python's generic one.
    """


class PreparationError(FlipError):
    """A trust's cohort could not be prepared; the message is safe to send to the hub."""


class PreparedCohortError(FlipError):
    """The job has no prepared cohort (or it cannot be read); the message says what to do."""


class UntrustedManifestError(PreparedCohortError):
    """A manifest names a claims folder that is not this trust's ``IMAGES_DIR/NET_ID``: nothing is done."""


class ClaimsLayoutError(FlipError):
    """The claims folder, its trash, lock or a marker folder is a symlink (or not a folder): nothing is done."""


class SitePolicyError(FlipConfigError):
    """A trust's site policy file is missing or invalid; the message lists every problem found.

    Attributes:
        source: The policy file (or a description of where the text came from).
        problems: Every problem found, each a short sentence.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def format_traceback(exc: BaseException) -> str:
    """The full traceback of ``exc`` as text (for this site's own log; never sent anywhere as is)."""
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
