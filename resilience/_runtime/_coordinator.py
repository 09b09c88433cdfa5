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
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError, RayError

from checkpoint import (
    CheckpointAborted,
    CheckpointCompleted,
    CheckpointConfig,
    CheckpointError,
    CoordinatorCore,
    FencedOut,
    InputChanged,
    Manifest,
    TaskSnapshot,
    store_from_uri,
)
from resilience import faultpoints
from resilience._errors import FailoverExhausted, JobFailed
from resilience._runtime._completion import (
    commit_record,
    import_initial_savepoint,
    retain,
    write_manifest,
    write_savepoint,
)
from resilience._runtime._leading import campaign_for_job
from resilience._runtime._models import ModelPublisher
from resilience._runtime._poison import Quarantine, budget_exceeded, repeated_failure
from resilience._runtime._registry import CheckpointRecord, CheckpointRegistry, job_prefix
from resilience._runtime._restore_plan import RestorePlan, snapshots_for
from resilience._runtime._spec import PipelineSpec
from resilience._runtime._status import JobStatus
from resilience.clock import ProjectClock
from resilience.coordination._client import EtcdClient, EtcdError
from resilience.coordination._election import LeaderElection, Leadership

if TYPE_CHECKING:
    from resilience._runtime._site import SiteRole
    from resilience.replication._registry import Handover

__all__ = ["JobCoordinator"]

log = logging.getLogger(__name__)

_PUMP_WINDOW = 2
_RESTORE_TIMEOUT_S = 120.0
_HEALTH_TIMEOUT_S = 5.0
_GENERATIONS_PER_EPOCH = 1_000_000


class _Corrupt(Exception):
    """A task could not restore from the chosen checkpoint (checksum, decode, schema)."""


class _EndedElsewhere(Exception):
    """A standby site: the job finished or failed on the active site."""


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
        self.models = ModelPublisher(self.client, spec.job_id, self.store)
        self.task_specs = spec.task_specs()
        self.task_ids = [t.task_id for t in self.task_specs]
        self.source_id = next(t.task_id for t in self.task_specs if t.is_source)
        self.sink_ids = [t.task_id for t in self.task_specs if t.commits]
        # Tasks whose operator wants to know a checkpoint completed (they said so when
        # restored): a model stage forgets the versions the registry now holds.
        self._notified: set[str] = set()
        self._stage_of = {t.task_id: t.stage for t in self.task_specs}
        self._task_spec = {t.task_id: t for t in self.task_specs}
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
        self._stop = threading.Event()
        # (reason, kind): kind "crash" (a process died or hung), "error" (the job's own
        # code raised: replaying may fail the same way), "operator" (an operator raised
        # on a batch: isolate it), "poison" (a record quarantined), "leadership".
        self._need_recover: tuple[str, str] | None = None
        self._failures = 0  # counted against the restart budget
        self.quarantine = Quarantine(spec.workdir)
        # Tasks that process one record at a time, from the restore after their operator
        # error until a checkpoint completes (see _poison.py).
        # task -> the generation whose restore isolated it (None: asked, not yet applied).
        self._isolating: dict[str, int | None] = {}
        self._outstanding: list[Any] = []
        self._eof = False
        self._final_checkpoint: int | None = None
        self._watermark = 0
        self._restores_done = 0
        self._ack_delays: dict[int, dict[str, float]] = {}  # per checkpoint, per task
        self._savepoint_requests: list[str] = []
        self._savepoint_for: dict[int, str] = {}
        self._cancel_watch: Any = None
        self._status = JobStatus(spec.job_id, pid=os.getpid(), restarted=self.restarted,
                                 quarantined=self.quarantine.count,
                                 quarantine_file=str(self.quarantine.path))
        # A replicated job: this site's role, and the checkpoints completed here that
        # wait for the standby before they may commit (sync mode).
        self.site: SiteRole | None = None
        self._awaiting: dict[int, tuple[CheckpointCompleted, Manifest, int]] = {}
        self._new_reign = False
        # A switchover this (active) site carries out: the request, its last checkpoint,
        # and whether that checkpoint committed.
        self._handover: Handover | None = None
        self._handover_checkpoint: int | None = None
        self._handover_committed = False
        if spec.replication is not None:
            from resilience._runtime._site import SiteRole

            self.site = SiteRole(spec, registry=self.registry, store=self.store,
                                 post=self.events.put, export_copies=self._export_copies)
            self._set(site=spec.replication.site, role="standby")
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
        st = self._status.snapshot()
        site = self.site
        if site is not None:
            st["replication"] = site.status()
        return st

    def pid(self) -> int:
        return os.getpid()

    def stop(self) -> None:
        """Stop acting (end of job or driver exit) and resign leadership."""
        self._stop.set()
        self._thread.join(timeout=10)
        if self.site is not None:
            self.site.stop()
        if self.leadership is not None:
            with contextlib.suppress(Exception):
                self.leadership.resign()

    # -- control thread ------------------------------------------------------------------

    def _set(self, **fields: Any) -> None:
        self._status.set(**fields)

    def _main(self) -> None:
        try:
            self._lead()
            self._recover(self._start_reason())
            while not self._stop.is_set() and not self._status.get("finished"):
                self._tick()
        except _EndedElsewhere as e:
            # A standby site whose job ended on the active site: nothing of its own to do.
            failed = str(e).startswith("the job failed")
            self._set(state="failed" if failed else "finished", finished=not failed,
                      failed=failed, last_error=str(e) if failed else None, note=str(e))
        except (FailoverExhausted, JobFailed) as e:
            self._fail(str(e))
        except Exception as e:
            log.exception("coordinator failed")
            self._fail(f"coordinator error: {_short(e)}")

    def _fail(self, reason: str) -> None:
        self._set(state="failed", failed=True, last_error=reason)
        with contextlib.suppress(Exception):
            self.registry.set_state(None, "failed", reason=reason)

    def _start_reason(self) -> str:
        site = self.site
        if site is not None and site.kind in ("failover", "switchover"):
            return f"{site.kind} from site {site.previous_site}"
        return "coordinator restarted" if self.restarted else "job start"

    def _lead(self) -> None:
        """Become the job's leader, taking over from a dead incarnation of this actor.

        On a site of a replicated job: stand by while the other site leads, until this
        one does (or the job ended there: `_EndedElsewhere`).
        """
        self._set(state="electing")
        election = LeaderElection(
            self.client, f"jobs/{self.spec.job_id}", self.holder, ttl_s=self.spec.lease_ttl_s,
            clock=self.clock.monotonic,
        )

        def campaign(give_up_after_s: float | None) -> Leadership | None:
            return campaign_for_job(election, self.client, actor_id=self.actor_id,
                                    holder=self.holder, previous=self.leadership,
                                    timeout_s=self.spec.lease_ttl_s * 4, stop=self._stop,
                                    give_up_after_s=give_up_after_s)

        if self.site is None:
            won = campaign(None)
        else:
            result = self.site.wait_for_leadership(campaign, self._stop, self._set)
            if isinstance(result, str):
                raise _EndedElsewhere(result)
            won = result
        if won is None:  # stopped while campaigning
            raise JobFailed(f"job {self.spec.job_id}: stopped while campaigning")
        self.leadership = leadership = won
        if self.site is not None:
            self.site.on_lead(leadership)
            self._new_reign = True
            self._set(role="active")
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
            (reason, kind), self._need_recover = self._need_recover, None
            self._recover(reason, kind)
            return
        if self.site is not None:
            if self.site.tick(self.leadership):
                self._commit_ready()
            self._switchover_step()
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
            if what == "failure":
                self._on_task_failure(generation, task_id, detail)
        elif kind == "leadership_lost":
            # Only the current reign's loss counts: a loss already handled (a fenced
            # commit re-elected first) must not depose the reign that followed it.
            current = self.leadership
            if current is not None and current.epoch == event[1]:
                self._relead("leadership lost")
        elif kind == "replicated":
            if self.site is not None:
                self.site.acked(event[1], event[2], self.leadership)
                self._commit_ready()
        elif kind == "replication_event":
            if self.site is not None:
                self.site.note(event[1], event[2])
        elif kind == "savepoint":
            name = event[1]
            if name not in self._savepoint_requests and name not in self._savepoint_for.values():
                self._savepoint_requests.append(name)

    def _request_recover(self, reason: str, kind: str = "crash") -> None:
        """Restore at the next tick (the first reason asked for wins)."""
        if self._need_recover is None:
            self._need_recover = (reason, kind)

    def _on_task_failure(self, generation: int, task_id: str, detail: Any) -> None:
        if not isinstance(detail, dict):  # an older task's plain text
            detail = {"reason": str(detail), "kind": "crash"}
        kind = str(detail.get("kind", "crash"))
        reason = f"task {task_id}: {detail.get('reason', '')}"
        poison = detail.get("poison")
        if kind == "poison" and isinstance(poison, dict):
            # Durable before anything acts on it, whatever the generation: the record
            # failed alone, so it is poison in every replay.
            added = self.quarantine.add({**poison, "task": task_id,
                                         "from_checkpoint": self.core.last_completed})
            if added:
                log.warning("quarantined a record of stage %s: %s", poison.get("stage"),
                            poison.get("error"))
                self._failures = max(self._failures - 1, 0)  # the error is explained
            self._set(quarantined=self.quarantine.count)
            exceeded = budget_exceeded(self.quarantine.count, max(self._watermark - 1, 0),
                                       self.spec.quarantine)
            if exceeded is not None:
                raise JobFailed(f"job {self.spec.job_id}: {exceeded} (see "
                                f"{self.quarantine.path}); last: {poison.get('error')}")
        if generation != self.core.generation:
            return
        if kind in ("operator", "poison"):
            self._isolating[task_id] = None
        self._request_recover(reason, kind)

    def _relead(self, reason: str) -> None:
        log.warning("%s; campaigning again", reason)
        self.core.abort_all(reason)
        self._outstanding = []
        self._awaiting = {}
        self._handover, self._handover_checkpoint = None, None
        self._handover_committed = False
        if self.site is not None:
            self.site.stop()  # this reign ships nothing more
            self.site.gate.dropped()
        self._lead()
        self._need_recover = (f"{reason}; re-elected", "leadership")

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
                    self._request_recover(f"task {self.source_id} died or is restarting")
                    return
                except RayError as e:
                    self._request_recover(f"source step failed: {_short(e)}")
                    return
                if result.get("failed"):
                    detail = result.get("detail") or {"reason": result.get("error"),
                                                      "kind": "crash"}
                    self._on_task_failure(generation, self.source_id, detail)
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
        if self.site is not None and self.site.gate.holds_input:
            return  # fail-closed: nothing more is read until the standby holds what waits
        if self._handover is not None:
            # A switchover drains: one last aligned checkpoint, then nothing more is read.
            if self._handover_checkpoint is None and not self.core.pending \
                    and not self._outstanding:
                self._handover_checkpoint = checkpoint_id = self.core.trigger()
                self._outstanding.append(source.step.remote(generation, 0, checkpoint_id,
                                                            False, True))
            return
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
        """Every task acknowledged `done`: its manifest goes to the store, then (once the
        standby holds it, in sync mode) its record to etcd, then the sinks commit."""
        leadership = self.leadership
        assert leadership is not None
        try:
            manifest, watermark = write_manifest(done, spec=self.spec, store=self.store,
                                                 leadership=leadership,
                                                 source_id=self.source_id)
        except (CheckpointError, OSError) as e:
            self._aborted(CheckpointAborted(done.checkpoint_id, f"commit failed: {_short(e)}"))
            return
        if self.site is None:
            self._commit(done, manifest, watermark)
            return
        self._awaiting[done.checkpoint_id] = (done, manifest, watermark)
        self.site.completed(done.checkpoint_id, manifest, watermark)
        self._commit_ready()

    def _commit_ready(self) -> None:
        """Commit, in order, the waiting checkpoints the replication gate lets through."""
        site = self.site
        while self._awaiting and site is not None:
            checkpoint_id = min(self._awaiting)
            if not site.gate.may_commit(checkpoint_id):
                return
            if checkpoint_id == self._handover_checkpoint and \
                    site.gate.acked_through < checkpoint_id:
                return  # a switchover's last checkpoint waits for the standby in every mode
            done, manifest, watermark = self._awaiting.pop(checkpoint_id)
            if not self._commit(done, manifest, watermark):
                return

    def _commit(self, done: CheckpointCompleted, manifest: Manifest, watermark: int) -> bool:
        """Make `done` complete (its fenced record in etcd) and let the sinks commit it.
        False when it could not (aborted, or this coordinator was fenced out)."""
        leadership = self.leadership
        assert leadership is not None
        try:
            commit_record(manifest, watermark, done, registry=self.registry,
                          leadership=leadership,
                          also=self.models.puts(manifest, leadership.epoch))
        except FencedOut:
            self._relead(f"fenced out while committing checkpoint {done.checkpoint_id}")
            return False
        except (CheckpointError, EtcdError, OSError) as e:
            self._aborted(CheckpointAborted(done.checkpoint_id, f"commit failed: {_short(e)}"))
            return False
        self.core.committed(done.checkpoint_id)
        self.models.published(manifest)
        self._apply_model_moves(manifest)
        if self.site is not None:
            self.site.committed(done.checkpoint_id, manifest, watermark)
        # Every record before this checkpoint's barrier went through alone (or was
        # quarantined) in the tasks isolated by its generation's restore: batches again.
        for t, since in sorted(self._isolating.items()):
            if since is not None and since <= done.generation:
                self._handle(t).end_isolation.remote(done.generation)
                del self._isolating[t]
        # Sinks commit asynchronously; Ray keeps our calls to one sink in order, so a
        # later restore call cannot overtake this commit.
        refs = [
            self._handle(t).checkpoint_complete.remote(done.checkpoint_id, leadership.epoch,
                                                        watermark)
            for t in self.sink_ids
        ]
        for t in sorted(self._notified):  # fire and forget: a lost notice delays a prune
            self._handle(t).checkpoint_completed.remote(done.checkpoint_id)
        self._record_checkpoint(manifest, watermark, done)
        name = self._savepoint_for.pop(done.checkpoint_id, None)
        if name is not None:
            self._write_savepoint(name, done.checkpoint_id)
        if done.checkpoint_id == self._handover_checkpoint:
            try:
                ray.get(refs, timeout=_RESTORE_TIMEOUT_S)
                self._handover_committed = True
            except RayError as e:
                self._request_recover(f"sink failed during a switchover: {_short(e)}")
                return False
        if done.checkpoint_id == self._final_checkpoint:
            try:
                ray.get(refs, timeout=_RESTORE_TIMEOUT_S)
            except RayError as e:
                self._request_recover(f"sink failed during the final commit: {_short(e)}")
                self._final_checkpoint = None
                return False
            if self.site is not None and not self.site.wait_standby_committed(
                    done.checkpoint_id, self._stop):
                self.site.note("finish", f"the standby has not committed the last checkpoint "
                               f"({done.checkpoint_id}); it catches up when it reconnects")
            self._set(state="finished", finished=True, committed_watermark=watermark)
            with contextlib.suppress(EtcdError, FencedOut):
                self.registry.set_state(leadership, "finished", checkpoint_id=done.checkpoint_id)
        self._retain()
        return True

    # -- switchover --------------------------------------------------------------------

    def _switchover_step(self) -> None:
        """Start a switchover this site was asked for, or finish the one under way: once
        its last checkpoint is committed here and on the standby, hand over (resign and
        stand by); if it cannot finish in time, go on as before (rolled back)."""
        site, leadership = self.site, self.leadership
        if site is None or leadership is None or not leadership.is_valid():
            return
        handover = self._handover
        if handover is None:
            self._handover = site.pending_handover(leadership, finishing=self._eof)
            return
        if handover.expired():
            site.move_handover(leadership, handover, "rolled_back",
                                reason="the last checkpoint did not reach the standby in time")
            self._handover, self._handover_checkpoint = None, None
            self._handover_committed = False
            return
        checkpoint_id = self._handover_checkpoint
        if not self._handover_committed or checkpoint_id is None:
            return
        if not site.wait_standby_committed(checkpoint_id, self._stop):
            return  # retried next tick, until the switchover's deadline
        site.handed_over(leadership, handover, checkpoint_id)
        self._handover, self._handover_checkpoint = None, None
        self._handover_committed = False
        leadership.resign()
        self._relead(f"handed the job over to site {handover.target}")

    def _write_savepoint(self, name: str, checkpoint_id: int) -> None:
        write_savepoint(store=self.store, client=self.client, job_id=self.spec.job_id,
                        savepoint_dir=self._savepoint_dir(), name=name,
                        checkpoint_id=checkpoint_id)

    def _import_savepoint(self, records: list[CheckpointRecord]) -> list[CheckpointRecord]:
        if self.leadership is None:
            return records
        return import_initial_savepoint(records, spec=self.spec, store=self.store,
                                        client=self.client, registry=self.registry,
                                        leadership=self.leadership, source_id=self.source_id)

    def _apply_model_moves(self, manifest: Manifest, *, publish: bool = False) -> None:
        """The alias moves `manifest` carries (with `publish`, first the versions etcd
        lacks: a restore, maybe on another site, after a crash before they were). A failure
        is reported in the status; the next checkpoint carries the moves again."""
        leadership = self.leadership
        assert leadership is not None
        try:
            if publish:
                puts = self.models.puts(manifest, leadership.epoch)
                if puts:
                    leadership.fenced_txn(puts=puts)
                self.models.published(manifest)
            self.models.apply(manifest, leadership)
        except (EtcdError, FencedOut) as e:
            log.warning("model moves of checkpoint %s not applied yet: %s",
                        manifest.checkpoint_id, _short(e))
        self._status.models(self.models.refused)

    def _record_checkpoint(
        self, manifest: Manifest, watermark: int, done: CheckpointCompleted
    ) -> None:
        ack_s = self._ack_delays.pop(manifest.checkpoint_id, {})
        for stale in [c for c in self._ack_delays if c < manifest.checkpoint_id]:
            del self._ack_delays[stale]
        self._status.checkpoint_completed(manifest, watermark, done, ack_s)

    def _aborted(self, aborted: CheckpointAborted) -> None:
        log.warning("checkpoint %s aborted: %s", aborted.checkpoint_id, aborted.reason)
        self._status.checkpoint_failed(f"checkpoint {aborted.checkpoint_id}: {aborted.reason}")
        if aborted.checkpoint_id == self._final_checkpoint:
            # The final checkpoint must succeed: retry it after a restore.
            self._final_checkpoint = None
            self._request_recover(f"final checkpoint failed: {aborted.reason}", "transient")

    def _retain(self) -> None:
        assert self.leadership is not None
        site = self.site
        deleted = retain(store=self.store, registry=self.registry, leadership=self.leadership,
                         keep=self.config.retained, last_completed=self.core.last_completed,
                         pinned=site.pinned() if site is not None else ())
        if site is not None:
            site.forget(deleted)

    def _export_copies(self, directory: Path) -> dict[str, Path]:
        """Whole copies of every sink's database (a standby's bootstrap), from the sink
        tasks themselves, between two of their commits. Called by the shipper's thread."""
        out = {}
        for task_id in self.sink_ids:
            path = directory / f"{task_id}.sqlite"
            ray.get(self._handle(task_id).export_copy.remote(str(path)), timeout=120)
            out[task_id] = path
        return out

    # -- failure handling ---------------------------------------------------------------

    def _health_check(self) -> None:
        refs = {self._handle(t).ping.remote(): t for t in self.task_ids}
        ready, not_ready = ray.wait(list(refs), num_returns=len(refs), timeout=_HEALTH_TIMEOUT_S)
        for ref in ready:
            try:
                ray.get(ref)
            except RayError as e:
                self._request_recover(f"task {refs[ref]} is dead: {_short(e)}")
        for ref in not_ready:
            task = refs[ref]
            # Hung (paused, deadlocked): kill it so Ray restarts it, then restore.
            log.warning("task %s did not answer a health check; restarting it", task)
            with contextlib.suppress(Exception):
                ray.kill(self._handle(task), no_restart=False)
            self._request_recover(f"task {task} hung")

    def _recover(self, reason: str, kind: str = "start") -> None:
        """Global restore from the newest checkpoint that verifies."""
        started = time.time()
        t0 = time.monotonic()
        leadership = self.leadership
        assert leadership is not None
        self._restores_done += 1
        # The job's start is not a failure, and a quarantined record is progress (its
        # count has a budget of its own).
        if kind not in ("start", "poison"):
            self._failures += 1
        failures = self._failures
        if failures > self.spec.restart_budget:
            raise FailoverExhausted(self.spec.job_id, failures - 1, reason)
        history = [*self._status.restores_after_start(),
                   {"reason": reason, "kind": kind, "from_checkpoint": None}]
        pointless = repeated_failure(history)
        if pointless is not None:
            raise JobFailed(f"job {self.spec.job_id}: {pointless}")
        self._set(state="restoring")
        log.warning("restoring job %s: %s", self.spec.job_id, reason)
        self.core.abort_all(reason)
        self._outstanding = []
        self._awaiting = {}
        self._eof = False
        self._final_checkpoint = None
        self._handover_checkpoint = None  # a switchover under way drains again
        self._handover_committed = False
        records = self._completed_records()
        if self._restores_done == 1:
            records = self._import_savepoint(records)
        try:
            highest = max([*self.store.list_checkpoints(), 0])
        except (CheckpointError, OSError):
            highest = 0
        highest = max(highest, self.core.next_checkpoint_id - 1,
                      *(r.checkpoint_id for r in records))
        site = self.site
        if site is not None and self._new_reign:
            records, _ = site.plan_takeover(leadership, records)
        plan = RestorePlan(records)
        fallbacks = plan.fallbacks
        for record in plan:
            blocked = plan.blocked(self.spec.job_id)
            if blocked is not None:
                raise JobFailed(blocked)
            manifest = None
            if record is not None:
                try:
                    manifest = self.store.get_manifest(record.checkpoint_id)
                except CheckpointError as e:
                    plan.skip(record.checkpoint_id, _short(e), unaligned=record.unaligned)
                    continue
            checkpoint_id = 0 if record is None else record.checkpoint_id
            watermark = 0 if record is None else record.watermark
            generation = self.core.restored(checkpoint_id, highest_id_seen=highest)
            isolate = set(self._isolating)
            for t in isolate:
                self._isolating[t] = generation
            try:
                self._restore_tasks(generation, manifest, checkpoint_id, leadership.epoch,
                                    watermark, isolate=isolate)
            except _Corrupt as e:
                plan.skip(checkpoint_id, str(e), unaligned=record is not None and record.unaligned)
                continue
            self._watermark = watermark
            if manifest is not None:
                self._apply_model_moves(manifest, publish=True)
            duration = time.monotonic() - t0
            entry = {
                "reason": reason,
                "kind": kind,
                "isolated": sorted(isolate),
                "from_checkpoint": checkpoint_id,
                "watermark": watermark,
                "fallbacks": fallbacks,
                "started_at": started,
                "duration_s": round(duration, 3),
                "generation": generation,
                "first_commit_at": None,
            }
            if site is not None:
                entry["site"] = site.site
                entry["site_kind"] = site.kind if self._new_reign else "restore"
                if self._new_reign:
                    site.start_shipping(leadership, [r for r in records
                                                     if r.checkpoint_id <= checkpoint_id])
                    self._new_reign = False
                site.restored(checkpoint_id)
                site.restore_finished(leadership, duration)
            self._status.restored(entry)
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
        *,
        isolate: set[str],
    ) -> None:
        """Restore every task; retry tasks that die meanwhile; raise `_Corrupt` on bad state.

        Tasks in `isolate` process records one at a time; every task skips the
        records its stage has quarantined.
        """
        deadline = time.monotonic() + _RESTORE_TIMEOUT_S
        pending = set(self.task_ids)
        while pending:
            refs = {}
            for t in sorted(pending):
                spec = self._task_spec[t]
                snaps = snapshots_for(manifest, t, spec.stage, spec.parallelism)
                stage = self._stage_of[t]
                refs[self._handle(t).restore.remote(
                    generation, snaps, checkpoint_id, epoch, watermark,
                    isolate=t in isolate,
                    quarantine=sorted(self.quarantine.of_stage(stage)))] = t
            remaining = max(deadline - time.monotonic(), 0.1)
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=remaining)
            for ref in ready:
                try:
                    restored = ray.get(ref)
                    pending.discard(refs[ref])
                    if restored.get("notify"):
                        self._notified.add(refs[ref])
                except RayActorError:
                    pass  # died while restoring: Ray restarts it; ask again
                except RayError as e:
                    if _is_checkpoint_error(e):
                        raise _Corrupt(f"task {refs[ref]}: {_short(e)}") from e
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, (JobFailed, InputChanged)):
                        # Fatal: no older checkpoint makes another file the job's input.
                        raise JobFailed(str(cause)) from e
                    raise
            if time.monotonic() > deadline:
                raise FailoverExhausted(
                    self.spec.job_id, self._restores_done,
                    f"tasks {sorted(pending)} did not restore within {_RESTORE_TIMEOUT_S:g}s",
                )
            if pending:
                time.sleep(0.05)  # a dead actor is being restarted by Ray; do not spin
