"""The task actor: hosts one operator, aligns barriers, snapshots in the background.

Data moves by push: an upstream task calls ``push`` on its downstream tasks.
Ray executes the calls of one caller on a single-threaded actor in submission
order, so every channel is FIFO. Each push carries the pipeline *generation*;
after a global restore the generation changes and everything in flight from
before is dropped on arrival.

Backpressure: each output keeps at most `window` pushes in flight per
downstream task and waits for the oldest before sending more. Waiting is also
how a task learns that a downstream task died (the push fails): it then stops,
reports the failure to the coordinator and drops its input until restored.

A task that Ray restarts after a crash comes back empty and *unrestored*
(generation -1): it drops every push until the coordinator restores it.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import resource
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import ray

from checkpoint import (
    BarrierAligner,
    CheckpointError,
    CheckpointStore,
    ChunkRef,
    CompleteSnapshot,
    Deliver,
    EndOfInput,
    IncompatibleState,
    RecordInFlight,
    Step,
    TakeSnapshot,
    TaskSnapshot,
    store_from_uri,
)
from resilience import faultpoints
from resilience._errors import JobFailed
from resilience._runtime._operator import (
    OperatorContext,
    SnapshotWriter,
    has_commit_hooks,
)
from resilience._runtime._output import DownstreamLost, Output
from resilience._runtime._poison import describe_record, record_digest
from resilience._runtime._spec import TaskSpec
from resilience.clock import ProjectClock

__all__ = ["TaskActor", "split_snapshot"]

log = logging.getLogger(__name__)

UNRESTORED = -1


def split_snapshot(snapshot: TaskSnapshot) -> tuple[TaskSnapshot, ChunkRef | None]:
    """Separate the operator's part of a task snapshot from the task's channel state.

    Returns the operator's snapshot and the chunk of in-flight records of an
    unaligned checkpoint (None for an aligned one).
    """
    meta = snapshot.metadata
    chunks = snapshot.chunks
    channel_ref = chunks[-1] if meta.get("channel_state") else None
    op_chunks = chunks[:-1] if channel_ref is not None else chunks
    op = TaskSnapshot(snapshot.task_id, snapshot.kind, op_chunks, dict(meta.get("op", {})))
    return op, channel_ref


class OperatorFailed(Exception):
    """The operator raised while processing a batch of records (maybe a poison record)."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"stage {stage}: {_one_line(error)}")


class PoisonRecord(Exception):
    """One record, processed alone, made the operator raise."""

    def __init__(self, stage: str, channel: int, record: Any, error: BaseException) -> None:
        self.entry: dict[str, Any] = {
            "stage": stage,
            "channel": channel,
            "digest": record_digest(record),
            "record": describe_record(record),
            "error": _one_line(error),
        }
        super().__init__(f"stage {stage}: record {self.entry['digest'][:12]} "
                         f"({self.entry['record'][:120]}) fails alone: {self.entry['error']}")


# Errors a retry can cure (a full disk, an I/O error, a locked database): the task
# declines that checkpoint and goes on. Anything else (a value that does not encode)
# would fail every later snapshot too: the task fails and the job restores.
TRANSIENT_WRITE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, CheckpointError, sqlite3.OperationalError)


class SnapshotDebt:
    """Whether a snapshot may complete a checkpoint, given the writes that failed before it.

    A failed write's changes are handed back to the operator (`SnapshotWriter.failed`,
    on the processing thread), which puts them into its next snapshot. A snapshot
    begun before that hand-back lacks them, so it must never complete a checkpoint:
    restored, that checkpoint would silently miss the failed interval's changes
    (found as a ledger missing thousands of rows after a failed pre-commit, exit 0).
    This holds whatever the operator does with `failed`.

    Failures are counted on the writer thread, hand-backs on the processing thread;
    a snapshot remembers how many hand-backs there had been when it began. Writes run
    in the order snapshots began, so when a snapshot is written every failure counted
    so far belongs to an earlier one.
    """

    def __init__(self) -> None:
        self.failed = 0
        self.handed_back = 0

    def begin(self) -> int:
        """At a snapshot's start: the token `may_complete` needs."""
        return self.handed_back

    def may_complete(self, begun_at: int) -> bool:
        """On the writer thread: were all earlier failures handed back before it began?"""
        return self.failed <= begun_at

    def write_failed(self) -> None:
        self.failed += 1

    def hand_back(self, count: int) -> None:
        self.handed_back += count

    def reset(self) -> None:
        """After a restore (with the writer idle): the operator starts from a checkpoint."""
        self.failed = self.handed_back = 0


def _one_line(error: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    line = text.splitlines()[-1] if text else repr(error)
    return line.encode("utf-8", "backslashreplace").decode("utf-8")[:500]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


class TaskActor:
    """Ray actor hosting one operator. Created with `max_restarts=-1` by the driver."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.op = spec.factory()
        # An error here (unreadable input, bad path) must fail the job with its
        # message, not make Ray re-create the actor forever: keep it for restore().
        self._open_error: str | None = None
        try:
            self.op.open(
                OperatorContext(
                    job_id=spec.job_id,
                    task_id=spec.task_id,
                    index=spec.index,
                    parallelism=spec.parallelism,
                    workdir=spec.workdir,
                    checkpointing=spec.checkpointing,
                    replicated=spec.replicated,
                )
            )
        except Exception as e:  # noqa: BLE001
            self._open_error = f"task {spec.task_id} could not start: {e}"
        self.store: CheckpointStore = store_from_uri(
            spec.store_uri, job_id=spec.job_id,
            fault_hook=faultpoints.io_hook(spec.workdir))
        self.generation = UNRESTORED
        self.failed = False
        self.outputs = [Output(o, spec.namespace, spec.window) for o in spec.outputs]
        self.clock = ProjectClock(spec.workdir, f"task:{spec.task_id}")
        self.aligner = BarrierAligner(spec.n_inputs, alignment_timeout_s=self._alignment_timeout(),
                                      clock=self.clock.monotonic)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix=f"snapshot-{spec.task_id}")
        self._failed_writers: queue.SimpleQueue[SnapshotWriter] = queue.SimpleQueue()
        self._open_unaligned: tuple[int, SnapshotWriter, dict[int, list[Any]], int] | None = None
        self._pending_replay: list[tuple[int, list[Any]]] = []
        self._must_align: set[int] = set()  # barriers that must not go unaligned
        self._coordinator: Any = None
        self._commits = spec.commits and has_commit_hooks(self.op)
        # Poison records (see _poison.py): while isolating, records go to the operator one
        # at a time; quarantined ones are never given to it.
        self._quarantine: frozenset[str] = frozenset()
        self._isolating = False
        self.quarantined_skipped = 0
        self._debt = SnapshotDebt()
        self.records_in = 0
        self.records_out = 0
        self.snapshots = 0
        self.started_at = time.time()
        self.incarnation_restarted = bool(
            ray.get_runtime_context().was_current_actor_reconstructed
        )

    def _alignment_timeout(self) -> float | None:
        """None (always aligned) for two-phase-commit stages.

        A sink's commit of checkpoint N makes visible every record before barrier N
        at the source (the replay floor relies on it); an unaligned snapshot would
        leave the in-flight ones for N+1. So sinks align; the timeout bounds the
        alignment of stateful stages in between.
        """
        return None if self.spec.commits else self.spec.alignment_timeout_s

    # -- control plane ------------------------------------------------------------------

    def pid(self) -> int:
        return os.getpid()

    def helper_pids(self) -> dict[str, int]:
        """Other processes the operator runs (a Java stage's JVM): ``{name: pid}``."""
        get = getattr(self.op, "helper_pids", None)
        return {str(k): int(v) for k, v in get().items()} if callable(get) else {}

    def ping(self) -> dict[str, Any]:
        return {
            "task_id": self.spec.task_id,
            "pid": os.getpid(),
            "generation": self.generation,
            "failed": self.failed,
            "records_in": self.records_in,
            "records_out": self.records_out,
            "snapshots": self.snapshots,
            "restarted": self.incarnation_restarted,
            "unaligned": self.aligner.unaligned_count,
            "isolating": self._isolating,
            "quarantined_skipped": self.quarantined_skipped,
            "cpu_s": _cpu_seconds(),
        }

    @property
    def coordinator(self) -> Any:
        if self._coordinator is None:
            self._coordinator = ray.get_actor(
                self.spec.coordinator_name, namespace=self.spec.namespace
            )
        return self._coordinator

    def _on_writer(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the writer thread (after every snapshot queued before) and wait."""
        fut: Future[Any] = self.writer.submit(fn)
        return fut.result()

    def restore(
        self,
        generation: int,
        snapshots: list[TaskSnapshot],
        checkpoint_id: int,
        fencing_epoch: int,
        watermark: int,
        *,
        isolate: bool = False,
        quarantine: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Reset to `snapshots` and join `generation`. Idempotent for the same generation.

        `snapshots` is this task's own snapshot, or none (fresh start), or after a
        change of parallelism every snapshot of the stage. `isolate`: give the
        operator one record at a time until told otherwise (`end_isolation`);
        records whose digest is in `quarantine` are skipped (see _poison.py).

        Raises `CheckpointCorrupt` (from the store) when the snapshot does not
        verify: the coordinator then falls back to an older checkpoint.
        """
        if self._open_error is not None:
            raise JobFailed(self._open_error)
        self.generation = UNRESTORED  # drop input while restoring
        # Snapshot writes of the old generation must finish before the chain is reset.
        self._on_writer(lambda: None)
        while not self._failed_writers.empty():
            self._failed_writers.get_nowait()
        self._debt.reset()  # the writer is idle: no race
        self._isolating = bool(isolate)
        self._quarantine = frozenset(quarantine)
        replay: list[tuple[int, list[Any]]] = []
        parts = [split_snapshot(s) for s in snapshots]
        self.op.restore(self.store, [op for op, _ in parts])
        channel_refs = [ref for _, ref in parts if ref is not None]
        if channel_refs and len(parts) > 1:
            raise IncompatibleState(
                f"task {self.spec.task_id}: cannot change parallelism from a checkpoint "
                "with in-flight records (unaligned); restore from an aligned one", len(parts), 1)
        for ref in channel_refs:
            doc = msgpack.unpackb(self.store.get_chunk(ref), strict_map_key=False)
            replay = [(int(c), list(recs)) for c, recs in doc]
        if self._commits:
            op = self.op
            self._on_writer(lambda: op.recover(checkpoint_id, fencing_epoch, watermark))
        for out in self.outputs:
            out.reset()
        self.aligner = BarrierAligner(
            self.spec.n_inputs, alignment_timeout_s=self._alignment_timeout(),
            clock=self.clock.monotonic,
        )
        self._open_unaligned = None
        self._must_align = set()
        self._pending_replay = replay
        self.failed = False
        self.generation = generation
        return {"task_id": self.spec.task_id, "pid": os.getpid(), "checkpoint_id": checkpoint_id,
                "notify": callable(getattr(self.op, "checkpoint_completed", None))}

    def checkpoint_completed(self, checkpoint_id: int) -> None:
        """Checkpoint `checkpoint_id` completed (sent to tasks whose operator has a
        ``checkpoint_completed`` hook, e.g. a model stage: its versions are published).
        On the actor's own thread, between two batches, like `push`."""
        hook = getattr(self.op, "checkpoint_completed", None)
        if callable(hook) and not self.failed:
            hook(checkpoint_id)

    def export_copy(self, dest: str) -> dict[str, int]:
        """A whole copy of a sink's database at `dest`, taken on the writer thread (between
        two of its commits), for a standby site's bootstrap; returns its progress."""
        export = getattr(self.op, "export_copy", None)
        if not callable(export):
            raise JobFailed(f"task {self.spec.task_id}: its operator has no export_copy")
        progress = self._on_writer(lambda: export(Path(dest)))
        return {"last_committed": int(progress.last_committed),
                "fencing_epoch": int(progress.fencing_epoch),
                "watermark": int(progress.watermark)}

    def checkpoint_complete(self, checkpoint_id: int, fencing_epoch: int, watermark: int) -> None:
        """Checkpoint is durable: let a two-phase-commit operator commit (on the writer thread)."""
        if self._commits:
            op = self.op
            self._on_writer(lambda: op.checkpoint_complete(checkpoint_id, fencing_epoch, watermark))

    # -- data plane -----------------------------------------------------------------------

    def push(  # noqa: PLR0917 - a hot Ray call: positional arguments pickle smallest
        self, generation: int, channel: int, payload: bytes, barrier: int = 0,
        eos: bool = False, must_align: bool = False,
    ) -> None:
        """Records (pickled), then maybe a barrier, then maybe end of stream, from `channel`."""
        if generation != self.generation or self.failed:
            return
        # Trusted: written by our own upstream task (Ray pickles every argument anyway).
        records: list[Any] = pickle.loads(payload) if payload else []  # noqa: S301
        try:
            self._before_input()
            aligner = self.aligner
            steps: list[Step] = []
            if records:
                self.records_in += len(records)
                steps += aligner.on_records(channel, records)
            if barrier:
                if must_align:
                    self._must_align.add(barrier)
                steps += aligner.on_barrier(channel, barrier, must_align=must_align)
            if eos:
                steps += aligner.on_end_of_stream(channel)
            if not steps and aligner.aligning:
                steps = aligner.poll()
            self._execute(steps)
            self._flush()
        except Exception as e:  # noqa: BLE001 - any failure here is reported, then restored
            self._fail(e)

    def step(
        self, generation: int, max_records: int, barrier: int = 0,
        eos: bool = False, must_align: bool = False,
    ) -> dict[str, Any]:
        """Source only: maybe snapshot (barrier), then read and emit up to `max_records`."""
        if generation != self.generation or self.failed:
            return {"stale": True}
        try:
            self._before_input()
            if barrier:
                if must_align:
                    self._must_align.add(barrier)
                self._take_snapshot(barrier, unaligned=False)
            if eos:
                for out in self.outputs:
                    out.flush(self.generation, eos=True)
                return {"read": 0, "end": True, "eos_sent": True}
            records, end = self.op.poll(max_records)
            self.records_in += len(records)
            self._emit(records)
            self._flush()
            return {"read": len(records), "end": end, "watermark": self.op.watermark()}
        except Exception as e:  # noqa: BLE001
            detail = self._fail(e)
            return {"failed": True, "error": repr(e), "detail": detail}

    def _before_input(self) -> None:
        if not self._failed_writers.empty():
            failed: list[SnapshotWriter] = []
            while not self._failed_writers.empty():
                failed.append(self._failed_writers.get_nowait())
            # Newest first: an operator that puts records back at the front of a buffer
            # then ends up with them in their original order.
            for writer in reversed(failed):
                writer.failed()
            self._debt.hand_back(len(failed))
        if self._pending_replay:
            replay, self._pending_replay = self._pending_replay, []
            for channel, recs in replay:
                self._emit(self._process(channel, recs))

    def _process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        if self._quarantine:
            quarantine = self._quarantine
            kept = [r for r in records if record_digest(r) not in quarantine]
            self.quarantined_skipped += len(records) - len(kept)
            records = kept
        if self._isolating:
            return self._process_one_by_one(channel, records)
        try:
            out: list[Any] = self.op.process(channel, records)
        except Exception as e:
            raise OperatorFailed(self.spec.stage, e) from e
        return out

    def _process_one_by_one(self, channel: int, records: Sequence[Any]) -> list[Any]:
        """Isolation: each record alone, so the one that raises is known; it raises
        `PoisonRecord` and the coordinator quarantines it."""
        op = self.op
        out: list[Any] = []
        for record in records:
            try:
                out.extend(op.process(channel, [record]))
            except Exception as e:
                raise PoisonRecord(self.spec.stage, channel, record, e) from e
        return out

    def end_isolation(self, generation: int) -> None:
        """A checkpoint completed after the restore that isolated this task: every record
        before its barrier went through alone; batches again from here."""
        if generation == self.generation:
            self._isolating = False

    def _execute(self, steps: list[Step]) -> None:
        op = self.op
        for s in steps:
            if isinstance(s, Deliver):
                self._emit(self._process(s.channel, s.records))
            elif isinstance(s, TakeSnapshot):
                self._take_snapshot(s.checkpoint_id, s.unaligned)
            elif isinstance(s, RecordInFlight):
                if self._open_unaligned is not None:
                    self._open_unaligned[2].setdefault(s.channel, []).extend(s.records)
            elif isinstance(s, CompleteSnapshot):
                if self._open_unaligned is not None:
                    cid, writer, inflight, handed_back = self._open_unaligned
                    self._open_unaligned = None
                    self._submit_snapshot(cid, writer, inflight, handed_back)
            elif isinstance(s, EndOfInput):
                self._emit(op.end_of_input())
                self._flush()
                for out in self.outputs:
                    out.flush(self.generation, eos=True)
                if not self.outputs:
                    self._report("end_of_input")

    def _emit(self, records: list[Any]) -> None:
        if records:
            self.records_out += len(records)
            for out in self.outputs:
                out.route(records)

    def _flush(self) -> None:
        for out in self.outputs:
            out.flush(self.generation)

    def _take_snapshot(self, checkpoint_id: int, unaligned: bool) -> None:
        writer = self.op.snapshot(checkpoint_id)
        handed_back = self._debt.begin()
        # Records emitted before the barrier go out with it, in the same push.
        must_align = checkpoint_id in self._must_align
        self._must_align.discard(checkpoint_id)
        for out in self.outputs:
            out.flush(self.generation, barrier=checkpoint_id, must_align=must_align)
        self.snapshots += 1
        if unaligned:
            self._open_unaligned = (checkpoint_id, writer, {}, handed_back)
        else:
            self._submit_snapshot(checkpoint_id, writer, None, handed_back)

    def _submit_snapshot(
        self, checkpoint_id: int, writer: SnapshotWriter, inflight: dict[int, list[Any]] | None,
        handed_back: int,
    ) -> None:
        """Queue the snapshot's write; `handed_back`: failures handed back when it began."""
        generation = self.generation
        spec = self.spec
        store = self.store
        coordinator = self.coordinator
        failed = self._failed_writers

        debt = self._debt

        def decline(reason: str) -> None:
            debt.write_failed()
            failed.put(writer)  # its changes go to a later snapshot
            coordinator.decline.remote(generation, checkpoint_id, spec.task_id, reason)

        def job() -> None:
            if not debt.may_complete(handed_back):
                decline("an earlier snapshot of this task failed after this one began")
                return
            try:
                written = writer.write(store)
                chunks = written.chunks
                meta: dict[str, Any] = {"op": written.metadata}
                if inflight is not None:
                    data = msgpack.packb(sorted(inflight.items()), use_bin_type=True)
                    chunks = (*chunks, store.put_chunk(data))
                    meta["channel_state"] = True
                    meta["inflight_records"] = sum(len(v) for v in inflight.values())
                snap = TaskSnapshot(spec.task_id, spec.stage, chunks, meta)
            except TRANSIENT_WRITE_ERRORS as e:
                decline(repr(e))
                return
            except Exception as e:  # noqa: BLE001 - never crash the writer thread
                # Retrying cannot help (the state does not encode, the sink refuses a
                # value): decline, and fail the task so the job restores and replays.
                decline(repr(e))
                self.failed = True
                self._report("failure", {
                    "reason": f"task {spec.task_id} cannot write its snapshot: {_one_line(e)}",
                    "kind": "error"})
                return
            coordinator.ack.remote(generation, checkpoint_id, spec.task_id, snap)

        self.writer.submit(job)

    def _fail(self, error: BaseException) -> dict[str, Any]:
        """Stop taking input and report why (what kind of failure says how to recover)."""
        self.failed = True
        detail: dict[str, Any]
        if isinstance(error, DownstreamLost):
            detail = {"reason": str(error), "kind": "crash"}
        elif isinstance(error, PoisonRecord):
            detail = {"reason": str(error), "kind": "poison", "poison": error.entry}
        elif isinstance(error, OperatorFailed):
            detail = {"reason": str(error), "kind": "operator"}
        else:
            detail = {"reason": _one_line(error), "kind": "error"}
        log.warning("task %s failed: %s", self.spec.task_id, detail["reason"])
        self._report("failure", detail)
        return detail

    def _report(self, kind: str, detail: Any = "") -> None:
        try:
            self.coordinator.report.remote(self.generation, self.spec.task_id, kind, detail)
        except Exception:  # noqa: BLE001 - the coordinator may be restarting; it will notice
            log.warning("could not report %s of %s", kind, self.spec.task_id)

    def drain(self) -> None:
        """Wait until every push this task sent has been applied downstream."""
        for out in self.outputs:
            out.drain()

    def stop(self) -> None:
        """Shut the writer thread down (end of job)."""
        self.writer.shutdown(wait=True)
        close = getattr(self.op, "close", None)
        if callable(close):
            close()

    def _threads(self) -> int:
        return threading.active_count()
