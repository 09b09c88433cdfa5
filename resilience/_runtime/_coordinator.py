"""The job coordinator: a Ray actor that leads the job, checkpoints it and restores it.

One control thread does everything that changes the job, in order, so there
are no races between a commit and a restore:

* *leads*: campaigns in etcd for the job's leadership and gets a fencing epoch;
  a coordinator that Ray restarts takes over from its dead incarnation;
* *pumps* the source: a window of `step` calls, each optionally carrying a
  barrier (`CoordinatorCore.due()` decides when);
* *completes* checkpoints: when every task acknowledged, writes the manifest to
  the store, commits its record to etcd fenced by the epoch, then tells the
  two-phase-commit sinks to commit;
* *restores*: on any task failure (a failed push, a failed step, a missed
  health check), restores every task from the newest checkpoint that verifies
  (falling back to older ones), bumps the generation and resumes the source.

Acknowledgements and failure reports arrive from the tasks as actor calls on
other threads; they only enqueue events for the control thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from checkpoint import (
    CheckpointAborted,
    CheckpointCompleted,
    CheckpointConfig,
    CheckpointError,
    CoordinatorCore,
    FencedOut,
    Manifest,
    TaskSnapshot,
    apply_retention,
    chunk_ref_of,
    copy_checkpoint,
    plan_retention,
    store_from_uri,
)
from resilience import faultpoints
from resilience._errors import FailoverExhausted, JobFailed
from resilience._etcd import EtcdClient, EtcdError
from resilience._runtime._registry import CheckpointRecord, CheckpointRegistry, job_prefix
from resilience._runtime._savepoints import import_savepoint, open_savepoint, savepoint_store
from resilience._runtime._spec import PipelineSpec
from resilience.clock import ProjectClock
from resilience.coordination import CoordinationError, LeaderElection, Leadership

__all__ = ["JobCoordinator"]

log = logging.getLogger(__name__)

_PUMP_WINDOW = 2
_RESTORE_TIMEOUT_S = 120.0
_HEALTH_TIMEOUT_S = 5.0
_GENERATIONS_PER_EPOCH = 1_000_000


def should_revoke_before_campaign(
    *,
    current_holder: str | None,
    current_lease: int | None,
    actor_id: str,
    holder: str,
    valid_lease: int | None,
) -> bool:
    """Whether a coordinator about to campaign may revoke the current leader's lease.

    Only to take over at once from an earlier incarnation of this actor (Ray restarts
    an actor after its previous process is gone; fencing keeps it safe even if it were
    somehow alive), or to clear this process's own lost reign. Never a lease this
    process still validly holds: revoking it would depose the reign it is running,
    whose loss would trigger another campaign and another revoke, forever (found by
    the chaos campaign: a paused coordinator, a fenced commit and a stale loss event).
    """
    if current_holder is None or current_lease is None:
        return False
    if not current_holder.startswith(f"{actor_id}:"):
        return False  # another actor's reign: wait for it, never cut it short
    return current_lease != valid_lease


class _Corrupt(Exception):
    """A task could not restore from the chosen checkpoint (checksum, decode, schema)."""


def _is_checkpoint_error(error: BaseException) -> bool:
    cause = getattr(error, "cause", None)
    return isinstance(error, CheckpointError) or isinstance(cause, CheckpointError)


def _short(error: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return text.splitlines()[-1][:500] if text else repr(error)


class JobCoordinator:
    """Ray actor (threaded, `max_restarts=-1`). See the module docstring."""

    def __init__(self, spec: PipelineSpec, etcd_endpoints: str) -> None:
        self.spec = spec
        self.config = spec.checkpoint or CheckpointConfig(interval_s=1e9)
        self.checkpointing = spec.checkpoint is not None
        self.store = store_from_uri(
            spec.store_uri, job_id=spec.job_id,
            fault_hook=faultpoints.io_hook(spec.workdir))
        self.client = EtcdClient(etcd_endpoints)
        self.registry = CheckpointRegistry(self.client, spec.job_id)
        self.task_specs = spec.task_specs()
        self.task_ids = [t.task_id for t in self.task_specs]
        self.source_id = next(t.task_id for t in self.task_specs if t.is_source)
        self.sink_ids = [t.task_id for t in self.task_specs if t.commits]
        self._handles: dict[str, Any] = {}
        # Decisions read the project clock (a drill may skew it); durations stay real.
        self.clock = ProjectClock(spec.workdir, "coordinator")
        self.core = CoordinatorCore(self.task_ids, self.config, clock=self.clock.monotonic)
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.leadership: Leadership | None = None
        ctx = ray.get_runtime_context()
        self.actor_id = ctx.get_actor_id() or "driver"
        self.holder = f"{self.actor_id}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.restarted = bool(ctx.was_current_actor_reconstructed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._need_recover: str | None = None
        self._outstanding: list[Any] = []
        self._eof = False
        self._final_checkpoint: int | None = None
        self._watermark = 0
        self._restores_done = 0
        self._ack_delays: dict[int, dict[str, float]] = {}  # per checkpoint, per task
        self._savepoint_requests: list[str] = []
        self._savepoint_for: dict[int, str] = {}
        self._cancel_watch: Any = None
        self._status: dict[str, Any] = {
            "job_id": spec.job_id,
            "state": "starting",
            "coordinator_pid": os.getpid(),
            "coordinator_restarted": self.restarted,
            "generation": 0,
            "fencing_epoch": 0,
            "lines_read": 0,
            "committed_watermark": 0,
            "checkpoints_completed": 0,
            "checkpoints_failed": 0,
            "checkpoints_unaligned": 0,
            "inflight_records_stored": 0,
            "last_checkpoint": None,
            "checkpoint_history": [],
            "restores": [],
            "last_error": None,
            "finished": False,
            "failed": False,
            "eof_at": None,
        }
        self._thread = threading.Thread(target=self._main, name="coordinator", daemon=True)
        self._thread.start()

    # -- called by tasks and the driver ----------------------------------------------

    def ack(self, generation: int, checkpoint_id: int, task_id: str, snap: TaskSnapshot) -> None:
        self.events.put(("ack", generation, checkpoint_id, task_id, snap))

    def decline(self, generation: int, checkpoint_id: int, task_id: str, reason: str) -> None:
        self.events.put(("decline", generation, checkpoint_id, task_id, reason))

    def report(self, generation: int, task_id: str, kind: str, detail: str) -> None:
        self.events.put(("report", generation, task_id, kind, detail))

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {**self._status, "restores": list(self._status["restores"]),
                    "checkpoint_history": list(self._status["checkpoint_history"])}

    def pid(self) -> int:
        return os.getpid()

    def stop(self) -> None:
        """Stop acting (end of job or driver exit) and resign leadership."""
        self._stop.set()
        self._thread.join(timeout=10)
        if self.leadership is not None:
            with contextlib.suppress(Exception):
                self.leadership.resign()

    # -- control thread ------------------------------------------------------------------

    def _set(self, **fields: Any) -> None:
        with self._lock:
            self._status.update(fields)

    def _main(self) -> None:
        try:
            self._lead()
            self._recover("coordinator restarted" if self.restarted else "job start")
            while not self._stop.is_set() and not self._status["finished"]:
                self._tick()
        except (FailoverExhausted, JobFailed) as e:
            self._fail(str(e))
        except Exception as e:
            log.exception("coordinator failed")
            self._fail(f"coordinator error: {_short(e)}")

    def _fail(self, reason: str) -> None:
        self._set(state="failed", failed=True, last_error=reason)
        with contextlib.suppress(Exception):
            self.registry.set_state(None, "failed", reason=reason)

    def _lead(self) -> None:
        """Become the job's leader, taking over from a dead incarnation of this actor."""
        self._set(state="electing")
        election = LeaderElection(
            self.client, f"jobs/{self.spec.job_id}", self.holder, ttl_s=self.spec.lease_ttl_s,
            clock=self.clock.monotonic,
        )
        while not self._stop.is_set():
            try:
                current = election.current_leader()
                mine = self.leadership
                if should_revoke_before_campaign(
                        current_holder=None if current is None else current.holder,
                        current_lease=None if current is None else current.lease_id,
                        actor_id=self.actor_id, holder=self.holder,
                        valid_lease=mine.lease_id if mine is not None and mine.is_valid()
                        else None):
                    assert current is not None
                    self.client.revoke_lease(current.lease_id)
                self.leadership = election.campaign(timeout_s=self.spec.lease_ttl_s * 4)
                break
            except (EtcdError, CoordinationError) as e:  # etcd down, or another leader
                log.warning("campaign failed: %s", e)
                self._stop.wait(0.5)
        leadership = self.leadership
        assert leadership is not None
        leadership.on_lost(lambda: self.events.put(("leadership_lost", leadership.epoch)))
        # Generations must never repeat, across coordinator restarts too: a task still
        # holding pushes of generation g from before the crash would accept them again.
        # Each reign numbers its generations above every earlier reign's.
        self.core.generation = max(self.core.generation, leadership.epoch * _GENERATIONS_PER_EPOCH)
        self._set(fencing_epoch=leadership.epoch, state="leading")
        prefix = job_prefix(self.spec.job_id)
        with contextlib.suppress(EtcdError, FencedOut):
            self.registry.set_state(leadership, "running", epoch=leadership.epoch,
                                    holder=self.holder)
            leadership.fenced_put(f"{prefix}spec", json.dumps({
                "workdir": str(self.spec.workdir),
                "store_uri": self.spec.store_uri,
                "savepoint_dir": str(self._savepoint_dir()),
                "stages": {s.name: s.parallelism for s in self.spec.stages},
                "schema_version": self.spec.schema_version,
                "code_version": self.spec.code_version,
            }).encode())
        if self._cancel_watch is None:
            requests = f"{prefix}requests/savepoint/"

            def on_request(event: Any) -> None:
                if event.kind == "put":
                    self.events.put(("savepoint", event.key.removeprefix(requests)))

            with contextlib.suppress(EtcdError):
                self._cancel_watch = self.client.watch_prefix(requests, on_request).cancel
                for kv in self.client.get_prefix(requests):  # requests made before the watch
                    self.events.put(("savepoint", kv.key.removeprefix(requests)))

    def _savepoint_dir(self) -> Path:
        return self.spec.savepoint_dir or (self.spec.workdir / "savepoints")

    def _handle(self, task_id: str) -> Any:
        h = self._handles.get(task_id)
        if h is None:
            spec = next(t for t in self.task_specs if t.task_id == task_id)
            h = ray.get_actor(spec.actor_name, namespace=self.spec.namespace)
            self._handles[task_id] = h
        return h

    def _tick(self) -> None:
        if self._outstanding:
            # Sleep until a source step finishes (or briefly, for acks): polling
            # at a high rate would steal a core from the pipeline.
            ray.wait(self._outstanding, num_returns=1, timeout=0.01)
            self._drain_events(0)
        else:
            self._drain_events(0.02)
        if self._need_recover is not None:
            reason, self._need_recover = self._need_recover, None
            self._recover(reason)
            return
        self._pump()
        for aborted in self.core.expire():
            self._aborted(aborted)
            self._health_check()

    def _drain_events(self, wait_s: float) -> None:
        try:
            event = self.events.get(timeout=wait_s) if wait_s > 0 else self.events.get_nowait()
        except queue.Empty:
            return
        while True:
            self._on_event(event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    def _on_event(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "ack":
            _, generation, checkpoint_id, task_id, snap = event
            pending = self.core.pending.get(checkpoint_id)
            if pending is not None and generation == self.core.generation:
                self._ack_delays.setdefault(checkpoint_id, {})[task_id] = round(
                    time.monotonic() - pending.triggered_at, 4)
            completed = self.core.ack(generation, checkpoint_id, task_id, snap)
            if completed is not None:
                self._complete(completed)
        elif kind == "decline":
            _, generation, checkpoint_id, task_id, reason = event
            aborted = self.core.decline(generation, checkpoint_id, task_id, reason)
            if aborted is not None:
                self._aborted(aborted)
        elif kind == "report":
            _, generation, task_id, what, detail = event
            if what == "failure" and generation == self.core.generation:
                self._need_recover = self._need_recover or f"task {task_id}: {detail}"
        elif kind == "leadership_lost":
            # Only the current reign's loss counts: a loss already handled (a fenced
            # commit re-elected first) must not depose the reign that followed it.
            current = self.leadership
            if current is not None and current.epoch == event[1]:
                self._relead("leadership lost")
        elif kind == "savepoint":
            name = event[1]
            if name not in self._savepoint_requests and name not in self._savepoint_for.values():
                self._savepoint_requests.append(name)

    def _relead(self, reason: str) -> None:
        log.warning("%s; campaigning again", reason)
        self.core.abort_all(reason)
        self._outstanding = []
        self._lead()
        self._need_recover = f"{reason}; re-elected"

    # -- source pump ------------------------------------------------------------------------

    def _pump(self) -> None:
        source = self._handle(self.source_id)
        generation = self.core.generation
        if self._outstanding:
            ready, _ = ray.wait(self._outstanding, num_returns=len(self._outstanding), timeout=0)
            for ref in ready:
                self._outstanding.remove(ref)
                try:
                    result = ray.get(ref)
                except RayActorError:
                    self._need_recover = "task source-0 died or is restarting"
                    return
                except RayError as e:
                    self._need_recover = f"source step failed: {_short(e)}"
                    return
                if result.get("failed"):
                    self._need_recover = f"task {self.source_id}: {result.get('error')}"
                    return
                if result.get("stale"):
                    continue
                if result.get("end"):
                    if not self._eof:
                        self._set(eof_at=time.time())
                    self._eof = True
                if "watermark" in result:
                    self._watermark = max(self._watermark, int(result["watermark"]))
            self._set(lines_read=max(self._watermark - 1, 0))
        if self._eof:
            if not self._outstanding and self._final_checkpoint is None:
                # End of input: one last checkpoint commits the tail, then end of stream.
                checkpoint_id = self.core.trigger()
                self._final_checkpoint = checkpoint_id
                if self._savepoint_requests:
                    self._savepoint_for[checkpoint_id] = self._savepoint_requests.pop(0)
                # Aligned: nothing follows to carry in-flight records of an unaligned one.
                self._outstanding.append(
                    source.step.remote(generation, 0, checkpoint_id, True, True)
                )
            return
        while len(self._outstanding) < _PUMP_WINDOW:
            barrier = 0
            if self._savepoint_requests and not self.core.pending:
                # A savepoint is a checkpoint taken now, then copied out.
                barrier = self.core.trigger()
                self._savepoint_for[barrier] = self._savepoint_requests.pop(0)
            elif self.checkpointing and self.core.due():
                barrier = self.core.trigger()
            self._outstanding.append(
                source.step.remote(generation, self.spec.batch_size, barrier, False,
                                   barrier in self._savepoint_for)
            )

    # -- checkpoint completion ----------------------------------------------------------

    def _complete(self, done: CheckpointCompleted) -> None:
        leadership = self.leadership
        assert leadership is not None
        source_meta = done.acks[self.source_id].metadata.get("op", {})
        watermark = int(source_meta.get("watermark", 0))
        manifest = Manifest(
            job_id=self.spec.job_id,
            checkpoint_id=done.checkpoint_id,
            fencing_epoch=leadership.epoch,
            code_version=self.spec.code_version,
            schema_version=self.spec.schema_version,
            created_at=time.time(),
            duration_s=done.duration_s,
            tasks=dict(done.acks),
        )
        try:
            self.store.put_manifest(manifest)
            record = CheckpointRecord(
                checkpoint_id=done.checkpoint_id,
                fencing_epoch=leadership.epoch,
                watermark=watermark,
                created_at=manifest.created_at,
                duration_s=done.duration_s,
                total_bytes=manifest.total_bytes(),
                manifest_checksum=chunk_ref_of(manifest.to_bytes()).digest,
                unaligned=any(t.metadata.get("channel_state") for t in manifest.tasks.values()),
            )
            self.registry.commit(leadership, record)
        except FencedOut:
            self._relead(f"fenced out while committing checkpoint {done.checkpoint_id}")
            return
        except (CheckpointError, EtcdError, OSError) as e:
            self._aborted(CheckpointAborted(done.checkpoint_id, f"commit failed: {_short(e)}"))
            return
        self.core.committed(done.checkpoint_id)
        # Sinks commit asynchronously; Ray keeps our calls to one sink in order, so a
        # later restore call cannot overtake this commit.
        refs = [
            self._handle(t).checkpoint_complete.remote(done.checkpoint_id, leadership.epoch,
                                                        watermark)
            for t in self.sink_ids
        ]
        self._record_checkpoint(manifest, watermark, done)
        name = self._savepoint_for.pop(done.checkpoint_id, None)
        if name is not None:
            self._write_savepoint(name, done.checkpoint_id)
        if done.checkpoint_id == self._final_checkpoint:
            try:
                ray.get(refs, timeout=_RESTORE_TIMEOUT_S)
            except RayError as e:
                self._need_recover = f"sink failed during the final commit: {_short(e)}"
                self._final_checkpoint = None
                return
            self._set(state="finished", finished=True, committed_watermark=watermark)
            with contextlib.suppress(EtcdError, FencedOut):
                self.registry.set_state(leadership, "finished", checkpoint_id=done.checkpoint_id)
        self._retain()

    def _write_savepoint(self, name: str, checkpoint_id: int) -> None:
        """Copy a completed checkpoint out as savepoint `name` and answer the request."""
        prefix = job_prefix(self.spec.job_id)
        try:
            target = savepoint_store(self._savepoint_dir(), name)
            manifest = copy_checkpoint(self.store, checkpoint_id, target, name=name)
            answer = {"name": name, "checkpoint_id": checkpoint_id,
                      "path": target.describe(), "bytes": manifest.total_bytes(),
                      "schema_version": manifest.schema_version, "ok": True}
        except (CheckpointError, OSError) as e:
            answer = {"name": name, "checkpoint_id": checkpoint_id, "ok": False,
                      "error": _short(e)}
        with contextlib.suppress(EtcdError):
            self.client.put(f"{prefix}savepoints/{name}", json.dumps(answer).encode())
            self.client.delete(f"{prefix}requests/savepoint/{name}")

    def _import_savepoint(self, records: list[CheckpointRecord]) -> list[CheckpointRecord]:
        """At a run's start from a savepoint: make it the newest complete checkpoint (once)."""
        location = self.spec.initial_savepoint
        leadership = self.leadership
        if location is None or leadership is None:
            return records
        marker = f"{job_prefix(self.spec.job_id)}runs/{self.spec.run_id}/savepoint"
        if self.client.get(marker) is not None:
            return records  # imported by an earlier incarnation of this run
        source = savepoint_store(location)
        manifest = open_savepoint(source, schema_version=self.spec.schema_version)
        highest = max([0, *self.store.list_checkpoints(), *[r.checkpoint_id for r in records]])
        imported = import_savepoint(source, manifest, self.store, checkpoint_id=highest + 1,
                                    fencing_epoch=leadership.epoch)
        source_meta = imported.tasks[self.source_id].metadata.get("op", {})
        record = CheckpointRecord(
            checkpoint_id=imported.checkpoint_id,
            fencing_epoch=leadership.epoch,
            watermark=int(source_meta.get("watermark", 0)),
            created_at=time.time(),
            duration_s=0.0,
            total_bytes=imported.total_bytes(),
            manifest_checksum=chunk_ref_of(imported.to_bytes()).digest,
        )
        leadership.fenced_txn(puts={
            f"{self.registry.prefix}checkpoints/{record.checkpoint_id:020d}": record.to_bytes(),
            marker: json.dumps({"savepoint": str(location)}).encode(),
        })
        log.warning("imported savepoint %s as checkpoint %s", location, record.checkpoint_id)
        return [*records, record]

    def _record_checkpoint(
        self, manifest: Manifest, watermark: int, done: CheckpointCompleted
    ) -> None:
        info = {
            "checkpoint_id": manifest.checkpoint_id,
            "epoch": manifest.fencing_epoch,
            "watermark": watermark,
            "duration_s": round(done.duration_s, 4),
            "bytes": manifest.total_bytes(),
            "at": time.time(),
            "generation": done.generation,
            "ack_s": self._ack_delays.pop(manifest.checkpoint_id, {}),
        }
        for stale in [c for c in self._ack_delays if c < manifest.checkpoint_id]:
            del self._ack_delays[stale]
        with self._lock:
            st = self._status
            st["checkpoints_completed"] += 1
            if any(snap.metadata.get("channel_state") for snap in manifest.tasks.values()):
                st["checkpoints_unaligned"] += 1
            st["inflight_records_stored"] += sum(
                int(snap.metadata.get("inflight_records", 0)) for snap in manifest.tasks.values())
            st["last_checkpoint"] = info
            st["committed_watermark"] = watermark
            st["checkpoint_history"] = [*st["checkpoint_history"][-199:], info]
            restores = st["restores"]
            if restores and restores[-1].get("first_commit_at") is None:
                restores[-1]["first_commit_at"] = info["at"]

    def _aborted(self, aborted: CheckpointAborted) -> None:
        log.warning("checkpoint %s aborted: %s", aborted.checkpoint_id, aborted.reason)
        with self._lock:
            self._status["checkpoints_failed"] += 1
            self._status["last_error"] = f"checkpoint {aborted.checkpoint_id}: {aborted.reason}"
        if aborted.checkpoint_id == self._final_checkpoint:
            # The final checkpoint must succeed: retry it after a restore.
            self._final_checkpoint = None
            self._need_recover = f"final checkpoint failed: {aborted.reason}"

    def _retain(self) -> None:
        leadership = self.leadership
        assert leadership is not None
        try:
            ids = self.store.list_checkpoints()
            if len(ids) <= self.config.retained:
                return
            committed = {r.checkpoint_id for r in self.registry.completed()}
            manifests = []
            for cid in ids:
                if cid in committed:
                    with contextlib.suppress(CheckpointError):
                        manifests.append(self.store.get_manifest(cid))
            plan = plan_retention(manifests, self.config.retained)
            stale_uncommitted = [c for c in ids if c not in committed and
                                 c < self.core.last_completed]
            self.registry.forget(leadership, list(plan.delete_manifests))
            apply_retention(self.store, plan)
            for cid in stale_uncommitted:
                self.store.delete_manifest(cid)
        except (CheckpointError, EtcdError, OSError, FencedOut) as e:
            log.warning("retention skipped: %s", e)

    # -- failure handling ---------------------------------------------------------------

    def _health_check(self) -> None:
        refs = {self._handle(t).ping.remote(): t for t in self.task_ids}
        ready, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=_HEALTH_TIMEOUT_S)
        for ref in ready:
            try:
                ray.get(ref)
            except RayError as e:
                self._need_recover = f"task {refs[ref]} is dead: {_short(e)}"
        for ref in not_ready:
            task = refs[ref]
            # Hung (paused, deadlocked): kill it so Ray restarts it, then restore.
            log.warning("task %s did not answer a health check; restarting it", task)
            with contextlib.suppress(Exception):
                ray.kill(self._handle(task), no_restart=False)
            self._need_recover = f"task {task} hung"

    def _recover(self, reason: str) -> None:
        """Global restore from the newest checkpoint that verifies."""
        started = time.time()
        t0 = time.monotonic()
        leadership = self.leadership
        assert leadership is not None
        self._restores_done += 1
        # The first restore is the job's start, not a failure.
        failures = self._restores_done - 1
        if failures > self.spec.restart_budget:
            raise FailoverExhausted(self.spec.job_id, failures - 1, reason)
        self._set(state="restoring")
        log.warning("restoring job %s: %s", self.spec.job_id, reason)
        self.core.abort_all(reason)
        self._outstanding = []
        self._eof = False
        self._final_checkpoint = None
        records = self._completed_records()
        if self._restores_done == 1:
            records = self._import_savepoint(records)
        try:
            highest = max([*self.store.list_checkpoints(), 0])
        except (CheckpointError, OSError):
            highest = 0
        highest = max(highest, self.core.next_checkpoint_id - 1)
        fallbacks: list[str] = []
        candidates: list[CheckpointRecord | None] = [*reversed(records), None]
        skipped_unaligned: list[int] = []
        for record in candidates:
            if skipped_unaligned:
                # The sink may have committed output of that checkpoint whose records
                # were in flight, i.e. below its watermark but not all committed: the
                # replay floor cannot tell which. Stop rather than lose or double money.
                raise JobFailed(
                    f"job {self.spec.job_id}: cannot fall back past checkpoint "
                    f"{skipped_unaligned[0]}, which stored in-flight records (unaligned); "
                    f"skipped: {'; '.join(fallbacks)}. Repair the store or restore a savepoint."
                )
            manifest = None
            if record is not None:
                try:
                    manifest = self.store.get_manifest(record.checkpoint_id)
                except CheckpointError as e:
                    fallbacks.append(f"checkpoint {record.checkpoint_id}: {_short(e)}")
                    if record.unaligned:
                        skipped_unaligned.append(record.checkpoint_id)
                    continue
            checkpoint_id = 0 if record is None else record.checkpoint_id
            watermark = 0 if record is None else record.watermark
            generation = self.core.restored(checkpoint_id, highest_id_seen=highest)
            try:
                self._restore_tasks(generation, manifest, checkpoint_id, leadership.epoch,
                                    watermark)
            except _Corrupt as e:
                fallbacks.append(f"checkpoint {checkpoint_id}: {e}")
                if record is not None and record.unaligned:
                    skipped_unaligned.append(checkpoint_id)
                continue
            self._watermark = watermark
            duration = time.monotonic() - t0
            entry = {
                "reason": reason,
                "from_checkpoint": checkpoint_id,
                "fallbacks": fallbacks,
                "started_at": started,
                "duration_s": round(duration, 3),
                "generation": generation,
                "first_commit_at": None,
            }
            with self._lock:
                self._status["restores"].append(entry)
                self._status.update(state="running", generation=generation,
                                    committed_watermark=watermark)
            if fallbacks:
                log.warning("restored from checkpoint %s after skipping: %s", checkpoint_id,
                            "; ".join(fallbacks))
            return
        raise FailoverExhausted(self.spec.job_id, failures, "no checkpoint could be restored")

    def _completed_records(self) -> list[CheckpointRecord]:
        while True:
            try:
                return self.registry.completed()
            except EtcdError as e:
                log.warning("cannot read checkpoints from etcd (%s); retrying", e)
                if self._stop.wait(0.5):
                    return []

    def _restore_tasks(
        self,
        generation: int,
        manifest: Manifest | None,
        checkpoint_id: int,
        epoch: int,
        watermark: int,
    ) -> None:
        """Restore every task; retry tasks that die meanwhile; raise `_Corrupt` on bad state."""
        deadline = time.monotonic() + _RESTORE_TIMEOUT_S
        pending = set(self.task_ids)
        while pending:
            refs = {}
            for t in sorted(pending):
                snaps = self._snapshots_for(t, manifest)
                refs[self._handle(t).restore.remote(generation, snaps, checkpoint_id, epoch,
                                                    watermark)] = t
            remaining = max(deadline - time.monotonic(), 0.1)
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=remaining)
            for ref in ready:
                try:
                    ray.get(ref)
                    pending.discard(refs[ref])
                except RayActorError:
                    pass  # died while restoring: Ray restarts it; ask again
                except RayError as e:
                    if _is_checkpoint_error(e):
                        raise _Corrupt(f"task {refs[ref]}: {_short(e)}") from e
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, JobFailed):
                        raise JobFailed(str(cause)) from e
                    raise
            if time.monotonic() > deadline:
                raise FailoverExhausted(
                    self.spec.job_id, self._restores_done,
                    f"tasks {sorted(pending)} did not restore within {_RESTORE_TIMEOUT_S:g}s",
                )
            if pending:
                time.sleep(0.05)  # a dead actor is being restarted by Ray; do not spin

    def _snapshots_for(self, task_id: str, manifest: Manifest | None) -> list[TaskSnapshot]:
        """The snapshots task `task_id` restores from.

        Its own when the checkpoint has it; otherwise (the stage's parallelism
        changed since) every snapshot of its stage, to re-partition by key group.
        """
        if manifest is None:
            return []
        own = manifest.tasks.get(task_id)
        spec = next(t for t in self.task_specs if t.task_id == task_id)
        same_stage = [s for s in manifest.tasks.values() if s.kind == spec.stage]
        if own is not None and len(same_stage) == spec.parallelism:
            return [own]
        return sorted(same_stage, key=lambda s: s.task_id)
