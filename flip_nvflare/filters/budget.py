"""A site's privacy budget for one job: the Gaussian releases made so far and the epsilon they spent.

:class:`BudgetLedger` is kept by the site's :class:`~flip_nvflare.filters.gaussian_privacy.GaussianPrivacy`
filter. Each release (one round's noised update leaving the site) is recorded with its noise
multiplier and clip norm; epsilon is recomputed by ``dp-accounting`` over every release so far
(:mod:`flip_nvflare.filters.accounting`), never added up by hand. With a cap, a release that would
bring epsilon above it is refused before it happens.

The reports a site sends to the server (:data:`PRIVACY_REPORT_EVENT`) carry numbers and fixed
words only: the round, epsilon, delta, the noise multiplier, the clip norm, counts.

Nothing here imports NVFlare or dp-accounting at import time.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from typing import Any

from flip_nvflare.errors import FlipError
from flip_nvflare.filters.accounting import epsilon_spent

__all__ = [
    "METRIC_DROP_EVENT",
    "PRIVACY_REPORT_EVENT",
    "BudgetExhausted",
    "BudgetLedger",
    "Release",
]

#: Federated event a site's DP filter fires after each release (or a refused round).
PRIVACY_REPORT_EVENT = "fed.flip.privacy_report"
#: Federated event a site fires when its metric policy drops a metric (a label and counts, no value).
METRIC_DROP_EVENT = "fed.flip.metric_dropped"

#: ``kind`` of a privacy report.
REPORT_RELEASE = "release"
REPORT_EXHAUSTED = "budget_exhausted"


class BudgetExhausted(FlipError):
    """A round would spend more epsilon than the site's cap allows; it is neither trained nor sent."""


@dataclass(frozen=True)
class Release:
    """One noised update that left the site.

    Attributes:
        round: The global round (None if the task did not say).
        noise_multiplier: Noise standard deviation divided by the clip norm.
        clip_norm: The L2 bound of the update (whole update; per-layer bounds add up to it).
        epsilon: Epsilon spent after this release, at the ledger's delta.
    """

    round: int | None
    noise_multiplier: float
    clip_norm: float
    epsilon: float


class BudgetLedger:
    """The releases of one site in one job, and the epsilon they spent at ``delta``.

    Args:
        delta: The delta every epsilon is stated at.
        accountant: ``"rdp"`` or ``"pld"`` (see :mod:`flip_nvflare.filters.accounting`).
        cap: The most epsilon the site allows this job to spend, or None for no cap.
    """

    def __init__(self, delta: float, accountant: str = "rdp", cap: float | None = None) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be between 0 and 1, got {delta!r}")
        if cap is not None and not (cap > 0 and math.isfinite(cap)):
            raise ValueError(f"the epsilon cap must be a positive finite number, got {cap!r}")
        self.delta = delta
        self.accountant = accountant
        self.cap = cap
        self._releases: list[Release] = []
        self._lock = threading.Lock()

    def tighten(self, delta: float, cap: float | None) -> None:
        """Make the ledger stricter: a smaller delta, a lower cap (never the other way)."""
        with self._lock:
            if 0 < delta < self.delta:
                self.delta = delta
            if cap is not None and (self.cap is None or cap < self.cap):
                self.cap = cap

    @property
    def releases(self) -> list[Release]:
        """The releases so far, in order."""
        with self._lock:
            return list(self._releases)

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far (0 before the first release)."""
        with self._lock:
            return self._releases[-1].epsilon if self._releases else 0.0

    def _runs(self, extra: float | None = None) -> list[tuple[float, int]]:
        runs: list[tuple[float, int]] = []
        multipliers = [r.noise_multiplier for r in self._releases] + ([extra] if extra is not None else [])
        for z in multipliers:
            if runs and runs[-1][0] == z:
                runs[-1] = (z, runs[-1][1] + 1)
            else:
                runs.append((z, 1))
        return runs

    def projected(self, noise_multiplier: float) -> float:
        """Epsilon after one more release with ``noise_multiplier``."""
        with self._lock:
            runs = self._runs(noise_multiplier)
        return epsilon_spent(runs, self.delta, self.accountant)

    def check(self, noise_multiplier: float, round_: int | None) -> float:
        """Refuse a release that would exceed the cap; else return the epsilon it would bring.

        Raises:
            BudgetExhausted: Epsilon after the release would be above the cap (numbers only in the message).
        """
        projected = self.projected(noise_multiplier)
        if self.cap is not None and not projected <= self.cap:
            done = len(self.releases)
            raise BudgetExhausted(
                f"differential-privacy budget exhausted: round {round_ if round_ is not None else '?'} would bring "
                f"epsilon to {projected:.4g}, above this site's cap of {self.cap:.4g} (delta {self.delta:.3g}) "
                f"after {done} release(s) spending {self.epsilon:.4g}; the site did not train or send it"
            )
        return projected

    def record(self, round_: int | None, noise_multiplier: float, clip_norm: float) -> Release:
        """Record a release (after :meth:`check`), recomputing epsilon over every release so far."""
        with self._lock:
            runs = self._runs(noise_multiplier)
        epsilon = epsilon_spent(runs, self.delta, self.accountant)
        release = Release(round=round_, noise_multiplier=noise_multiplier, clip_norm=clip_norm, epsilon=epsilon)
        with self._lock:
            self._releases.append(release)
        return release

    def summary(self) -> dict[str, Any]:
        """The ledger as JSON-able numbers."""
        with self._lock:
            releases = [asdict(r) for r in self._releases]
        return {
            "delta": self.delta,
            "accountant": self.accountant,
            "epsilon_cap": self.cap,
            "epsilon_spent": releases[-1]["epsilon"] if releases else 0.0,
            "releases": releases,
        }
