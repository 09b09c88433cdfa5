"""How a coordinator becomes the job's leader: campaign in etcd, taking over from a dead
incarnation of itself at once, and never cutting a live reign short."""

from __future__ import annotations

import logging
import threading
import time

from resilience._errors import CampaignTimeout, CoordinationError, EtcdError
from resilience.coordination._client import EtcdClient
from resilience.coordination._election import LeaderElection, Leadership

__all__ = ["campaign_for_job", "should_revoke_before_campaign"]

log = logging.getLogger(__name__)


def should_revoke_before_campaign(
    *,
    current_holder: str | None,
    current_lease: int | None,
    actor_id: str,
    holder: str,
    valid_lease: int | None,
) -> bool:
    """Whether a coordinator about to campaign may revoke the current leader's lease.

    Only to take over at once from an earlier incarnation of this actor (Ray restarts
    an actor after its previous process is gone; fencing keeps it safe even if it were
    somehow alive), or to clear this process's own lost reign. Never a lease this
    process still validly holds: revoking it would depose the reign it is running,
    whose loss would trigger another campaign and another revoke, forever (found by
    the chaos campaign: a paused coordinator, a fenced commit and a stale loss event).
    """
    if current_holder is None or current_lease is None:
        return False
    if not current_holder.startswith(f"{actor_id}:"):
        return False  # another actor's reign: wait for it, never cut it short
    return current_lease != valid_lease


def campaign_for_job(election: LeaderElection, client: EtcdClient, *, actor_id: str,
                     holder: str, previous: Leadership | None, timeout_s: float,
                     stop: threading.Event,
                     give_up_after_s: float | None = None) -> Leadership | None:
    """Campaign until this holder leads (None when `stop` is set first, or after
    `give_up_after_s` without leading).

    etcd down or another leader: retried every half second. A lease of an earlier
    incarnation of this actor is revoked first (`should_revoke_before_campaign`).
    """
    deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
    if deadline is not None:
        timeout_s = min(timeout_s, give_up_after_s or timeout_s)
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            return None
        try:
            current = election.current_leader()
            if should_revoke_before_campaign(
                    current_holder=None if current is None else current.holder,
                    current_lease=None if current is None else current.lease_id,
                    actor_id=actor_id, holder=holder,
                    valid_lease=previous.lease_id if previous is not None and previous.is_valid()
                    else None):
                assert current is not None
                client.revoke_lease(current.lease_id)
            return election.campaign(timeout_s=timeout_s)
        except CampaignTimeout:
            if deadline is not None:
                return None  # the caller asked for a bounded attempt: another leader holds it
            log.warning("campaign: another leader holds job %s; waiting", election.resource)
            stop.wait(0.5)
        except (EtcdError, CoordinationError) as e:  # etcd down
            log.warning("campaign failed: %s", e)
            stop.wait(0.5)
    return None
