"""A small generic job with a multi-input stateful stage: running sums per key.

    sequence source -> spread x P (stateless) -> sums x Q (keyed state; P inputs each)
                    -> SQLite sink (two-phase commit)

Record i is ``(i, key, value)`` with ``key = "k<(i * 2654435761) mod K>"`` and
``value = i mod 97 + 1``; the source's state is just the next i. The sums stage
aligns barriers over P input channels, which is where bounded alignment and
unaligned checkpoints (in-flight channel state) are exercised; the payments job has
no such stage. Output table ``sums(i, key, value, sum_after)``. Records from different
spread tasks interleave in no fixed order, so `check_sums` checks what must hold
whatever the order: every i exactly once, and each key's sum_after chain.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from resilience.pipeline import (
    CheckpointConfig,
    CheckpointStore,
    JobDefinition,
    JobOptions,
    KeyedState,
    KeyGroupRange,
    OperatorContext,
    PipelineSpec,
    QuarantineBudget,
    SinkOperator,
    SnapshotWriter,
    SQLiteTwoPhaseSink,
    StageSpec,
    StateHandle,
    TaskSnapshot,
    WrittenSnapshot,
)

__all__ = ["JOB", "SumsOptions", "check_sums", "keyed_sums_pipeline", "pipeline", "record"]


def record(i: int, keys: int) -> tuple[int, str, int]:
    """Record number i of the sequence."""
    return i, f"k{(i * 2654435761) % keys}", i % 97 + 1


class SequenceSource:
    """Emits records 0..total-1; rewindable (its state is the next index)."""

    def __init__(self, total: int, keys: int) -> None:
        self.total = total
        self.keys = keys
        self.next = 0

    def open(self, ctx: OperatorContext) -> None:
        pass

    def poll(self, max_records: int) -> tuple[list[Any], bool]:
        end = min(self.next + max_records, self.total)
        out = [record(i, self.keys) for i in range(self.next, end)]
        self.next = end
        return out, end >= self.total

    def watermark(self) -> int:
        return self.next

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        position = self.next
        return SnapshotWriter(lambda store: WrittenSnapshot((), {"watermark": position}))

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        self.next = int(snapshots[0].metadata["watermark"]) if snapshots else 0


class Spread:
    """Stateless pass-through (its parallelism makes the next stage multi-input).

    `lag_s` delays every batch of task 1: its channel then runs behind, so barriers
    reach the sums stage at different times and records are caught in flight.
    """

    def __init__(self, lag_s: float = 0.0) -> None:
        self.lag_s = lag_s
        self.index = 0

    def open(self, ctx: OperatorContext) -> None:
        self.index = ctx.index

    def process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        if self.lag_s and self.index == 1:
            time.sleep(self.lag_s)  # a deliberately slow task, not a wait for a condition
        return list(records)

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        return SnapshotWriter(lambda store: WrittenSnapshot((), {}))

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        pass

    def end_of_input(self) -> list[Any]:
        return []


class Sums:
    """Running sum per key (incremental keyed state)."""

    def __init__(self) -> None:
        self.state = KeyedState()

    def open(self, ctx: OperatorContext) -> None:
        self.state = KeyedState(KeyGroupRange.for_task(ctx.index, ctx.parallelism))

    def process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        out = []
        for i, key, value in records:
            total = self.state.get(key, 0) + value
            self.state.put(key, total)
            out.append((i, key, value, total))
        return out

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        delta = self.state.begin_snapshot(checkpoint_id)

        def write(store: CheckpointStore) -> WrittenSnapshot:
            handle = delta.write(store)
            return WrittenSnapshot(handle.chunks, dict(handle.metadata))

        return SnapshotWriter(write, failed=lambda: self.state.snapshot_failed(delta))

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        if not snapshots:
            self.state.reset()
        else:
            self.state.restore(store, [StateHandle(s.chunks, s.metadata) for s in snapshots])

    def end_of_input(self) -> list[Any]:
        return []


def _open_sums(ctx: OperatorContext) -> SQLiteTwoPhaseSink:
    sink = SQLiteTwoPhaseSink(
        ctx.workdir / "sums.sqlite", table="sums", sink_id=ctx.job_id,
        columns=(("i", "INTEGER"), ("key", "TEXT"), ("value", "INTEGER"),
                 ("sum_after", "INTEGER")),
    )
    sink.open()
    return sink


def _sums_row(r: Any) -> Any:
    return (r[0], *r)  # the record index is the ordinal


def sums_sink() -> SinkOperator:
    return SinkOperator(_open_sums, name="sink", row=_sums_row)


def _by_index(r: Any) -> str:
    return str(r[0])


def _by_key(r: Any) -> str:
    return str(r[1])


@dataclass(frozen=True)
class SumsOptions:
    workdir: Path
    total: int = 100_000
    keys: int = 1_000
    spread: int = 2
    sums: int = 2
    checkpoint_interval_s: float = 0.3
    alignment_timeout_s: float | None = 0.0
    job_id: str = "keyed-sums"
    batch_size: int = 1000
    lag_s: float = 0.0


def keyed_sums_pipeline(opts: SumsOptions) -> PipelineSpec:
    workdir = opts.workdir.resolve()
    return PipelineSpec(
        job_id=opts.job_id, workdir=workdir, store_uri=str(workdir / "checkpoints"),
        checkpoint=CheckpointConfig(interval_s=opts.checkpoint_interval_s),
        alignment_timeout_s=opts.alignment_timeout_s, batch_size=opts.batch_size,
        stages=[
            StageSpec("source", partial(SequenceSource, opts.total, opts.keys), is_source=True),
            StageSpec("spread", partial(Spread, opts.lag_s), parallelism=opts.spread,
                      upstream=["source"], key=_by_index),
            StageSpec("sums", Sums, parallelism=opts.sums, upstream=["spread"], key=_by_key),
            StageSpec("sink", sums_sink, upstream=["sums"], commits=True),
        ],
    )


def check_sums(workdir: Path, total: int, keys: int) -> list[str]:
    """Problems in the output (empty when exactly once); recomputes from `record`."""
    problems: list[str] = []
    with sqlite3.connect(workdir / "sums.sqlite") as db:
        rows = db.execute("SELECT i, key, value, sum_after FROM sums ORDER BY rowid").fetchall()
    seen: dict[int, int] = {}
    for i, _, _, _ in rows:
        seen[i] = seen.get(i, 0) + 1
    missing = [i for i in range(total) if i not in seen]
    dupes = [i for i, n in seen.items() if n > 1]
    if missing:
        problems.append(f"{len(missing)} records missing, e.g. {missing[:5]}")
    if dupes:
        problems.append(f"{len(dupes)} records applied twice, e.g. {dupes[:5]}")
    running: dict[str, int] = {}
    for i, key, value, sum_after in rows:
        expect = record(i, keys)
        if (key, value) != expect[1:]:
            problems.append(f"record {i} altered: {(key, value)} != {expect[1:]}")
            break
        running[key] = running.get(key, 0) + value
        if sum_after != running[key]:
            problems.append(f"key {key}: sum_after {sum_after} at record {i}, "
                            f"expected {running[key]}")
            break
    return problems


def pipeline(options: JobOptions) -> PipelineSpec:
    """`JobDefinition.pipeline`: settings `total` (records) and `keys`."""
    spec = keyed_sums_pipeline(SumsOptions(
        workdir=options.workdir, total=int(options.settings.get("total", 100_000)),
        keys=int(options.settings.get("keys", 1_000)), spread=options.parallelism,
        sums=options.parallelism,
        checkpoint_interval_s=options.checkpoint_interval_s or 0.3,
        job_id=options.job_id, batch_size=options.batch_size))
    return dataclasses.replace(spec, run_id=options.run_id,
                               quarantine=QuarantineBudget(max_records=options.max_quarantined))


JOB = JobDefinition(
    name="keyed-sums",
    pipeline=pipeline,
    description="running sums per key over a generated sequence (no input file)",
    needs_input=False,
    settings={"total": "records to generate (default 100000)",
              "keys": "distinct keys (default 1000)"},
)
