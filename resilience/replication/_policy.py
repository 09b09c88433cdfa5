"""Replication decisions as pure functions and small state machines, tested without a link.

* `SyncGate`: whether a completed checkpoint may commit now, given what the standby has
  acknowledged, the mode and the standby-loss policy; its states say what RPO holds.
* `plan_catch_up`: how a standby that (re)connects is brought up to date: checkpoint by
  checkpoint from where it stands, or a whole copy.
* `lost_on_takeover`: which complete checkpoints a site taking over does not hold.
* `switchover_refusal`: why a switchover must not start, if it must not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from resilience.replication._config import Mode, OnStandbyLoss

__all__ = [
    "Bootstrap",
    "ChainEntry",
    "GateState",
    "Incremental",
    "StandbyView",
    "SyncGate",
    "Transition",
    "lost_on_takeover",
    "plan_catch_up",
    "switchover_refusal",
]

GateState = Literal["protected", "blocked", "degraded", "unprotected", "async"]
"""protected: sync, every commit held by the standby first (RPO 0).
blocked: sync and fail-closed, the standby silent past its timeout: nothing commits.
degraded: sync and degrade, the standby silent past its timeout: commits go on unreplicated.
unprotected: a takeover used the standby up: commits go on until the old site is back.
async: commits go on, shipped behind (the lag is the RPO)."""


@dataclass(frozen=True)
class Transition:
    """The gate changed state (recorded in the job's journal and etcd)."""

    at: float
    state: GateState
    reason: str


@dataclass
class SyncGate:
    """Holds completed checkpoints until the standby acknowledged them (sync mode).

    `completed(id)` when a checkpoint waits to commit; `acked(id)` when the standby holds
    every checkpoint up to `id`; `committed(id)` once it committed. `may_commit(id)` says
    whether it may commit now; `tick()` applies the timeout. A degraded or unprotected
    gate is protected again once the standby acknowledged every committed checkpoint.
    """

    mode: Mode
    on_standby_loss: OnStandbyLoss
    timeout_s: float
    clock: Callable[[], float]
    state: GateState = "protected"
    acked_through: int = 0
    last_committed: int = 0
    last_ack_at: float | None = None
    waiting: dict[int, float] = field(default_factory=dict)  # checkpoint -> completed at
    transitions: list[Transition] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode == "async":
            self.state = "async"

    def start_unprotected(self, reason: str) -> None:
        """After a takeover: the old primary, the only standby, is gone."""
        if self.mode == "sync":
            self._move("unprotected", reason)

    def completed(self, checkpoint_id: int) -> None:
        self.waiting.setdefault(checkpoint_id, self.clock())

    def acked(self, checkpoint_id: int) -> None:
        self.acked_through = max(self.acked_through, checkpoint_id)
        self.last_ack_at = self.clock()
        if self.state == "blocked":
            self._move("protected", f"the standby acknowledged checkpoint {checkpoint_id}")
        self._maybe_caught_up()

    def committed(self, checkpoint_id: int) -> None:
        self.last_committed = max(self.last_committed, checkpoint_id)
        self.waiting.pop(checkpoint_id, None)
        for older in [c for c in self.waiting if c < checkpoint_id]:
            del self.waiting[older]
        self._maybe_caught_up()

    def dropped(self) -> None:
        """A restore abandoned every checkpoint still waiting."""
        self.waiting.clear()

    def may_commit(self, checkpoint_id: int) -> bool:
        if self.state in ("async", "degraded", "unprotected"):
            return True
        return checkpoint_id <= self.acked_through

    @property
    def holds_input(self) -> bool:
        """Whether the job should stop reading input (fail-closed, and a checkpoint waits)."""
        return self.state == "blocked" and bool(self.waiting)

    def tick(self) -> None:
        if self.state != "protected" or not self.waiting:
            return
        # Silent: nothing acknowledged since the oldest waiting checkpoint completed (a
        # standby that acknowledges, however slowly, is slow, not lost).
        since = min(self.waiting.values())
        if self.last_ack_at is not None:
            since = max(since, self.last_ack_at)
        silent = self.clock() - since
        if silent < self.timeout_s:
            return
        what = f"the standby has not acknowledged for {silent:.1f} s"
        if self.on_standby_loss == "fail-closed":
            self._move("blocked", f"{what}: not committing (fail-closed)")
        else:
            self._move("degraded", f"{what}: committing without it, RPO 0 no longer holds")

    def _maybe_caught_up(self) -> None:
        if self.state in ("degraded", "unprotected") and self.last_committed > 0 \
                and self.acked_through >= self.last_committed:
            self._move("protected", f"the standby caught up (checkpoint {self.acked_through})")

    def _move(self, state: GateState, reason: str) -> None:
        if state != self.state:
            self.state = state
            self.transitions.append(Transition(self.clock(), state, reason))


@dataclass(frozen=True)
class ChainEntry:
    """One complete checkpoint the active site still holds, in its order of completion."""

    checkpoint_id: int
    checksum: str


@dataclass(frozen=True)
class StandbyView:
    """What a standby says it holds: the checkpoint its sinks last committed (and that
    manifest's checksum, "" if it has none), and the last one it applied."""

    committed_through: int
    committed_checksum: str
    applied_through: int


@dataclass(frozen=True)
class Incremental:
    """Ship `entries` in order, the first one following `base` (the standby rewinds
    anything it applied after `base`)."""

    base: int
    entries: tuple[ChainEntry, ...]


@dataclass(frozen=True)
class Bootstrap:
    """The standby needs a whole copy (why says what did not match)."""

    why: str


def plan_catch_up(standby: StandbyView, chain: Sequence[ChainEntry], *,
                  chain_starts_the_job: bool) -> Incremental | Bootstrap:
    """How to bring `standby` up to date with `chain`, the active site's complete
    checkpoints (oldest first, every one still retained).

    Checkpoint by checkpoint from the standby's last commit when the active site holds
    that checkpoint with the same manifest (their outputs agree up to it; a fresh
    standby matches a chain that starts the job); otherwise a whole copy: a standby that
    committed a checkpoint the active site never held (its own reign's tail in async
    mode) or that fell behind the active site's retention.
    """
    committed = standby.committed_through
    if committed == 0:
        if chain_starts_the_job:
            return Incremental(0, tuple(chain))
        return Bootstrap("the standby holds nothing and the first checkpoints are gone")
    for index, entry in enumerate(chain):
        if entry.checkpoint_id == committed:
            if entry.checksum != standby.committed_checksum:
                return Bootstrap(f"checkpoint {committed} differs between the sites (the "
                                 "standby's comes from another reign)")
            return Incremental(committed, tuple(chain[index + 1:]))
    if chain and committed > chain[-1].checkpoint_id:
        return Bootstrap(f"the standby committed checkpoint {committed}, past the active "
                         f"site's newest ({chain[-1].checkpoint_id}): its own reign's tail")
    return Bootstrap(f"checkpoint {committed}, the standby's last, is no longer retained")


def lost_on_takeover(complete: Sequence[int], held: Sequence[int]) -> tuple[int, list[int]]:
    """(checkpoint to restore from, complete checkpoints lost) for a site taking over.

    It restores from the newest complete checkpoint it holds (0 when none); every
    complete checkpoint after that one is lost with the old site (none in sync mode).
    """
    have = set(held)
    restore = max((c for c in complete if c in have), default=0)
    return restore, sorted(c for c in complete if c > restore)


def switchover_refusal(*, active_site: str | None, expected: str | None, target: str,
                       standby_site: str | None, standby_connected: bool,
                       lag_checkpoints: int | None, lag_budget: int,
                       in_progress: str | None) -> str | None:
    """Why a switchover to `target` must not start (None: it may)."""
    if in_progress:
        return f"a switchover is already in progress ({in_progress})"
    if active_site is None:
        return "no site leads the job now"
    if expected is not None and active_site != expected:
        return f"the active site is {active_site}, not {expected} as expected"
    if target == active_site:
        return f"site {target} is already active"
    if standby_site != target:
        return f"site {target} is not the standby of {active_site}"
    if not standby_connected:
        return f"site {target} is not connected to {active_site}'s replication"
    if lag_checkpoints is None or lag_checkpoints > lag_budget:
        lag = "unknown" if lag_checkpoints is None else f"{lag_checkpoints} checkpoints"
        return f"site {target} has not caught up (lag {lag}, budget {lag_budget})"
    return None
