"""Who a coordinator may revoke before it campaigns (pure; a livelock found by chaos)."""

from __future__ import annotations

from resilience._runtime._leading import should_revoke_before_campaign

ACTOR = "a1b2"
ME = f"{ACTOR}:4242:cafe"


def revoke(holder: str | None, lease: int | None, valid_lease: int | None = None) -> bool:
    return should_revoke_before_campaign(current_holder=holder, current_lease=lease,
                                         actor_id=ACTOR, holder=ME, valid_lease=valid_lease)


def test_an_earlier_incarnation_of_this_actor_is_taken_over_at_once() -> None:
    assert revoke(f"{ACTOR}:1111:beef", 7)


def test_this_processs_own_lost_reign_is_cleared() -> None:
    assert revoke(ME, 7, valid_lease=None)
    assert revoke(ME, 7, valid_lease=8)  # a newer valid lease: lease 7 is a dead reign


def test_a_reign_this_process_still_holds_is_never_revoked() -> None:
    # The livelock: a stale loss event made the coordinator campaign again while its
    # new reign was valid; revoking it deposed that reign, whose loss made it campaign
    # again, forever (110 reigns in a minute, no progress).
    assert not revoke(ME, 7, valid_lease=7)


def test_another_actors_reign_and_no_reign_are_left_alone() -> None:
    assert not revoke("other:1:x", 7)
    assert not revoke(None, None)
