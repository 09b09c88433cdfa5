"""A pipeline stage around any `TwoPhaseCommitSink`: buffer, pre-commit at the barrier,
commit when the checkpoint is complete, recover after a restore.

With checkpointing off there are no barriers until the end: the sink then commits
each batch as it arrives (bounded memory, output visible at once, and no exactly-once
guarantee: that is what turning checkpoints off means).

Jobs give it a factory for their sink and a row function; fault points
``<name>.before_precommit`` and ``<name>.before_commit`` mark the two windows of the
protocol, so a test or a chaos scenario can crash the sink exactly there.

Replicated (a standby site receives every checkpoint), each pre-commit also writes the
rows it stages as a *segment* chunk into the checkpoint store, before staging them. A
snapshot names the segments of every pre-commit not yet known to be committed: a
checkpoint that never completed leaves its rows staged, and the next commit makes
them visible too, so the standby must stage them as well. The standby stages exactly
these rows (`stage_replica`) and commits when the active site does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack

from checkpoint import CheckpointStore, ChunkRef, SinkProgress, TaskSnapshot, TwoPhaseCommitSink
from resilience import faultpoints
from resilience._errors import UserError
from resilience._runtime._operator import OperatorContext, SnapshotWriter, WrittenSnapshot

__all__ = ["REPLICA_SEGMENTS_KEY", "SinkOperator", "decode_segment", "encode_segment"]

REPLICA_SEGMENTS_KEY = "replica_segments"
"""Snapshot metadata of a replicated sink: the checkpoint id of each segment chunk, in the
order of the snapshot's chunks."""


def encode_segment(checkpoint_id: int, columns: Sequence[Sequence[Any]]) -> bytes:
    """A segment chunk: the rows (columns only) one pre-commit staged, as MessagePack."""
    return bytes(msgpack.packb({"v": 1, "checkpoint": checkpoint_id,
                                "rows": [list(c) for c in columns]}, use_bin_type=True))


def decode_segment(data: bytes) -> tuple[int, list[list[Any]]]:
    """(checkpoint id, rows) of a segment chunk; ValueError if it is not one."""
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
        if not isinstance(doc, dict) or doc.get("v") != 1:
            raise ValueError("not a sink segment")
        rows = doc["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ValueError("segment rows are not lists")
        return int(doc["checkpoint"]), rows
    except (msgpack.UnpackException, KeyError, TypeError) as e:
        raise ValueError(f"not a sink segment: {e}") from e


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
        self._replicated = False
        # (checkpoint id, segment chunk) of pre-commits not known to be committed yet.
        self._segments: list[tuple[int, ChunkRef]] = []

    def open(self, ctx: OperatorContext) -> None:
        self._ctx = ctx
        self._sink = self.make_sink(ctx)
        self._autocommit = not ctx.checkpointing
        self._replicated = ctx.replicated
        if self._replicated:
            missing = [m for m in ("above_replay_floor", "stage_replica", "export_copy",
                                   "import_copy") if not callable(getattr(self._sink, m, None))]
            if missing:
                raise UserError(f"sink {self.name}: a replicated job needs a sink with "
                                f"{', '.join(missing)} (SQLiteTwoPhaseSink has them)")

    @property
    def sink(self) -> TwoPhaseCommitSink:
        assert self._sink is not None
        return self._sink

    def _hit(self, point: str) -> None:
        if self._ctx is not None:
            faultpoints.hit(self._ctx.workdir, point.format(sink=self.name))

    def process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        row = self.row
        rows = records if row is _identity else [row(r) for r in records]
        if self._autocommit:
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
            self._hit(faultpoints.SINK_BEFORE_PRECOMMIT)
            if not self._replicated:
                with self._lock:
                    sink.precommit(checkpoint_id, rows)
                return WrittenSnapshot((), {"precommitted": checkpoint_id, "rows": len(rows),
                                            **self.metadata})
            # The segment first: a pre-commit that fails after it leaves a chunk no
            # manifest names; the other order would stage rows that are handed back too.
            staged = sink.above_replay_floor(rows)  # type: ignore[attr-defined]
            ref = store.put_chunk(encode_segment(checkpoint_id, [r[1:] for r in staged]))
            with self._lock:
                sink.precommit(checkpoint_id, staged)
            self._segments.append((checkpoint_id, ref))
            return WrittenSnapshot(tuple(r for _, r in self._segments), {
                "precommitted": checkpoint_id, "rows": len(staged),
                REPLICA_SEGMENTS_KEY: [c for c, _ in self._segments], **self.metadata})

        def failed() -> None:
            # The pre-commit did not happen: these rows belong to the next one, ahead of
            # everything buffered since (they used to be dropped, and a later checkpoint
            # completed without them).
            self.buffer[0:0] = rows

        return SnapshotWriter(write, failed=failed)

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        self.buffer = []

    def recover(self, checkpoint_id: int, fencing_epoch: int, watermark: int) -> None:
        self._epoch = fencing_epoch
        with self._lock:
            self.sink.recover(checkpoint_id, fencing_epoch, watermark)
        self._segments = []  # committed up to the checkpoint; everything after discarded

    def checkpoint_complete(self, checkpoint_id: int, fencing_epoch: int, watermark: int) -> None:
        # Between pre-commit (acknowledged) and commit: the window 2PC exists for.
        self._hit(faultpoints.SINK_BEFORE_COMMIT)
        with self._lock:
            self.sink.commit(checkpoint_id, fencing_epoch, watermark)
        self._segments = [(c, r) for c, r in self._segments if c > checkpoint_id]

    def export_copy(self, dest: Path) -> SinkProgress:
        """A whole copy of the sink's database at `dest`, for a standby's bootstrap."""
        with self._lock:
            progress: SinkProgress = self.sink.export_copy(dest)  # type: ignore[attr-defined]
        return progress

    def end_of_input(self) -> list[Any]:
        return []

    def close(self) -> None:
        close = getattr(self._sink, "close", None)
        if callable(close):
            close()
