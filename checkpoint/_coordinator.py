"""The checkpoint coordinator's bookkeeping, free of I/O.

`CoordinatorCore` decides when to trigger a checkpoint, collects the tasks'
acknowledgements and says when a checkpoint is complete or aborted. The runtime
(a Ray actor in `resilience`) does the talking: it injects barriers, writes the
manifest, commits it to etcd under the leader's fencing epoch and notifies the
sinks. Keeping the decisions here makes them testable without a cluster and lets
a property test drive them through random interleavings.

Every message carries the pipeline *generation* (incremented by each restore):
an acknowledgement from before a restore is ignored, so a task that died and
came back cannot complete a checkpoint of a world that no longer exists.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CheckpointAborted",
    "CheckpointCompleted",
    "CheckpointConfig",
    "CoordinatorCore",
    "PendingCheckpoint",
]


@dataclass(frozen=True)
class CheckpointConfig:
    """How often and how long. Validated at construction."""

    interval_s: float = 1.0
    timeout_s: float = 30.0
    min_pause_s: float = 0.0
    max_concurrent: int = 1
    retained: int = 3
    after_restore_s: float = 0.25
    """Delay of the first checkpoint after a restore: output that was rolled back
    becomes visible again this soon, instead of a whole interval later."""

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.min_pause_s < 0:
            raise ValueError(f"min_pause_s must be >= 0, got {self.min_pause_s}")
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {self.max_concurrent}")
        if self.retained < 1:
            raise ValueError(f"retained must be >= 1, got {self.retained}")
        if self.after_restore_s < 0:
            raise ValueError(f"after_restore_s must be >= 0, got {self.after_restore_s}")


@dataclass
class PendingCheckpoint:
    """A triggered checkpoint waiting for acknowledgements."""

    checkpoint_id: int
    generation: int
    triggered_at: float
    expected: frozenset[str]
    acks: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> frozenset[str]:
        return self.expected - self.acks.keys()


@dataclass(frozen=True)
class CheckpointCompleted:
    """Every task acknowledged: the runtime may now commit the manifest."""

    checkpoint_id: int
    generation: int
    triggered_at: float
    completed_at: float
    acks: Mapping[str, Any]

    @property
    def duration_s(self) -> float:
        return self.completed_at - self.triggered_at


@dataclass(frozen=True)
class CheckpointAborted:
    """The checkpoint will never complete; the job goes on with the previous one."""

    checkpoint_id: int
    reason: str


class CoordinatorCore:
    """Pure state machine of the checkpoint coordinator. Not thread safe: guard it."""

    def __init__(
        self,
        tasks: Collection[str],
        config: CheckpointConfig,
        *,
        clock: Callable[[], float],
        next_checkpoint_id: int = 1,
        generation: int = 0,
    ) -> None:
        if not tasks:
            raise ValueError("a job needs at least one task")
        self.tasks = frozenset(tasks)
        self.config = config
        self._clock = clock
        self.next_checkpoint_id = next_checkpoint_id
        self.generation = generation
        self.pending: dict[int, PendingCheckpoint] = {}
        self.last_completed: int = next_checkpoint_id - 1 if next_checkpoint_id > 1 else 0
        self._last_trigger = float("-inf")
        self._last_completion = float("-inf")

    # -- triggering -------------------------------------------------------------------

    def due(self) -> bool:
        """Whether a new checkpoint should be triggered now."""
        now = self._clock()
        cfg = self.config
        return (
            len(self.pending) < cfg.max_concurrent
            and now - self._last_trigger >= cfg.interval_s
            and now - self._last_completion >= cfg.min_pause_s
        )

    def trigger(self) -> int:
        """Register a new checkpoint and return its id (the runtime injects the barrier)."""
        checkpoint_id = self.next_checkpoint_id
        self.next_checkpoint_id += 1
        now = self._clock()
        self._last_trigger = now
        self.pending[checkpoint_id] = PendingCheckpoint(
            checkpoint_id, self.generation, now, self.tasks
        )
        return checkpoint_id

    # -- acknowledgements ---------------------------------------------------------------

    def ack(
        self, generation: int, checkpoint_id: int, task: str, snapshot: Any
    ) -> CheckpointCompleted | None:
        """Record a task's snapshot; return the completion when it was the last one."""
        pending = self.pending.get(checkpoint_id)
        if pending is None or generation != self.generation or task not in pending.expected:
            return None  # stale (older generation, aborted, or already complete)
        pending.acks[task] = snapshot
        if pending.missing:
            return None
        del self.pending[checkpoint_id]
        now = self._clock()
        self._last_completion = now
        # A later checkpoint subsumes every earlier one still pending.
        for older in [c for c in self.pending if c < checkpoint_id]:
            del self.pending[older]
        return CheckpointCompleted(
            checkpoint_id, generation, pending.triggered_at, now, dict(pending.acks)
        )

    def committed(self, checkpoint_id: int) -> None:
        """The runtime durably committed this checkpoint (manifest in etcd)."""
        self.last_completed = max(self.last_completed, checkpoint_id)

    def decline(self, generation: int, checkpoint_id: int, task: str, reason: str) -> (
        CheckpointAborted | None
    ):
        """A task could not snapshot (write error, disk full): abort that checkpoint."""
        if generation != self.generation or checkpoint_id not in self.pending:
            return None
        del self.pending[checkpoint_id]
        return CheckpointAborted(checkpoint_id, f"task {task} declined: {reason}")

    def expire(self) -> list[CheckpointAborted]:
        """Abort checkpoints pending for longer than the timeout."""
        now = self._clock()
        out = []
        for cid, p in sorted(self.pending.items()):
            if now - p.triggered_at >= self.config.timeout_s:
                del self.pending[cid]
                missing = ", ".join(sorted(p.missing)) or "none"
                out.append(
                    CheckpointAborted(
                        cid, f"timed out after {self.config.timeout_s:g}s waiting for {missing}"
                    )
                )
        return out

    def abort_all(self, reason: str) -> list[CheckpointAborted]:
        out = [CheckpointAborted(cid, reason) for cid in sorted(self.pending)]
        self.pending.clear()
        return out

    # -- restore --------------------------------------------------------------------------

    def restored(self, checkpoint_id: int, *, highest_id_seen: int = 0) -> int:
        """A global restore from `checkpoint_id` happened; return the new generation.

        Pending checkpoints are dropped and ids continue above every id ever
        handed out, so a new checkpoint never reuses the id of an aborted one.
        """
        self.pending.clear()
        self.generation += 1
        self.last_completed = checkpoint_id
        self.next_checkpoint_id = max(self.next_checkpoint_id, checkpoint_id + 1,
                                      highest_id_seen + 1)
        cfg = self.config
        self._last_trigger = self._clock() - cfg.interval_s + min(cfg.after_restore_s,
                                                                  cfg.interval_s)
        return self.generation
