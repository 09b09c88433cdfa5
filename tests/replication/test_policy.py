"""The replication decisions, without a link: the sync gate, catch-up plans, takeover
losses, switchover preconditions."""

from __future__ import annotations

import random

import pytest

from resilience.replication._policy import (
    Bootstrap,
    ChainEntry,
    Incremental,
    StandbyView,
    SyncGate,
    lost_on_takeover,
    plan_catch_up,
    switchover_refusal,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gate(mode: str = "sync", on_loss: str = "fail-closed") -> tuple[SyncGate, Clock]:
    clock = Clock()
    return SyncGate(mode, on_loss, 2.0, clock=clock), clock  # type: ignore[arg-type]


def test_sync_commits_only_what_the_standby_acknowledged() -> None:
    g, _ = gate()
    g.completed(1)
    g.completed(2)
    assert not g.may_commit(1)
    g.acked(1)
    assert g.may_commit(1)
    assert not g.may_commit(2)
    g.committed(1)
    assert g.state == "protected"
    assert list(g.waiting) == [2]


def test_fail_closed_blocks_after_silence_and_reopens_on_the_next_ack() -> None:
    g, clock = gate()
    g.completed(1)
    clock.now += 1.9
    g.tick()
    assert g.state == "protected"
    clock.now += 0.2
    g.tick()
    assert g.state == "blocked"
    assert g.holds_input
    assert not g.may_commit(1)
    g.acked(1)
    assert g.state == "protected"
    assert g.may_commit(1)
    assert [t.state for t in g.transitions] == ["blocked", "protected"]


def test_a_slow_standby_that_keeps_acknowledging_is_not_lost() -> None:
    g, clock = gate()
    for checkpoint_id in range(1, 20):
        g.completed(checkpoint_id)
        clock.now += 1.5  # each acknowledgement takes 1.5 s: slow, under the 2 s timeout
        g.acked(checkpoint_id - 1 if checkpoint_id > 1 else 0)
        g.tick()
    assert g.state == "protected"
    assert g.transitions == []


def test_degrade_commits_without_the_standby_and_says_so_until_it_caught_up() -> None:
    g, clock = gate(on_loss="degrade")
    g.completed(1)
    clock.now += 3
    g.tick()
    assert g.state == "degraded"
    assert "RPO 0 no longer holds" in g.transitions[-1].reason
    assert g.may_commit(1)
    g.committed(1)
    g.completed(2)
    g.committed(2)
    g.acked(1)
    assert g.state == "degraded"  # the standby is behind what committed
    g.acked(2)
    assert g.state == "protected"
    g.completed(3)
    assert not g.may_commit(3)


def test_after_a_takeover_commits_go_on_until_the_old_site_caught_up() -> None:
    g, _ = gate()
    g.start_unprotected("took over from site a")
    g.completed(7)
    assert g.may_commit(7)
    g.committed(7)
    g.acked(7)
    assert g.state == "protected"


def test_async_always_commits_and_never_blocks() -> None:
    g, clock = gate(mode="async")
    g.completed(1)
    clock.now += 100
    g.tick()
    assert g.state == "async"
    assert g.may_commit(1)
    assert not g.holds_input


def test_a_random_schedule_never_lets_sync_commit_ahead_of_the_standby() -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    g, clock = gate(on_loss=rng.choice(["fail-closed", "degrade"]))
    next_id = 1
    for _ in range(500):
        action = rng.choice(["complete", "ack", "tick", "commit"])
        clock.now += rng.choice([0.1, 0.5, 3.0])
        if action == "complete":
            g.completed(next_id)
            next_id += 1
        elif action == "ack" and next_id > 1:
            g.acked(rng.randrange(g.acked_through, next_id))
        elif action == "tick":
            g.tick()
        elif action == "commit" and g.waiting:
            oldest = min(g.waiting)
            if g.may_commit(oldest):
                g.committed(oldest)
        for checkpoint_id in g.waiting:
            if g.state in ("protected", "blocked"):
                assert g.may_commit(checkpoint_id) == (checkpoint_id <= g.acked_through)


def chain(*ids: int) -> list[ChainEntry]:
    return [ChainEntry(i, f"sha256:{i:064x}") for i in ids]


def view(committed: int, checksum_of: int | None = None, applied: int = 0) -> StandbyView:
    checksum = "" if checksum_of is None else f"sha256:{checksum_of:064x}"
    return StandbyView(committed, checksum, applied)


def test_catch_up_checkpoint_by_checkpoint_from_the_standbys_last_commit() -> None:
    plan = plan_catch_up(view(5, 5, applied=6), chain(4, 5, 6, 7), chain_starts_the_job=False)
    assert plan == Incremental(5, tuple(chain(6, 7)))


def test_a_fresh_standby_catches_up_from_the_start_only_if_the_chain_starts_the_job() -> None:
    assert plan_catch_up(view(0), chain(1, 2), chain_starts_the_job=True) == \
        Incremental(0, tuple(chain(1, 2)))
    assert isinstance(plan_catch_up(view(0), chain(8, 9), chain_starts_the_job=False),
                      Bootstrap)


@pytest.mark.parametrize(("standby", "why"), [
    (view(5, 99), "differs"),  # same id, another reign's manifest
    (view(12, 12), "past the active site's newest"),  # its own reign's tail
    (view(2, 2), "no longer retained"),  # fell behind retention
])
def test_a_standby_that_cannot_catch_up_gets_a_whole_copy(standby: StandbyView,
                                                          why: str) -> None:
    plan = plan_catch_up(standby, chain(4, 5, 6), chain_starts_the_job=False)
    assert isinstance(plan, Bootstrap)
    assert why in plan.why


def test_a_takeover_restores_the_newest_checkpoint_held_and_names_the_lost_ones() -> None:
    assert lost_on_takeover([3, 4, 5], held=[1, 3, 4, 5]) == (5, [])
    assert lost_on_takeover([3, 4, 5, 6], held=[3, 4]) == (4, [5, 6])
    assert lost_on_takeover([3], held=[]) == (0, [3])


def test_switchover_preconditions() -> None:
    ok = {"active_site": "a", "expected": "a", "target": "b", "standby_site": "b",
          "standby_connected": True, "lag_checkpoints": 1, "lag_budget": 2, "in_progress": None}
    assert switchover_refusal(**ok) is None  # type: ignore[arg-type]
    cases = {
        "expected": ("c", "not c as expected"),
        "target": ("a", "already active"),
        "standby_connected": (False, "not connected"),
        "lag_checkpoints": (5, "has not caught up"),
        "in_progress": ("to b, draining", "already in progress"),
        "active_site": (None, "no site leads"),
    }
    for field, (value, why) in cases.items():
        refusal = switchover_refusal(**{**ok, field: value})  # type: ignore[arg-type]
        assert refusal is not None
        assert why in refusal, (field, refusal)
