"""SiteLossReporter: a trust whose site left the run is named at the hub, and the job's policy applied.

NVFlare detects the loss itself: the server's parent process tells the job's process that a
client's job is gone (the site's heartbeats no longer list it, the site restarted, or its
heartbeats stopped for the deployment's ``heart_beat_timeout``; the server's JobWatcher re-sends
the news for a restarted site, which NVFlare alone misses). After ``dead_client_grace_period``
seconds (a top-level key of the job's server config) the workflow fires CLIENT_DISCONNECTED;
tasks waiting only on dead sites end ``dead_client_check_lead_time`` seconds after they were
scheduled, and NVFlare ends the job when fewer sites than the job's ``min_clients`` are left.

This component listens to CLIENT_DISCONNECTED. It records the lost site in the run summary
(``sites_lost``), sends the hub a log entry for that site's trust, and applies the job's policy
(the top-level key ``on_site_lost``):

* ``continue`` (default): the run goes on with the other sites while ``min_clients`` still holds;
  NVFlare ends it (final status ERROR) when it no longer does;
* ``end``: the run ends at once with a fatal error (final status ERROR).
"""

from __future__ import annotations

import threading
from enum import Enum

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

from flip_nvflare.components import handoff
from flip_nvflare.components.session import HubSession
from flip_nvflare.components.widget import HubWidget
from flip_nvflare.constants import DEFAULT_FLIP_ID
from flip_nvflare.errors import FlipConfigError
from flip_nvflare.executors.sanitize import sanitize_hub_text

_MAX_NAME = 200


class SiteLossPolicy(str, Enum):
    """What a run does when a site leaves it (the job's top-level key ``on_site_lost``)."""

    CONTINUE = "continue"
    END = "end"


def as_site_loss_policy(raw: object) -> SiteLossPolicy:
    """Parse ``on_site_lost``; an unset key (NVFlare's None for an undefined ``"{on_site_lost}"``) is the default."""
    if raw is None or str(raw).strip() in ("", "{on_site_lost}"):
        return SiteLossPolicy.CONTINUE
    try:
        return SiteLossPolicy(str(raw).strip().lower())
    except ValueError:
        raise FlipConfigError(f"on_site_lost must be 'continue' or 'end', got {raw!r}.") from None


def site_lost_text(trust: str, client: str, policy: SiteLossPolicy) -> str:
    """The hub log entry for a lost site (names only: no paths, no addresses)."""
    head = (
        f"The site of {trust} ({client}) left the run: its job is no longer running there (the site's "
        "process ended or restarted, or the site stopped answering)."
    )
    if policy is SiteLossPolicy.END:
        return f"{head} The job's policy (on_site_lost: end) ends the run."
    return f"{head} The run continues with the remaining sites while min_clients still holds."


class SiteLossReporter(HubWidget):
    """Names a lost site's trust at the hub, records it in the run summary and applies the policy.

    Args:
        flip_id: Id of the FlipBackend component.
        policy: ``"continue"`` or ``"end"``, normally ``"{on_site_lost}"`` (the job's top-level key).
    """

    def __init__(self, flip_id: str = DEFAULT_FLIP_ID, policy: str | None = SiteLossPolicy.CONTINUE.value) -> None:
        super().__init__(flip_id)
        self._policy = as_site_loss_policy(policy)
        self._lock = threading.Lock()
        self._ended = False

    @property
    def policy(self) -> SiteLossPolicy:
        """The job's policy for a lost site."""
        return self._policy

    def on_event(self, event_type: str, fl_ctx: FLContext, session: HubSession) -> None:
        """Handle CLIENT_DISCONNECTED and CLIENT_RECONNECTED."""
        if event_type == EventType.START_RUN:
            with self._lock:
                self._ended = False
            self._tell_the_watcher(fl_ctx)
        elif event_type == EventType.CLIENT_DISCONNECTED:
            self._lost(fl_ctx, session)
        elif event_type == EventType.CLIENT_RECONNECTED:
            client = fl_ctx.get_prop(FLContextKey.RECONNECTED_CLIENT_NAME, None)
            if isinstance(client, str) and client:
                self.log_info(fl_ctx, f"Site {client} is back in the run.")

    def _tell_the_watcher(self, fl_ctx: FLContext) -> None:
        """Put the policy in the job's hand-off, so a JobWatcher treats a died job process by it too."""
        try:
            root = fl_ctx.get_engine().get_workspace().get_root_dir()
            handoff.update_handoff(root, str(fl_ctx.get_job_id()), on_site_lost=self._policy.value)
        except Exception as exc:  # the hand-off only helps a watcher; never fail the run for it
            self.log_warning(
                fl_ctx, f"Could not record the site-loss policy for the JobWatcher: {exc}", fire_event=False
            )

    def _lost(self, fl_ctx: FLContext, session: HubSession) -> None:
        client = fl_ctx.get_prop(FLContextKey.DISCONNECTED_CLIENT_NAME, None)
        if not isinstance(client, str) or not client:
            return
        client = sanitize_hub_text(client, _MAX_NAME)
        trust = session.trust_names(client)
        what = "left the run: its job is no longer running there"
        if not session.journal.site_lost(client, trust, what):
            return
        session.send_client_log(client, sanitize_hub_text(site_lost_text(trust, client, self._policy), 2000))
        self.log_warning(
            fl_ctx, f"Site {client} ({trust}) left the run; policy on_site_lost={self._policy.value}.", False
        )
        if self._policy is SiteLossPolicy.END:
            with self._lock:
                if self._ended:
                    return
                self._ended = True
            reason = f"the site of {trust} left the run (on_site_lost: end)"
            session.journal.mark_failed(reason)
            self.system_panic(reason, fl_ctx)
