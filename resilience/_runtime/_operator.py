"""What a pipeline stage implements: the operator protocol.

An operator is plain Python: it never sees Ray, etcd or the store layout. The
task that hosts it (`_task.TaskActor`) feeds it records, runs its snapshots in
the background and restores it. Operators must be deterministic functions of
their input order and state: replay after a restore then reproduces exactly
the output of a crash-free run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from checkpoint import CheckpointStore, ChunkRef, TaskSnapshot

__all__ = [
    "Operator",
    "OperatorContext",
    "SnapshotWriter",
    "SourceOperator",
    "WrittenSnapshot",
]


@dataclass(frozen=True)
class WrittenSnapshot:
    """What a snapshot writer produced: chunks (restore order) and JSON-safe metadata."""

    chunks: tuple[ChunkRef, ...]
    metadata: dict[str, Any]


@dataclass
class SnapshotWriter:
    """The background half of a snapshot.

    `write` runs on the task's single writer thread (in checkpoint order) and may
    block on storage. `failed` runs on the processing thread when `write` raised,
    so incremental state can hand its delta to the next snapshot.
    """

    write: Callable[[CheckpointStore], WrittenSnapshot]
    failed: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class OperatorContext:
    """What an operator may know about where it runs."""

    job_id: str
    task_id: str
    index: int
    parallelism: int
    workdir: Path
    checkpointing: bool = True  # False: no barriers but the final one; no guarantees
    replicated: bool = False  # a standby site receives every checkpoint (sinks ship rows)


@runtime_checkable
class Operator(Protocol):
    """A stateful transformation of record batches."""

    def open(self, ctx: OperatorContext) -> None:
        """Called once per process start, before restore."""

    def process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        """Apply records from input `channel`; return the output records."""

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        """Synchronous half of a snapshot: cheap, on the processing thread."""

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        """Reset to the state in `snapshots` (none: the empty initial state).

        Usually one snapshot: this task's own. After a change of parallelism
        (restoring a savepoint with another `--parallelism`) a keyed task gets the
        snapshots of every task of its stage and keeps the keys it now owns.
        """

    def end_of_input(self) -> list[Any]:
        """All inputs ended; return final output records (usually none)."""


@runtime_checkable
class SourceOperator(Protocol):
    """An operator that reads the outside world from a rewindable position."""

    def open(self, ctx: OperatorContext) -> None: ...

    def poll(self, max_records: int) -> tuple[list[Any], bool]:
        """Read up to `max_records`; return (records, reached_end)."""

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter: ...

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None: ...

    def watermark(self) -> int:
        """Position below which every record has been emitted (for replay floors)."""


class CommitListener(Protocol):
    """Optional: operators with external effects (two-phase-commit sinks)."""

    def checkpoint_complete(self, checkpoint_id: int, fencing_epoch: int, watermark: int) -> None:
        """Checkpoint `checkpoint_id` is durable: make its effects visible."""

    def recover(self, checkpoint_id: int, fencing_epoch: int, watermark: int) -> None:
        """After restoring `checkpoint_id`: settle what it covers, drop what came after."""


def has_commit_hooks(op: object) -> bool:
    return callable(getattr(op, "checkpoint_complete", None)) and callable(
        getattr(op, "recover", None)
    )


Records = Sequence[Any]
