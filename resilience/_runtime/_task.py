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
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgpack
import ray
from ray.exceptions import RayActorError

from checkpoint import (
    BarrierAligner,
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
    partition_of,
    store_from_uri,
)
from resilience import faultpoints
from resilience._errors import JobFailed
from resilience._runtime._operator import (
    OperatorContext,
    SnapshotWriter,
    has_commit_hooks,
)
from resilience._runtime._spec import OutputSpec, TaskSpec
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


class DownstreamLost(Exception):
    """A push to a downstream task failed because that task is gone."""


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_utime + usage.ru_stime)


class _Output:
    """One downstream stage as seen from one upstream task."""

    def __init__(self, spec: OutputSpec, namespace: str, window: int) -> None:
        self.spec = spec
        self.namespace = namespace
        self.window = window
        n = len(spec.actor_names)
        self._handles: list[Any] | None = None
        self.buffers: list[list[Any]] = [[] for _ in range(n)]
        self.inflight: list[deque[Any]] = [deque() for _ in range(n)]
        self._route_cache: dict[str, int] = {}

    @property
    def handles(self) -> list[Any]:
        if self._handles is None:
            self._handles = [
                ray.get_actor(name, namespace=self.namespace) for name in self.spec.actor_names
            ]
        return self._handles

    def route(self, records: Sequence[Any]) -> None:
        buffers = self.buffers
        if len(buffers) == 1:
            buffers[0].extend(records)
            return
        key = self.spec.key
        assert key is not None
        cache = self._route_cache
        n = len(buffers)
        maxp = self.spec.max_parallelism
        for r in records:
            k = key(r)
            p = cache.get(k)
            if p is None:
                p = cache[k] = partition_of(k, n, maxp)
            buffers[p].append(r)

    def flush(self, generation: int, barrier: int = 0, eos: bool = False,
              must_align: bool = False) -> None:
        """Send buffered records (and a barrier / end of stream) to every downstream task."""
        handles = self.handles
        for j, buf in enumerate(self.buffers):
            if not buf and not barrier and not eos:
                continue
            # One pickle of the whole batch: Ray's own argument serialization turns every
            # tuple into a separately pickled msgpack extension, ~3.5x slower here.
            payload = pickle.dumps(buf, protocol=pickle.HIGHEST_PROTOCOL) if buf else b""
            ref = handles[j].push.remote(generation, self.spec.channel, payload, barrier, eos,
                                         must_align)
            self.buffers[j] = []
            inflight = self.inflight[j]
            inflight.append(ref)
            while len(inflight) > self.window:
                self._wait(j, inflight.popleft())

    def _wait(self, j: int, ref: Any) -> None:
        try:
            ray.get(ref)
        except RayActorError as e:
            name = self.spec.actor_names[j].rsplit("/", 1)[-1]
            raise DownstreamLost(f"downstream task {name} died or is restarting") from e

    def drain(self) -> None:
        """Wait for every push in flight (raises if a downstream task failed)."""
        for j, inflight in enumerate(self.inflight):
            while inflight:
                self._wait(j, inflight.popleft())

    def reset(self) -> None:
        for buf in self.buffers:
            buf.clear()
        for inflight in self.inflight:
            inflight.clear()


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
                )
            )
        except Exception as e:  # noqa: BLE001
            self._open_error = f"task {spec.task_id} could not start: {e}"
        self.store: CheckpointStore = store_from_uri(
            spec.store_uri, job_id=spec.job_id,
            fault_hook=faultpoints.io_hook(spec.workdir))
        self.generation = UNRESTORED
        self.failed = False
        self.outputs = [_Output(o, spec.namespace, spec.window) for o in spec.outputs]
        self.clock = ProjectClock(spec.workdir, f"task:{spec.task_id}")
        self.aligner = BarrierAligner(spec.n_inputs, alignment_timeout_s=self._alignment_timeout(),
                                      clock=self.clock.monotonic)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix=f"snapshot-{spec.task_id}")
        self._failed_writers: queue.SimpleQueue[SnapshotWriter] = queue.SimpleQueue()
        self._open_unaligned: tuple[int, SnapshotWriter, dict[int, list[Any]]] | None = None
        self._pending_replay: list[tuple[int, list[Any]]] = []
        self._must_align: set[int] = set()  # barriers that must not go unaligned
        self._coordinator: Any = None
        self._commits = spec.commits and has_commit_hooks(self.op)
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
    ) -> dict[str, Any]:
        """Reset to `snapshots` and join `generation`. Idempotent for the same generation.

        `snapshots` is this task's own snapshot, or none (fresh start), or after a
        change of parallelism every snapshot of the stage.

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
        return {"task_id": self.spec.task_id, "pid": os.getpid(), "checkpoint_id": checkpoint_id}

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
            self._fail(e)
            return {"failed": True, "error": repr(e)}

    def _before_input(self) -> None:
        while not self._failed_writers.empty():
            self._failed_writers.get_nowait().failed()
        if self._pending_replay:
            replay, self._pending_replay = self._pending_replay, []
            for channel, recs in replay:
                self._emit(self.op.process(channel, recs))

    def _execute(self, steps: list[Step]) -> None:
        op = self.op
        for s in steps:
            if isinstance(s, Deliver):
                self._emit(op.process(s.channel, s.records))
            elif isinstance(s, TakeSnapshot):
                self._take_snapshot(s.checkpoint_id, s.unaligned)
            elif isinstance(s, RecordInFlight):
                if self._open_unaligned is not None:
                    self._open_unaligned[2].setdefault(s.channel, []).extend(s.records)
            elif isinstance(s, CompleteSnapshot):
                if self._open_unaligned is not None:
                    cid, writer, inflight = self._open_unaligned
                    self._open_unaligned = None
                    self._submit_snapshot(cid, writer, inflight)
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
        # Records emitted before the barrier go out with it, in the same push.
        must_align = checkpoint_id in self._must_align
        self._must_align.discard(checkpoint_id)
        for out in self.outputs:
            out.flush(self.generation, barrier=checkpoint_id, must_align=must_align)
        self.snapshots += 1
        if unaligned:
            self._open_unaligned = (checkpoint_id, writer, {})
        else:
            self._submit_snapshot(checkpoint_id, writer, None)

    def _submit_snapshot(
        self, checkpoint_id: int, writer: SnapshotWriter, inflight: dict[int, list[Any]] | None
    ) -> None:
        generation = self.generation
        spec = self.spec
        store = self.store
        coordinator = self.coordinator
        failed = self._failed_writers

        def job() -> None:
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
            except Exception as e:  # noqa: BLE001 - a failed snapshot declines, never crashes
                failed.put(writer)
                coordinator.decline.remote(generation, checkpoint_id, spec.task_id, repr(e))
                return
            coordinator.ack.remote(generation, checkpoint_id, spec.task_id, snap)

        self.writer.submit(job)

    def _fail(self, error: BaseException) -> None:
        self.failed = True
        if isinstance(error, DownstreamLost):
            reason = str(error)
        else:
            reason = "".join(traceback.format_exception_only(type(error), error)).strip()
        log.warning("task %s failed: %s", self.spec.task_id, reason)
        self._report("failure", reason)

    def _report(self, kind: str, detail: str = "") -> None:
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
