"""A pipeline stage around any `TwoPhaseCommitSink`: buffer, pre-commit at the barrier,
commit when the checkpoint is complete, recover after a restore.

With checkpointing off there are no barriers until the end: the sink then commits
each batch as it arrives (bounded memory, output visible at once, and no exactly-once
guarantee: that is what turning checkpoints off means).

Jobs give it a factory for their sink and a row function; fault points
``<name>.before_precommit`` and ``<name>.before_commit`` mark the two windows of the
protocol, so a test or a chaos scenario can crash the sink exactly there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from checkpoint import CheckpointStore, TaskSnapshot, TwoPhaseCommitSink
from resilience import faultpoints
from resilience._runtime._operator import OperatorContext, SnapshotWriter, WrittenSnapshot

__all__ = ["SinkOperator"]


def _identity(record: Any) -> Any:
    return record


class SinkOperator:
    """Operator hosting a two-phase-commit sink (its calls run on the task's writer thread).

    `make_sink(ctx)` opens the sink; `row(record)` turns a record into the sink's row
    ``(ordinal, *columns)``; `name` names the fault points.
    """

    def __init__(self, make_sink: Callable[[OperatorContext], TwoPhaseCommitSink], *,
                 name: str, row: Callable[[Any], Any] = _identity,
                 metadata: dict[str, Any] | None = None) -> None:
        self.make_sink = make_sink
        self.name = name
        self.row = row
        self.metadata = dict(metadata or {})
        self.buffer: list[Any] = []
        self._sink: TwoPhaseCommitSink | None = None
        self._ctx: OperatorContext | None = None
        self._autocommit = False
        self._epoch = 0  # the coordinator's fencing epoch, from the last recover()
        self._lock = threading.Lock()  # autocommit writes from the processing thread

    def open(self, ctx: OperatorContext) -> None:
        self._ctx = ctx
        self._sink = self.make_sink(ctx)
        self._autocommit = not ctx.checkpointing

    @property
    def sink(self) -> TwoPhaseCommitSink:
        assert self._sink is not None
        return self._sink

    def _hit(self, point: str) -> None:
        if self._ctx is not None:
            faultpoints.hit(self._ctx.workdir, f"{self.name}.{point}")

    def process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        row = self.row
        rows = records if row is _identity else [row(r) for r in records]
        if self._autocommit or (self._ctx is not None and faultpoints.armed(
                self._ctx.workdir, f"{self.name}.commit_early")):
            # (The second case is a deliberately broken build, switched on only by the
            # harness's own tests: a sink that commits before the checkpoint completes.)
            with self._lock:
                # Batch ids of their own: no checkpoint id will ever need to commit here
                # except the final one, which then has nothing left to commit.
                batch = self.sink.last_committed() + 1
                self.sink.precommit(batch, rows)
                self.sink.commit(batch, self._epoch, 0)
            return []
        self.buffer.extend(rows)
        return []

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        rows, self.buffer = self.buffer, []
        sink = self.sink

        def write(store: CheckpointStore) -> WrittenSnapshot:
            self._hit("before_precommit")
            with self._lock:
                sink.precommit(checkpoint_id, rows)
            return WrittenSnapshot((), {"precommitted": checkpoint_id, "rows": len(rows),
                                        **self.metadata})

        return SnapshotWriter(write)

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        self.buffer = []

    def recover(self, checkpoint_id: int, fencing_epoch: int, watermark: int) -> None:
        self._epoch = fencing_epoch
        with self._lock:
            self.sink.recover(checkpoint_id, fencing_epoch, watermark)

    def checkpoint_complete(self, checkpoint_id: int, fencing_epoch: int, watermark: int) -> None:
        # Between pre-commit (acknowledged) and commit: the window 2PC exists for.
        self._hit("before_commit")
        with self._lock:
            self.sink.commit(checkpoint_id, fencing_epoch, watermark)

    def end_of_input(self) -> list[Any]:
        return []

    def close(self) -> None:
        close = getattr(self._sink, "close", None)
        if callable(close):
            close()
