"""Differential-privacy accounting for the Gaussian mechanism, through Google's ``dp-accounting``.

Nothing here is a hand-written accountant: calibration (the noise multiplier that reaches a target
epsilon after a number of rounds) and composition (epsilon spent after the rounds released so far)
are both computed by ``dp_accounting``, with its Rényi-DP accountant (``"rdp"``, the default) or its
privacy-loss-distribution accountant (``"pld"``, tighter, slower).

The mechanism accounted for is one release per round of a site's clipped update plus Gaussian
noise whose standard deviation is ``noise_multiplier * clip_norm``: ``GaussianDpEvent(z)``, with
no subsampling (the site's whole contribution is in every release), composed over the rounds
under the add-or-remove-one relation (a release with the site's contribution against one
without it). ``dp_accounting`` is imported on first use only (the ``dp`` extra).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from flip_nvflare.errors import FlipConfigError

if TYPE_CHECKING:
    from dp_accounting import DpEvent, PrivacyAccountant

__all__ = ["ACCOUNTANTS", "calibrate_noise_multiplier", "composed_event", "epsilon_spent", "require_dp_accounting"]

#: The accountants a filter may name.
ACCOUNTANTS = ("rdp", "pld")


def _dp() -> Any:
    try:
        import dp_accounting
    except ImportError:  # pragma: no cover - the dp extra is installed wherever DP is configured
        raise FlipConfigError(
            "differential privacy needs Google's dp-accounting: install flip-nvflare with the 'dp' extra "
            "(pip install 'flip-nvflare[dp]')"
        ) from None
    return dp_accounting


def require_dp_accounting() -> None:
    """Import ``dp_accounting`` now, so that a site without the ``dp`` extra fails when the filter is built.

    Raises:
        FlipConfigError: dp-accounting is not installed.
    """
    _dp()


def _accountant(name: str) -> PrivacyAccountant:
    dp = _dp()
    if name == "rdp":
        from dp_accounting.rdp import RdpAccountant

        accountant: PrivacyAccountant = RdpAccountant(neighboring_relation=dp.NeighboringRelation.ADD_OR_REMOVE_ONE)
        return accountant
    if name == "pld":
        from dp_accounting.pld import PLDAccountant

        return PLDAccountant(neighboring_relation=dp.NeighboringRelation.ADD_OR_REMOVE_ONE)
    raise FlipConfigError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {name!r}")


def composed_event(releases: Sequence[tuple[float, int]]) -> DpEvent:
    """The ``dp_accounting`` event of a sequence of Gaussian releases.

    Args:
        releases: ``(noise_multiplier, count)`` runs in release order (consecutive releases with the
            same multiplier grouped, so that the PLD accountant composes them as one self-composition).

    Returns:
        A ``ComposedDpEvent`` of ``SelfComposedDpEvent(GaussianDpEvent(z), count)`` runs.
    """
    dp = _dp()
    return dp.ComposedDpEvent(
        [dp.SelfComposedDpEvent(dp.GaussianDpEvent(float(z)), int(count)) for z, count in releases if count > 0]
    )


def epsilon_spent(releases: Sequence[tuple[float, int]], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` after the given Gaussian releases, composed by ``dp_accounting``.

    Args:
        releases: ``(noise_multiplier, count)`` runs (see :func:`composed_event`); none means 0.
        delta: The delta the epsilon is stated at (0 < delta < 1).
        accountant: ``"rdp"`` or ``"pld"``.

    Returns:
        The epsilon (``inf`` when the accountant cannot bound it).
    """
    if not any(count > 0 for _, count in releases):
        return 0.0
    ledger = _accountant(accountant)
    ledger.compose(composed_event(releases))
    return float(ledger.get_epsilon(delta))


@functools.lru_cache(maxsize=64)
def calibrate_noise_multiplier(target_epsilon: float, delta: float, rounds: int, accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose ``rounds`` releases spend at most ``target_epsilon`` at ``delta``.

    Computed by ``dp_accounting.calibrate_dp_mechanism`` (a bracketed search) with the chosen
    accountant; cached, as a job calibrates once.

    Args:
        target_epsilon: Epsilon for the whole job (> 0).
        delta: Delta for the whole job (0 < delta < 1).
        rounds: The job's planned number of releases (>= 1).
        accountant: ``"rdp"`` or ``"pld"``.

    Raises:
        FlipConfigError: An argument is out of range.
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise FlipConfigError(f"target epsilon must be a positive finite number, got {target_epsilon!r}")
    if not 0 < delta < 1:
        raise FlipConfigError(f"delta must be between 0 and 1, got {delta!r}")
    if rounds < 1:
        raise FlipConfigError(f"the number of rounds must be at least 1, got {rounds!r}")
    dp = _dp()
    _accountant(accountant)  # the name is checked before the search
    return float(
        dp.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            lambda z: dp.SelfComposedDpEvent(dp.GaussianDpEvent(z), rounds),
            target_epsilon,
            delta,
        )
    )
