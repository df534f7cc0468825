"""PrivacyLedger: the sites' privacy reports in the run summary and, as numbers, at the hub.

Each site's :class:`~flip_nvflare.filters.gaussian_privacy.GaussianPrivacy` reports every release
(the round, epsilon spent, delta, noise multiplier, clip norm) and a round refused because it would
exceed the site's epsilon cap; each site's metric policy reports the metrics it dropped (a label and
counts per reason, never a value). This widget, on the server:

* adds a ``privacy`` section to the run summary (inside the results zip): per site, the epsilon
  spent after each round and the settings, the refused round if any, and the metric drop counts;
* sends epsilon spent as a metric series (``DP_EPSILON``, one value per site and round) to the hub;
* sends a refused round to the hub's logs as a fixed sentence built from the numbers only.

The reports carry numbers and fixed words; labels of dropped metrics pass the server's hub-text
rules and are capped in length and number.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FedEventHeader, FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flip_nvflare.args import json_bool
from flip_nvflare.components.session import HubSession
from flip_nvflare.components.widget import HubWidget, as_round
from flip_nvflare.constants import DEFAULT_FLIP_ID
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.executors.sanitize import sanitize_hub_text
from flip_nvflare.filters.budget import METRIC_DROP_EVENT, PRIVACY_REPORT_EVENT, REPORT_EXHAUSTED, REPORT_RELEASE

__all__ = ["EPSILON_METRIC", "SUMMARY_SECTION", "PrivacyLedger"]

#: The hub metric series of epsilon spent, per site and round.
EPSILON_METRIC = "DP_EPSILON"
#: The run summary's section.
SUMMARY_SECTION = "privacy"
#: Most distinct dropped-metric labels kept per site; further ones are counted under ``OTHER_LABELS``.
MAX_LABELS_PER_SITE = 100
OTHER_LABELS = "<other labels>"
_MAX_LABEL_CHARS = 128
_REASONS = ("not_allowed", "non_finite", "invalid_label", "policy_unreadable")
_ACCOUNTANTS = ("rdp", "pld")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _sender(data: Shareable) -> str | None:
    name = data.get_peer_prop(ReservedKey.IDENTITY_NAME, None) or data.get_header(FedEventHeader.ORIGIN, None)
    return name if isinstance(name, str) and name else None


class PrivacyLedger(HubWidget):
    """Collects the sites' privacy reports into the run summary and the hub (numbers only).

    Args:
        flip_id: Id of the FlipBackend component.
        send_epsilon_metric: Send epsilon spent to the hub as the ``DP_EPSILON`` series (default true).
    """

    def __init__(self, flip_id: str = DEFAULT_FLIP_ID, send_epsilon_metric: bool = True) -> None:
        super().__init__(flip_id)
        self._send_metric = json_bool("PrivacyLedger", "send_epsilon_metric", send_epsilon_metric)
        self._lock = threading.Lock()
        self._sites: dict[str, dict[str, Any]] = {}
        self._drops: dict[str, dict[str, dict[str, int]]] = {}
        self._ignored = 0
        self._registered: set[int] = set()

    def on_event(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        """Register the summary section at START_RUN; take in privacy and metric-drop reports."""
        if event_type == EventType.START_RUN:
            self._register(session)
            return
        if event_type not in (PRIVACY_REPORT_EVENT, METRIC_DROP_EVENT):
            return
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA, None)
        if not isinstance(data, Shareable) or data.get_header(FedEventHeader.DIRECTION, None) != "in":
            return
        client = _sender(data)
        if client is None:
            with self._lock:
                self._ignored += 1
            return
        session.journal.client_seen(client)
        if event_type == PRIVACY_REPORT_EVENT:
            self._privacy_report(fl_ctx, session, client, data)
        else:
            self._metric_drop(client, data)

    def _register(self, session: HubSession) -> None:
        if id(session) in self._registered:
            return
        try:
            session.add_summary_section(SUMMARY_SECTION, self.summary)
        except FlipConfigError:
            pass  # another PrivacyLedger of this job already reports the section
        self._registered.add(id(session))

    def _privacy_report(self, fl_ctx: FLContext, session: HubSession, client: str, data: Shareable) -> None:
        kind = data.get("kind")
        round_ = as_round(data.get("round"))
        epsilon = _number(data.get("epsilon_spent"))
        delta = _number(data.get("delta"))
        if kind not in (REPORT_RELEASE, REPORT_EXHAUSTED) or epsilon is None or delta is None:
            with self._lock:
                self._ignored += 1
            return
        cap = _number(data.get("epsilon_cap"))
        with self._lock:
            site = self._sites.setdefault(
                client,
                {"trust": session.trust_names(client), "epsilon_spent": 0.0, "delta": delta, "per_round": []},
            )
            site["delta"] = delta
            site["epsilon_cap"] = cap
            if kind == REPORT_RELEASE:
                site["epsilon_spent"] = epsilon
                site["per_round"].append({"round": round_, "epsilon": epsilon})
                for key in ("noise_multiplier", "clip_norm"):
                    site[key] = _number(data.get(key))
                per_layer = data.get("per_layer")
                site["per_layer"] = per_layer if isinstance(per_layer, bool) else None
                accountant = data.get("accountant")
                site["accountant"] = accountant if accountant in _ACCOUNTANTS else None
                site["releases"] = _count(data.get("releases"))
            else:
                projected = _number(data.get("epsilon_projected"))
                site["budget_exhausted"] = {"round": round_, "epsilon_projected": projected}
        if kind == REPORT_RELEASE:
            if self._send_metric:
                session.send_metric(client, EPSILON_METRIC, epsilon, round_ if round_ is not None else 0)
            return
        projected = _number(data.get("epsilon_projected"))
        text = (
            f"{client}: differential-privacy budget exhausted: round {round_ if round_ is not None else '?'} would "
            f"bring epsilon to {projected if projected is not None else float('nan'):.4g}, above the site's cap of "
            f"{cap if cap is not None else float('nan'):.4g} (delta {delta:.3g}); epsilon spent so far "
            f"{epsilon:.4g}. The site did not train or send the round."
        )
        self.log_warning(fl_ctx, text, fire_event=False)
        session.send_client_log(client, sanitize_hub_text(text))

    def _metric_drop(self, client: str, data: Shareable) -> None:
        label = data.get("label")
        counts = data.get("dropped")
        if not isinstance(label, str) or not isinstance(counts, dict):
            with self._lock:
                self._ignored += 1
            return
        shown = sanitize_hub_text(label.encode("ascii", "backslashreplace").decode("ascii"), max_chars=200)
        shown = shown[:_MAX_LABEL_CHARS]
        with self._lock:
            labels = self._drops.setdefault(client, {})
            if shown not in labels and len(labels) >= MAX_LABELS_PER_SITE:
                shown = OTHER_LABELS
            entry = labels.setdefault(shown, {})
            for reason, count in counts.items():
                number = _count(count)
                if reason in _REASONS and number is not None:
                    entry[reason] = max(entry.get(reason, 0), number) if shown != OTHER_LABELS else number

    def summary(self) -> dict[str, Any]:
        """The run summary's ``privacy`` section (numbers, fixed words and sanitized labels only)."""
        with self._lock:
            sites = {
                name: {**site, "per_round": [dict(r) for r in site["per_round"]]}
                for name, site in sorted(self._sites.items())
            }
            drops = {name: {k: dict(v) for k, v in labels.items()} for name, labels in sorted(self._drops.items())}
            ignored = self._ignored
        return {
            "guarantee": (
                "per site: (epsilon, delta)-differential privacy of the site's model updates, a neighbouring "
                "dataset being the site's whole contribution to a round (added or removed); metrics, validation "
                "results and exception text are not covered; see docs/privacy.md"
            ),
            "differential_privacy": sites,
            "metrics_dropped_at_sites": drops,
            "reports_ignored": ignored,
        }
