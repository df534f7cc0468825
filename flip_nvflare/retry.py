"""RetryPolicy: how a failed call is tried again. The one retry setting every layer uses.

Each path has exactly one layer that retries, so attempts never multiply:

- a FLIP method called by user code: the HTTP layer (:class:`~flip_nvflare.core.http.ServiceClient`)
  retries with the backend's policy;
- hub calls of the server's widgets: the delivery queue (:class:`~flip_nvflare.components.delivery.HubDelivery`)
  retries, through outages, over a backend view that makes one attempt (``backend.with_retry(RetryPolicy.single())``);
- image downloads of CohortPreparer: the downloader retries each accession, over the same kind
  of single-attempt view.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from flip_nvflare.errors import FlipConfigError


@dataclass(frozen=True)
class RetryPolicy:
    """How a transiently failing call is retried: exponential backoff with jitter, bounded.

    Attributes:
        max_attempts: Attempts in all, the first included (1 disables retries; ``None``: no limit
            on the count, only on time).
        initial_delay: Delay before the first retry, in seconds; doubles on each further retry.
        max_delay: Cap on one delay, in seconds.
        total_timeout: Cap on the whole call, attempts and delays, in seconds (``None``: no cap;
            then ``max_attempts`` or the caller bounds it).
        jitter: Fraction of each delay that is randomised (0 = none, 1 = "full jitter").
    """

    max_attempts: int | None = 5
    initial_delay: float = 0.2
    max_delay: float = 5.0
    total_timeout: float | None = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1
        ):
            raise FlipConfigError(
                f"RetryPolicy.max_attempts must be an integer >= 1 or None, got {self.max_attempts!r}."
            )
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if not _finite_at_least(value, 0.0):
                raise FlipConfigError(f"RetryPolicy.{name} must be a finite number >= 0, got {value!r}.")
        if self.max_delay < self.initial_delay:
            raise FlipConfigError("RetryPolicy.max_delay must be at least initial_delay.")
        if self.total_timeout is not None and not (
            _finite_at_least(self.total_timeout, 0.0) and self.total_timeout > 0
        ):
            raise FlipConfigError(
                f"RetryPolicy.total_timeout must be a number > 0 or None, got {self.total_timeout!r}."
            )
        if not _finite_at_least(self.jitter, 0.0) or self.jitter > 1:
            raise FlipConfigError(f"RetryPolicy.jitter must be between 0 and 1, got {self.jitter!r}.")

    @classmethod
    def single(cls) -> RetryPolicy:
        """One attempt and no retry: for the layer under the one that owns the retries."""
        return cls(max_attempts=1, initial_delay=0.0, max_delay=0.0, total_timeout=None, jitter=0.0)

    def allows(self, attempts_made: int) -> bool:
        """Whether another attempt may follow ``attempts_made`` attempts (time aside)."""
        return self.max_attempts is None or attempts_made < self.max_attempts

    def delay(self, retry_number: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry_number`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * (2 ** min(max(retry_number, 1) - 1, 30)))
        return base * (1.0 - self.jitter * rng())


def _finite_at_least(value: object, low: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= low
