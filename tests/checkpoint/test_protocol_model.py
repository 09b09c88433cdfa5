"""The protocol property: random interleavings of barriers, acks, crashes and restores
never commit an epoch twice or lose one.

An in-process model of a small pipeline built from the real checkpoint code:

    source (a list of (key, value) records; ordinal = position)
      -> op-0 .. op-{P-1}  (real KeyedState summing values per key, routed by partition_of;
                            a value of RESET deletes the key)
      -> sink              (real BarrierAligner over P channels, real SQLiteTwoPhaseSink)

driven by a real CoordinatorCore, with snapshots in a real FileSystemStore and
real Manifests; "etcd" (the committed checkpoint records, the leader's fencing
epoch and the pipeline generation) is a dict. Channels are FIFO queues whose
messages carry the sender's generation, as in the runtime; a task drops
messages of another generation. Snapshot writes run as separate steps, in
order per task, like the runtime's writer thread.

Hypothesis picks the interleaving: deliver a message, emit a record, trigger a
checkpoint, run a background write (which may fail), process an ack, write the
manifest / commit the record / notify the sink as three separate steps, let
the clock run (expiring checkpoints), crash a task, crash the coordinator
(its pending checkpoints and half-done completions vanish; a deposed
coordinator may still deliver a sink notification later), corrupt the newest
committed checkpoint, and restore globally (skipping corrupt checkpoints).
Then everything drains without faults and the committed output is checked
against the crash-free result.

What the model assumes of the runtime (and the runtime must therefore do):
the generation survives a coordinator restart (here: kept in "etcd"), the
sink aligns every checkpoint (see the xfail test at the end), and a restore
lets old-generation snapshot writes finish before the tasks reset.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections import deque
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkpoint import (
    BarrierAligner,
    CheckpointCompleted,
    CheckpointConfig,
    CheckpointCorrupt,
    CheckpointError,
    ChunkRef,
    CompactionPolicy,
    CompleteSnapshot,
    CoordinatorCore,
    Deliver,
    FencedOut,
    FileSystemStore,
    KeyedState,
    KeyGroupRange,
    Manifest,
    RecordInFlight,
    SQLiteTwoPhaseSink,
    StateHandle,
    Step,
    StoreWriteError,
    TakeSnapshot,
    TaskSnapshot,
    partition_of,
)

JOB = "model"
KEYS = ("k0", "k1", "k2", "k10", "k11", "a")  # three per operator task when P = 2
SINK_COLUMNS = (("ord", "INTEGER"), ("key", "TEXT"), ("total", "INTEGER"),
                ("checkpoint", "INTEGER"))
RESET = 0  # a record with this value deletes its key from the keyed state
# The model exercises the protocol, not the disk: a RAM filesystem, when there is one,
# spares hundreds of fsyncs per example.
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
CONFIG = CheckpointConfig(interval_s=1.0, timeout_s=5.0, after_restore_s=0.0)

@dataclass(frozen=True)
class Msg:
    generation: int
    kind: str  # "rec" or "barrier"
    payload: Any


@dataclass
class CommitRecord:
    """What the coordinator commits to etcd for a checkpoint."""

    watermark: int
    fencing_epoch: int


class FaultyStore:
    """The chunk side of the real store, with a switch that fails the next chunk write."""

    def __init__(self, inner: FileSystemStore) -> None:
        self.inner = inner
        self.fail_next = False

    def put_chunk(self, data: bytes) -> ChunkRef:
        if self.fail_next:
            self.fail_next = False
            raise StoreWriteError("injected: no space left on device")
        return self.inner.put_chunk(data)

    def get_chunk(self, ref: ChunkRef) -> bytes:
        return self.inner.get_chunk(ref)


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class SourceTask:
    alive: bool = True
    generation: int = -1
    position: int = 0


@dataclass
class OpTask:
    index: int
    parallelism: int
    alive: bool = True
    generation: int = -1
    state: KeyedState | None = None
    aligner: BarrierAligner | None = None
    writes: deque[tuple[int, int, Any]] = field(default_factory=deque)
    failed: list[Any] = field(default_factory=list)  # snapshots to hand back

    @property
    def task_id(self) -> str:
        return f"op-{self.index}"

    def new_state(self) -> KeyedState:
        return KeyedState(
            KeyGroupRange.for_task(self.index, self.parallelism),
            compaction=CompactionPolicy(every_deltas=3),
        )


@dataclass
class SinkTask:
    alive: bool = True
    generation: int = -1
    aligner: BarrierAligner | None = None
    buffer: list[tuple[int, str, int]] = field(default_factory=list)
    open_unaligned: tuple[int, list[Any], list[Any]] | None = None
    writes: deque[tuple[int, int, list[Any], list[Any]]] = field(default_factory=deque)
    sink: SQLiteTwoPhaseSink | None = None


@dataclass
class Coordinator:
    core: CoordinatorCore
    fencing_epoch: int
    inbox: deque[tuple[Any, ...]] = field(default_factory=deque)
    completions: deque[list[Any]] = field(default_factory=deque)  # [done, stage]


class Pipeline:
    def __init__(self, root: Path, records: list[tuple[str, int]], parallelism: int,
                 max_concurrent: int, sink_alignment_timeout_s: float | None = None) -> None:
        self.records = records
        self.sink_alignment_timeout_s = sink_alignment_timeout_s
        self.parallelism = parallelism
        self.config = CheckpointConfig(
            interval_s=CONFIG.interval_s, timeout_s=CONFIG.timeout_s,
            after_restore_s=CONFIG.after_restore_s, max_concurrent=max_concurrent,
        )
        self.clock = FakeClock()
        self.store = FileSystemStore(root / "store", job_id=JOB, verify_existing=True)
        self.chunks = FaultyStore(self.store)
        self.sink_path = root / "sink.sqlite"
        # "etcd": durable across every crash.
        self.etcd: dict[int, CommitRecord] = {}
        self.etcd_log: list[int] = []
        self.etcd_generation = 0
        self.leader_epoch = 0
        self.task_ids = ["src", *(f"op-{i}" for i in range(parallelism)), "sink"]
        self.source = SourceTask()
        self.ops = [OpTask(i, parallelism) for i in range(parallelism)]
        self.sink = SinkTask()
        self.to_op: list[deque[Msg]] = [deque() for _ in range(parallelism)]
        self.to_sink: list[deque[Msg]] = [deque() for _ in range(parallelism)]
        self.zombies: list[tuple[int, int, int]] = []  # notifications of deposed coordinators
        self.sink_last_committed: list[int] = []  # observed after every sink commit/recover
        self.moving_commits: list[int] = []  # checkpoint ids whose commit moved rows
        self.restores: list[tuple[int, list[int]]] = []  # (restored from, skipped)
        # Highest watermark of a checkpoint the sink committed: every ordinal below is visible.
        self.visible_watermark = 0
        self.damaged: set[Path] = set()  # chunk files corrupted on purpose
        self.coordinator = self._new_coordinator()
        self.coordinator_started = False
        self.needs_restore = True
        self.restore()

    # -- plumbing ---------------------------------------------------------------------

    def _new_coordinator(self) -> Coordinator:
        """A (re)started coordinator: a new leadership epoch, generation and ids from etcd."""
        self.leader_epoch += 1
        highest = max([0, *self.store.list_checkpoints(), *self.etcd])
        core = CoordinatorCore(
            self.task_ids, self.config, clock=self.clock,
            next_checkpoint_id=highest + 1, generation=self.etcd_generation,
        )
        return Coordinator(core, self.leader_epoch)

    def _open_sink(self) -> SQLiteTwoPhaseSink:
        sink = SQLiteTwoPhaseSink(self.sink_path, table="output", columns=SINK_COLUMNS,
                                  sink_id=JOB)
        sink.open()
        return sink

    def close(self) -> None:
        if self.sink.sink is not None:
            self.sink.sink.close()

    def _live_sink(self) -> SQLiteTwoPhaseSink:
        assert self.sink.sink is not None
        return self.sink.sink

    def _observe_sink(self) -> None:
        self.sink_last_committed.append(self._live_sink().last_committed())

    # -- actions ------------------------------------------------------------------------

    def can_emit(self) -> bool:
        return self.source.alive and self.source.position < len(self.records)

    def emit(self) -> None:
        src = self.source
        key, value = self.records[src.position]
        target = partition_of(key, self.parallelism)
        if self.ops[target].alive:
            self.to_op[target].append(Msg(src.generation, "rec", (src.position, key, value)))
        src.position += 1

    def channels(self) -> list[tuple[str, int]]:
        return [("op", i) for i, q in enumerate(self.to_op) if q] + [
            ("sink", i) for i, q in enumerate(self.to_sink) if q
        ]

    def deliver(self, target: str, channel: int) -> None:
        if target == "op":
            self._deliver_op(channel, self.to_op[channel].popleft())
        else:
            self._deliver_sink(channel, self.to_sink[channel].popleft())

    def _deliver_op(self, index: int, msg: Msg) -> None:
        op = self.ops[index]
        if not op.alive or msg.generation != op.generation:
            return  # stale: another generation's push
        assert op.state is not None
        assert op.aligner is not None
        # Like the runtime's _before_input: failed snapshot writes are handed back first.
        for snap in op.failed:
            op.state.snapshot_failed(snap)
        op.failed.clear()
        if msg.kind == "rec":
            steps = op.aligner.on_records(0, [msg.payload])
        else:
            steps = op.aligner.on_barrier(0, msg.payload)
        for step in steps:
            if isinstance(step, Deliver):
                for ordinal, key, value in step.records:
                    assert op.state.owns(key)
                    if value == RESET:
                        op.state.delete(key)
                        total = 0
                    else:
                        total = op.state.get(key, 0) + value
                        op.state.put(key, total)
                    self._to_sink(index, Msg(op.generation, "rec", (ordinal, key, total)))
            else:
                assert isinstance(step, TakeSnapshot)
                assert not step.unaligned  # one input channel
                snap = op.state.begin_snapshot(step.checkpoint_id)
                op.writes.append((op.generation, step.checkpoint_id, snap))
                self._to_sink(index, Msg(op.generation, "barrier", step.checkpoint_id))

    def _to_sink(self, channel: int, msg: Msg) -> None:
        if self.sink.alive:
            self.to_sink[channel].append(msg)

    def _deliver_sink(self, channel: int, msg: Msg) -> None:
        sink = self.sink
        if not sink.alive or msg.generation != sink.generation:
            return
        assert sink.aligner is not None
        if msg.kind == "rec":
            self._sink_steps(sink.aligner.on_records(channel, [msg.payload]))
        else:
            self._sink_steps(sink.aligner.on_barrier(channel, msg.payload))

    def _sink_steps(self, steps: list[Step]) -> None:
        sink = self.sink
        for step in steps:
            if isinstance(step, Deliver):
                sink.buffer.extend(step.records)
            elif isinstance(step, TakeSnapshot):
                rows, sink.buffer = sink.buffer, []
                if step.unaligned:
                    sink.open_unaligned = (step.checkpoint_id, rows, [])
                else:
                    sink.writes.append((sink.generation, step.checkpoint_id, rows, []))
            elif isinstance(step, RecordInFlight):
                assert sink.open_unaligned is not None
                sink.open_unaligned[2].extend(step.records)
            elif isinstance(step, CompleteSnapshot):
                assert sink.open_unaligned is not None
                cid, rows, in_flight = sink.open_unaligned
                sink.open_unaligned = None
                sink.writes.append((sink.generation, cid, rows, in_flight))
            else:
                raise TypeError(f"unexpected step {step}")

    def trigger(self) -> None:
        coordinator = self.coordinator
        checkpoint_id = coordinator.core.trigger()
        src = self.source
        if not src.alive:
            return  # the barrier is lost with the source; the checkpoint will expire
        coordinator.inbox.append(
            ("ack", src.generation, checkpoint_id, "src",
             TaskSnapshot("src", "source", (), {"position": src.position}))
        )
        for i, op in enumerate(self.ops):
            if op.alive:
                self.to_op[i].append(Msg(src.generation, "barrier", checkpoint_id))

    def writers(self) -> list[str]:
        out = [op.task_id for op in self.ops if op.alive and op.writes]
        if self.sink.alive and self.sink.writes:
            out.append("sink")
        return out

    def run_write(self, task_id: str, fail: bool = False) -> None:
        inbox = self.coordinator.inbox
        if task_id == "sink":
            generation, cid, rows, in_flight = self.sink.writes.popleft()
            self._live_sink().precommit(cid, [(o, o, k, t, cid) for o, k, t in rows])
            inbox.append(("ack", generation, cid, "sink", TaskSnapshot(
                "sink", "sink", (),
                {"precommitted": cid, "in_flight": [list(r) for r in in_flight]},
            )))
            return
        op = self.ops[int(task_id.removeprefix("op-"))]
        generation, cid, snap = op.writes.popleft()
        self.chunks.fail_next = fail
        try:
            handle = snap.write(self.chunks)
        except CheckpointError as e:  # injected, or a corrupt chunk read while compacting
            op.failed.append(snap)
            inbox.append(("decline", generation, cid, task_id, repr(e)))
            return
        finally:
            self.chunks.fail_next = False
        inbox.append(("ack", generation, cid, task_id,
                      TaskSnapshot(task_id, "keyed", handle.chunks, dict(handle.metadata))))

    def process_inbox(self) -> None:
        coordinator = self.coordinator
        kind, generation, cid, task_id, payload = coordinator.inbox.popleft()
        if kind == "ack":
            done = coordinator.core.ack(generation, cid, task_id, payload)
            if done is not None:
                coordinator.completions.append([done, "manifest"])
        else:
            coordinator.core.decline(generation, cid, task_id, payload)

    @staticmethod
    def watermark(done: CheckpointCompleted) -> int:
        """The source position at the barrier, as the runtime records it."""
        return int(done.acks["src"].metadata["position"])

    def finish_step(self) -> None:
        """One step of the oldest completion: manifest, then etcd record, then sink notify."""
        coordinator = self.coordinator
        entry = coordinator.completions[0]
        done, stage = entry
        if stage == "manifest":
            manifest = Manifest(
                job_id=JOB, checkpoint_id=done.checkpoint_id,
                fencing_epoch=coordinator.fencing_epoch, code_version="model",
                schema_version=1, created_at=self.clock.now, duration_s=done.duration_s,
                tasks=dict(done.acks),
            )
            self.store.put_manifest(manifest)
            entry[1] = "etcd"
        elif stage == "etcd":
            assert coordinator.fencing_epoch == self.leader_epoch  # etcd fences the deposed
            self.check_consistent(done)
            self.etcd[done.checkpoint_id] = CommitRecord(self.watermark(done),
                                                         coordinator.fencing_epoch)
            self.etcd_log.append(done.checkpoint_id)
            coordinator.core.committed(done.checkpoint_id)
            entry[1] = "notify"
        else:
            coordinator.completions.popleft()
            if self.sink.alive:
                self._sink_commit(done.checkpoint_id, coordinator.fencing_epoch,
                                  self.etcd[done.checkpoint_id].watermark, zombie=False)

    def expected_state(self, position: int) -> dict[str, int]:
        """The keyed state after the first `position` records, crash-free."""
        running: dict[str, int] = {}
        for key, value in self.records[:position]:
            if value == RESET:
                running.pop(key, None)
            else:
                running[key] = running.get(key, 0) + value
        return running

    def _still_damaged(self, ref: ChunkRef) -> bool:
        """Whether `ref` is a chunk this test corrupted and no later write repaired."""
        if self.store.chunk_path(ref) not in self.damaged:
            return False
        try:
            self.store.get_chunk(ref)
        except CheckpointCorrupt:
            return True
        return False

    def check_consistent(self, done: CheckpointCompleted) -> None:
        """A complete checkpoint is a consistent cut (checked before it is committed).

        With W its watermark: the operator snapshots restore to exactly the
        crash-free state after the first W records, and the sink's visible rows
        plus the rows staged up to this checkpoint are exactly ordinals 0..W-1
        (or up to the highest watermark the sink ever committed, if that is
        higher: after a fallback to an older checkpoint, until the replay catches
        up), but for the records in flight at an unaligned sink snapshot.
        """
        watermark = self.watermark(done)
        restored: dict[str, int] = {}
        intact = True
        for op in self.ops:
            snap = done.acks[op.task_id]
            # An incremental chain goes on referencing a chunk damaged on disk since it
            # was written: such a checkpoint cannot be restored (restore skips it).
            intact = intact and not any(self._still_damaged(r) for r in snap.chunks)
            if intact:
                state = op.new_state()
                state.restore(self.store, [StateHandle(snap.chunks, snap.metadata)])
                restored.update(state.items())
        assert not intact or restored == self.expected_state(watermark), (
            f"checkpoint {done.checkpoint_id}: operator state is not the state at {watermark}"
        )
        with closing(sqlite3.connect(self.sink_path)) as db:
            visible = [r[0] for r in db.execute("SELECT ord FROM output")]
            staged = [r[0] for r in db.execute(
                "SELECT ord FROM _staging_output WHERE ckpt <= ?", (done.checkpoint_id,))]
        high = max(watermark, self.visible_watermark)
        in_flight = {int(r[0]) for r in done.acks["sink"].metadata["in_flight"]}
        assert sorted(visible + staged) == [o for o in range(high) if o not in in_flight], (
            f"checkpoint {done.checkpoint_id}: sink output is not ordinals 0..{high - 1}"
        )

    def _sink_commit(self, cid: int, epoch: int, watermark: int, *, zombie: bool) -> None:
        assert cid in self.etcd, "only a committed checkpoint is announced to the sink"
        sink = self._live_sink()
        before = sink.last_committed()
        try:
            moved = sink.commit(cid, epoch, watermark)
        except FencedOut:
            assert zombie, "the current leader was fenced out"
            return
        if moved:
            assert cid > before
            self.moving_commits.append(cid)
        if cid > before:
            self.visible_watermark = max(self.visible_watermark, watermark)
        self._observe_sink()

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.coordinator.core.expire()
        if self.sink.alive:
            assert self.sink.aligner is not None
            self._sink_steps(self.sink.aligner.poll())

    def zombie_notify(self) -> None:
        cid, epoch, watermark = self.zombies.pop(0)
        if self.sink.alive:
            self._sink_commit(cid, epoch, watermark, zombie=True)

    # -- faults -------------------------------------------------------------------------

    def stuck_write_fails(self, task_id: str) -> None:
        """A snapshot write hangs past the checkpoint timeout, then fails.

        Meanwhile the checkpoint expires, the next one is triggered and its
        barrier reaches the task, which begins another snapshot before it hears
        of the failure.
        """
        self.advance(self.config.timeout_s)
        if self.can_trigger():
            self.trigger()
        self.flush_channels()
        self.run_write(task_id, fail=True)

    def crash_task(self, task_id: str) -> None:
        """The task's process dies: its mailbox, pending writes and memory vanish."""
        if task_id == "src":
            self.source.alive = False
        elif task_id == "sink":
            sink = self.sink
            sink.alive = False
            for q in self.to_sink:
                q.clear()
            sink.writes.clear()
            sink.buffer = []
            sink.open_unaligned = None
            if sink.sink is not None:
                sink.sink.close()
                sink.sink = None
        else:
            op = self.ops[int(task_id.removeprefix("op-"))]
            op.alive = False
            self.to_op[op.index].clear()
            op.writes.clear()
            op.failed.clear()
            op.state = None
        self.needs_restore = True

    def crash_coordinator(self, completion_steps: int = 0) -> None:
        """Pending checkpoints and half-done completions vanish; a new leader takes over.

        `completion_steps` steps of the oldest completion run first, so the crash
        can fall after the manifest write, or after the etcd record but before
        the sink notification: a completion in that state may still be sent by
        the deposed process (a zombie).
        """
        old = self.coordinator
        for _ in range(completion_steps):
            if old.completions and old.completions[0][1] != "notify":
                self.finish_step()
        for done, stage in old.completions:
            if stage == "notify":
                self.zombies.append((done.checkpoint_id, old.fencing_epoch,
                                     self.etcd[done.checkpoint_id].watermark))
        self.coordinator = self._new_coordinator()
        self.needs_restore = True
        self.coordinator_started = False  # it restores before it triggers anything

    def corrupt_newest(self, what: str, pick: int) -> None:
        """Damage the newest committed checkpoint; the crash that follows finds it."""
        newest = max(self.etcd)
        if what == "manifest":
            path = self.store.manifest_path(newest)
        else:
            try:
                manifest = self.store.get_manifest(newest)
            except CheckpointError:
                return
            refs = sorted(manifest.chunk_refs())
            if not refs:
                return
            path = self.store.chunk_path(refs[pick % len(refs)])
        data = bytearray(path.read_bytes())
        data[pick % len(data)] ^= 0x20
        path.write_bytes(bytes(data))
        if what == "chunk":
            self.damaged.add(path)
        self.needs_restore = True

    # -- restore ------------------------------------------------------------------------

    def restore(self) -> None:
        """Global restore from the newest committed checkpoint that verifies."""
        coordinator = self.coordinator
        # The coordinator finishes what it started before it restores (one thread).
        while coordinator.completions:
            self.finish_step()
        # Old-generation snapshot writes finish before the tasks reset (runtime: the
        # writer thread is drained); their acks are stale by then.
        for task_id in self.writers():
            while task_id in self.writers():
                self.run_write(task_id)
        highest = max([0, *self.store.list_checkpoints(), *self.etcd,
                       coordinator.core.next_checkpoint_id - 1])
        skipped: list[int] = []
        for candidate in [*sorted(self.etcd, reverse=True), 0]:
            generation = coordinator.core.restored(candidate, highest_id_seen=highest)
            self.etcd_generation = generation  # durable: a new coordinator goes on from it
            try:
                manifest = self.store.get_manifest(candidate) if candidate else None
                states = []
                for op in self.ops:
                    state = op.new_state()
                    if manifest is not None:
                        snap = manifest.tasks[op.task_id]
                        state.restore(self.store, [StateHandle(snap.chunks, snap.metadata)])
                    states.append(state)
            except CheckpointError:
                skipped.append(candidate)
                continue
            break
        self.restores.append((candidate, skipped))
        src = self.source
        src.alive = True
        src.generation = generation
        src.position = 0 if manifest is None else int(manifest.tasks["src"].metadata["position"])
        for op, state in zip(self.ops, states, strict=True):
            op.alive = True
            op.generation = generation
            op.state = state
            op.aligner = BarrierAligner(1, clock=self.clock)
            op.writes.clear()
            op.failed.clear()
        sink = self.sink
        if sink.sink is None:
            sink.sink = self._open_sink()
        sink.alive = True
        sink.generation = generation
        sink.aligner = BarrierAligner(self.parallelism, clock=self.clock,
                                      alignment_timeout_s=self.sink_alignment_timeout_s)
        sink.open_unaligned = None
        sink.writes.clear()
        # Replay the sink's channel state (records in flight at an unaligned checkpoint).
        sink.buffer = [] if manifest is None else [
            (int(o), str(k), int(t)) for o, k, t in manifest.tasks["sink"].metadata["in_flight"]
        ]
        watermark = self.etcd[candidate].watermark if candidate else 0
        if candidate > sink.sink.last_committed():
            self.visible_watermark = max(self.visible_watermark, watermark)
        sink.sink.recover(candidate, coordinator.fencing_epoch, watermark)
        self._observe_sink()
        self.needs_restore = False
        self.coordinator_started = True

    def can_trigger(self) -> bool:
        return self.coordinator_started and self.coordinator.core.due()

    # -- draining and checking ----------------------------------------------------------

    def flush_channels(self) -> None:
        """Deliver everything in flight, but run no snapshot write: snapshots pile up."""
        while self.channels():
            for target, channel in self.channels():
                self.deliver(target, channel)

    def run_until_idle(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            while self.can_emit():
                self.emit()
                progressed = True
            for target, channel in self.channels():
                self.deliver(target, channel)
                progressed = True
            for task_id in self.writers():
                self.run_write(task_id)
                progressed = True
            while self.coordinator.inbox:
                self.process_inbox()
                progressed = True
            while self.coordinator.completions:
                self.finish_step()
                progressed = True
            while self.zombies:
                self.zombie_notify()
                progressed = True

    def finished(self) -> bool:
        sink = self.sink
        return (
            not self.needs_restore
            and self.source.position == len(self.records)
            and not self.channels()
            and not self.writers()
            and not self.coordinator.inbox
            and not self.coordinator.completions
            and not self.coordinator.core.pending
            and not sink.buffer
            and sink.open_unaligned is None
            and self._live_sink().staged_count() == 0
            and bool(self.etcd)
            and self._live_sink().last_committed() == max(self.etcd)
        )

    def drain(self) -> None:
        for _ in range(200):
            if self.needs_restore:
                self.restore()
            self.run_until_idle()
            if self.finished():
                return
            self.advance(self.config.timeout_s + self.config.interval_s)
            if self.can_trigger():
                self.trigger()
        raise AssertionError("the pipeline made no progress without faults")

    def check(self) -> None:
        sink = self._live_sink()
        rows = list(sink.rows())
        ordinals = sorted(r[0] for r in rows)
        assert ordinals == list(range(len(self.records))), "lost or duplicated output"
        running: dict[str, int] = {}
        expected_totals: dict[int, tuple[str, int]] = {}
        for ordinal, (key, value) in enumerate(self.records):
            running[key] = 0 if value == RESET else running.get(key, 0) + value
            expected_totals[ordinal] = (key, running[key])
        for ordinal, key, total, cid in rows:
            assert (key, total) == expected_totals[ordinal], f"wrong sum at ordinal {ordinal}"
            # Rows precommitted for an aborted checkpoint become visible with the next
            # complete one (whose snapshot covers them), never on their own.
            assert cid <= max(self.etcd), f"row of checkpoint {cid}, after every complete one"
        # Final per-key sums: in the output and in the live keyed state.
        last_total: dict[str, int] = {}
        for _, key, total, _ in sorted(rows):
            last_total[key] = total
        assert last_total == running
        live: dict[str, int] = {}
        for op in self.ops:
            assert op.state is not None
            live.update(op.state.items())
        assert live == {k: v for k, v in running.items() if v != 0}
        # Commits only move forward: no checkpoint's rows are committed twice.
        assert self.etcd_log == sorted(set(self.etcd_log))
        assert self.sink_last_committed == sorted(self.sink_last_committed)
        assert self.moving_commits == sorted(set(self.moving_commits))


BASIC = ("emit", "deliver", "write", "inbox", "finish")
ACTIONS = (
    *(["step"] * 12), *(["write"] * 3), *(["tick"] * 3), "flush", "flush", "settle",
    "advance", "stuck_write", "crash_task", "crash_coordinator",
    "restore", "restore", "corrupt", "zombie",
)


def _enabled_basic(p: Pipeline) -> list[str]:
    enabled = {
        "emit": p.can_emit(),
        "deliver": bool(p.channels()),
        "write": bool(p.writers()),
        "stuck_write": any(w != "sink" for w in p.writers()),
        "inbox": bool(p.coordinator.inbox),
        "finish": bool(p.coordinator.completions),
    }
    return [name for name in BASIC if enabled[name]]


def _enabled(p: Pipeline) -> list[str]:
    enabled = {
        "step": bool(_enabled_basic(p)),
        "write": bool(p.writers()),
        "stuck_write": any(w != "sink" for w in p.writers()),
        "corrupt": bool(p.etcd),
        "zombie": bool(p.zombies),
    }
    return [name for name in ACTIONS if enabled.get(name, True)]


def _act(p: Pipeline, name: str, data: st.DataObject) -> None:
    if name == "step":
        name = data.draw(st.sampled_from(_enabled_basic(p)), label="step")

    def corrupt() -> None:
        p.corrupt_newest(
            data.draw(st.sampled_from(["manifest", "chunk"]), label="what"),
            data.draw(st.integers(0, 10**6), label="pick"),
        )
        if data.draw(st.booleans(), label="crash finds it now"):
            p.restore()

    def tick() -> None:
        p.advance(CONFIG.interval_s)
        if p.can_trigger():
            p.trigger()

    actions: dict[str, Callable[[], None]] = {
        "emit": p.emit,
        "deliver": lambda: p.deliver(*data.draw(st.sampled_from(p.channels()), label="channel")),
        "write": lambda: p.run_write(
            data.draw(st.sampled_from(p.writers()), label="writer"),
            fail=data.draw(st.integers(0, 2), label="fail") == 0,
        ),
        "inbox": p.process_inbox,
        "finish": p.finish_step,
        "settle": p.run_until_idle,
        "stuck_write": lambda: p.stuck_write_fails(
            data.draw(st.sampled_from([w for w in p.writers() if w != "sink"]), label="op")),
        "flush": p.flush_channels,
        "tick": tick,
        "advance": lambda: p.advance(data.draw(st.sampled_from([0.5, 5.0]), label="s")),
        "crash_task": lambda: p.crash_task(data.draw(st.sampled_from(p.task_ids), label="t")),
        "crash_coordinator": lambda: p.crash_coordinator(
            data.draw(st.integers(0, 2), label="completion steps first")),
        "restore": p.restore,
        "corrupt": corrupt,
        "zombie": p.zombie_notify,
    }
    actions[name]()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(st.tuples(st.sampled_from(KEYS), st.integers(RESET, 9)), min_size=1,
                     max_size=20),
    parallelism=st.sampled_from([1, 2]),
    max_concurrent=st.sampled_from([1, 2, 3]),
    data=st.data(),
)
def test_interleavings_of_barriers_acks_crashes_and_restores_are_exactly_once(
    records: list[tuple[str, int]], parallelism: int, max_concurrent: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory(prefix="protocol-model-", dir=SCRATCH) as root:
        p = Pipeline(Path(root), records, parallelism, max_concurrent)
        try:
            for _ in range(data.draw(st.integers(0, 80), label="steps")):
                _act(p, data.draw(st.sampled_from(_enabled(p)), label="action"), data)
            p.drain()
            p.check()
        finally:
            p.close()


def test_keys_spread_over_both_operator_tasks() -> None:
    # Otherwise P = 2 leaves one operator and one sink channel without records.
    assert sorted(partition_of(k, 2) for k in KEYS) == [0, 0, 0, 1, 1, 1]


@pytest.mark.xfail(strict=True, reason=(
    "known design gap: the sink's replay floor assumes the committed output is every "
    "ordinal below the committed watermark, which an unaligned snapshot at (or before) "
    "the sink breaks; a fallback past it then loses the records that were in flight"
))
def test_fallback_past_an_unaligned_sink_checkpoint_is_exactly_once(tmp_path: Path) -> None:
    """Unaligned checkpoint 1 at the sink, committed, then found corrupt: restore from 0.

    Record 0 (slow channel) is in flight at checkpoint 1, so it commits with a
    later checkpoint; record 1 (fast channel) commits with checkpoint 1, whose
    watermark is 2. Falling back past checkpoint 1 sets the replay floor to 2
    and the replayed record 0 is dropped although it was never visible. (With
    the lowest in-flight ordinal as the watermark instead, record 1 would be
    committed twice.)
    """
    slow = next(k for k in KEYS if partition_of(k, 2) == 1)
    fast = next(k for k in KEYS if partition_of(k, 2) == 0)
    p = Pipeline(tmp_path, [(slow, 1), (fast, 1), (slow, 2)], 2, 1, sink_alignment_timeout_s=1.0)
    try:
        p.emit()
        p.emit()
        p.advance(CONFIG.interval_s)
        p.trigger()
        p.emit()
        while p.to_op[0]:
            p.deliver("op", 0)
        while p.to_sink[0]:
            p.deliver("sink", 0)
        p.advance(1.0)  # alignment times out: the sink snapshots unaligned
        p.run_until_idle()
        assert p.etcd_log == [1]
        assert [r[0] for r in p._live_sink().rows()] == [1]
        p.corrupt_newest("manifest", 0)
        p.restore()
        assert p.restores[-1] == (0, [1])
        p.drain()
        p.check()
    finally:
        p.close()
