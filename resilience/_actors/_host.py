"""The host actor: the user's object, its call log, dedup, snapshots, standby following
and promotion, in one Ray actor."""


from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from checkpoint import (
    CheckpointError,
    FileSystemStore,
    LogFollower,
    Manifest,
    TaskSnapshot,
    WriteAheadLog,
    apply_retention,
    plan_retention,
)
from resilience import faultpoints
from resilience._actors._codec import Codec, codec_for
from resilience._actors._files import _Owner, _restart_count, _WriterLock
from resilience._actors._handle import _heartbeat_interval
from resilience._actors._policy import (
    _KEPT_SNAPSHOTS,
    _READ_ONLY_MARK,
    _SNAPSHOT_FORMAT,
    ActorPolicy,
    _default_store,
)
from resilience._errors import (
    FailoverExhausted,
    StateNotSerializable,
)

log = logging.getLogger(__name__)



# -- the host actor ------------------------------------------------------------------------


def _public_methods(cls: type) -> list[str]:
    out = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or not callable(member):
            continue
        if inspect.isfunction(member) or inspect.ismethoddescriptor(member):
            out.append(name)
    return out


class _Host:
    """The Ray actor hosting one replica of a decorated class (an async actor).

    Subclassed per decorated class by `_make_host`, which adds a proxy per public
    method so that a plain Ray handle works too.
    """

    _resilient_user_cls: type
    _resilient_policy: ActorPolicy

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import ray

        ctx = ray.get_runtime_context()
        cls = type(self)
        policy = cls._resilient_policy
        user_cls = cls._resilient_user_cls
        ray_name = ctx.get_actor_name() or ""
        if "#" in ray_name:
            base, _, idx = ray_name.rpartition("#")
            self.name, self.index = base, int(idx)
        else:
            self.name, self.index = ray_name or f"{user_cls.__name__}-{ctx.get_actor_id()}", 0
        self.namespace = ctx.namespace
        self.policy = policy
        self.codec = codec_for(policy.format)
        self.root = Path(policy.store or _default_store())
        self.dir = self.root / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = FileSystemStore(self.root, job_id=self.name)
        self.owner = _Owner(self.dir)
        self.instance = user_cls(*args, **kwargs)
        self.read_only = set(policy.read_only) | {
            m for m in _public_methods(user_cls)
            if getattr(getattr(user_cls, m), _READ_ONLY_MARK, False)
        }
        self.results: OrderedDict[str, tuple[int, tuple[str, Any]]] = OrderedDict()
        self.applied_seq = 0
        self.snapshot_seq = 0
        self.calls_since_snapshot = 0
        self.last_snapshot_at = time.monotonic()
        self.exhausted: str | None = None
        self.role = "starting"
        self.epoch = 0
        self.wal: WriteAheadLog | None = None
        self._writer_lock = _WriterLock(self.dir)
        self._apply_lock = threading.Lock()  # standby follower thread vs. promotion
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"wal-{self.name}")
        self._flushing: Any = None
        self._inflight = 0  # calls between apply and reply
        self._snapshotting = False
        self._stop = threading.Event()
        self.completed = 0
        self.last_progress = time.monotonic()

        reconstructed = bool(ctx.was_current_actor_reconstructed)
        refused = self._after_restart() if reconstructed else None
        fresh = self._load_snapshot() is None
        if self.owner.read() is None:
            self.owner.compare_and_set(None, 0)
        if reconstructed and self.policy.standby is not None:
            # The policy prefers a warm standby to this cold restart: hand over.
            self._hand_over()
        while True:
            record = self.owner.read()
            assert record is not None
            if record["primary"] != self.index:
                self._become_standby(record["epoch"])
                break
            if refused is not None:
                # Never half-alive: every call says why, and the handle escalates.
                self.exhausted, self.role = refused, "exhausted"
                break
            if self._become_primary(record["epoch"]):
                if self.exhausted is None and fresh and self.snapshot_seq == 0 \
                        and self.applied_seq == 0:
                    # The first checkpoint: an attribute that cannot be serialized fails
                    # here, at creation, naming it, not at 3 a.m. during a failover.
                    self._write_snapshot(self._capture())
                break
            time.sleep(0.01)  # a promotion is under way: look at the owner again
        threading.Thread(target=self._heartbeat, name=f"heartbeat-{self.name}",
                         daemon=True).start()

    # -- restore ---------------------------------------------------------------------------

    def _after_restart(self) -> str | None:
        """Apply the restart budget and backoff; return why this replica may not lead."""
        n = _restart_count(self.dir, self.index)
        policy = self.policy.restart
        if policy is not None and n <= policy.max:
            delay = policy.delay_s(n)
            log.warning("%s#%d restarted (%d of %d), backoff %.2fs", self.name, self.index, n,
                        policy.max, delay)
            time.sleep(delay)
            return None
        if policy is not None:
            return f"restart budget of {policy.max} spent ({n} restarts)"
        if self.policy.standby is None:
            return "the failover policy has no restart()"
        return None  # comes back as a standby: the pool refills

    def _load_snapshot(self) -> int | None:
        ids = self.store.list_checkpoints()
        for cid in reversed(ids):
            try:
                manifest = self.store.get_manifest(cid)
                chunk = self.store.get_chunk(manifest.tasks["state"].chunks[0])
                doc = self.codec.decode_snapshot(chunk)
            except (CheckpointError, KeyError) as e:
                log.warning("%s: snapshot %s unusable (%s); trying an older one", self.name,
                            cid, e)
                continue
            self._set_state(doc["state"])
            self.results = OrderedDict((k, (v[0], tuple(v[1]))) for k, v in doc["results"])
            self.applied_seq = self.snapshot_seq = int(doc["seq"])
            return cid
        return None

    def _set_state(self, state: Any) -> None:
        inst = self.instance
        if hasattr(inst, "__setstate__") and self.policy.state is None:
            inst.__setstate__(state)
        else:
            for k, v in state.items():
                setattr(inst, k, v)

    def _capture(self) -> dict[str, Any]:
        """Synchronous part of a snapshot: state, results and position, encoded now."""
        state = self._capture_state_only()
        doc = {"format": _SNAPSHOT_FORMAT, "state": state, "results": list(self.results.items()),
               "seq": self.applied_seq}
        try:
            data = self.codec.encode_snapshot(doc)
        except Exception as e:
            self._name_unserializable(state, e)
            raise
        return {"data": data, "seq": self.applied_seq, "epoch": self.epoch}

    def _name_unserializable(self, state: Any, error: Exception) -> None:
        cls_name = type(self.instance).__name__
        items = state.items() if isinstance(state, dict) else [("__getstate__()", state)]
        for key, value in items:
            try:
                self.codec.check_value(value)
            except Exception as e:
                raise StateNotSerializable(cls_name, str(key), f"{type(e).__name__}: {e}") from e
        raise StateNotSerializable(cls_name, "results of calls",
                                   f"{type(error).__name__}: {error}") from error

    def _write_snapshot(self, captured: dict[str, Any]) -> None:
        """Background part: chunk, manifest, then drop the log and snapshots it replaces."""
        seq = int(captured["seq"])
        if self.wal is not None and self.wal.durable_seq < seq:
            # The log before the snapshot: state is captured after calls are applied but
            # before their records are fsynced. A snapshot durable before those records
            # would, after a SIGKILL, cover log positions the reopened log hands out again.
            self.wal.flush()
        ref = self.store.put_chunk(captured["data"])
        manifest = Manifest(
            job_id=self.name, checkpoint_id=seq + 1,  # ids start at 1; one per log position
            fencing_epoch=int(captured["epoch"]), code_version="0", schema_version=1,
            created_at=time.time(), duration_s=0.0,
            tasks={"state": TaskSnapshot("state", "actor", (ref,), {"seq": seq})},
            kind="checkpoint",
        )
        if manifest.checkpoint_id in self.store.list_checkpoints():
            return  # this log position is already saved
        self.store.put_manifest(manifest)
        self.snapshot_seq = seq
        manifests = []
        for cid in self.store.list_checkpoints():
            with contextlib.suppress(CheckpointError):
                manifests.append(self.store.get_manifest(cid))
        plan = plan_retention(manifests, _KEPT_SNAPSHOTS)
        apply_retention(self.store, plan)
        if self.wal is not None:
            # Keep the log from the oldest retained snapshot on: a restore that has to
            # fall back to it (the newest one does not verify) still replays every call.
            self.wal.roll()
            self.wal.truncate_before(min(plan.retained, default=seq + 1))

    def _apply(self, seq: int, call_id: str, method: str, args: Any, kwargs: Any
               ) -> tuple[str, Any]:
        try:
            outcome: tuple[str, Any] = ("ok", getattr(self.instance, method)(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - a raising call is applied exactly once too
            outcome = ("err", e)
        self.results[call_id] = (seq, outcome)
        if len(self.results) > self.policy.results_window:
            self.results.popitem(last=False)
        self.applied_seq = seq
        return outcome

    def _replay(self, after_seq: int) -> int:
        n = 0
        from checkpoint import read_log

        for seq, payload in read_log(self.dir / "wal", after_seq=after_seq):
            call_id, method, args, kwargs = self.codec.decode_call(payload)
            self._apply(seq, call_id, method, args, kwargs)
            n += 1
        return n

    # -- roles -----------------------------------------------------------------------------

    def _hand_over(self) -> bool:
        """Ask a live standby to take over the log (this process was the dead primary)."""
        import ray

        record = self.owner.read()
        if record is None or record["primary"] != self.index:
            return False  # someone already failed over
        for j in range(self.policy.replicas):
            if j == self.index:
                continue
            try:
                peer: Any = ray.get_actor(f"{self.name}#{j}", namespace=self.namespace)
                answer: Any = ray.get(peer.__resilient_promote__.remote(record["epoch"]),
                                      timeout=5)
                st: dict[str, Any] = dict(answer)
            except Exception as e:  # noqa: BLE001 - a dead or restarting peer: try the next
                log.warning("%s#%d: standby %d could not take over: %s", self.name,
                            self.index, j, e)
                continue
            if st.get("role") == "primary" or st.get("primary", self.index) != self.index:
                return True
        return False

    def _become_primary(self, epoch: int) -> bool:
        """Take the log (False if another process holds it or the owner changed)."""
        if self.policy.log:
            if not self._writer_lock.acquire(timeout_s=0.05):
                return False
            record = self.owner.read()
            if record is None or record["primary"] != self.index:
                self._writer_lock.release()
                return False
            epoch = record["epoch"]
            try:
                replayed = self._replay(self.applied_seq)
            except CheckpointError as e:
                # Calls between the snapshot and the log are gone: never half-alive
                # with them silently missing. Every call says why (FailoverExhausted).
                log.error("%s#%d cannot be restored exactly: %s",  # noqa: TRY400 - no trace
                          self.name, self.index, e)
                self.exhausted, self.role = f"cannot be restored exactly: {e}", "exhausted"
                return True
            self.wal = WriteAheadLog(self.dir / "wal")
            if self.wal.last_seq < self.applied_seq:
                # The snapshot covers calls the log never made durable. New calls would
                # reuse their log positions, and a later restore from this snapshot would
                # skip them. Snapshots wait for the log (`_write_snapshot`), so this is
                # damage from outside: refuse, never silently.
                why = (f"cannot be restored exactly: the snapshot covers the log up to "
                       f"{self.applied_seq}, but the log ends at {self.wal.last_seq}")
                log.error("%s#%d %s", self.name, self.index, why)
                self.exhausted, self.role = why, "exhausted"
                return True
            if replayed:
                log.warning("%s#%d replayed %d logged calls", self.name, self.index, replayed)
        self.epoch = epoch
        self.role = "primary"
        return True

    def _heartbeat(self) -> None:
        """Write `<dir>/heartbeat-<index>`: wall time, calls completed, role.

        From a thread of its own, so a busy or blocked event loop still beats: a
        missing heartbeat means the process is gone or stopped, and stuck calls are
        what `no_progress` is for. The supervisor reads the file (same node as the
        store, as the writer lock already requires).
        """
        interval = _heartbeat_interval(self.policy.detect)
        path = self.dir / f"heartbeat-{self.index}"
        tmp = self.dir / f".heartbeat-{self.index}.tmp"
        while not self._stop.wait(interval):
            with contextlib.suppress(OSError):
                tmp.write_text(f"{time.time()} {self.completed} {self.role} {os.getpid()}")
                tmp.replace(path)

    def _become_standby(self, epoch: int) -> None:
        self.epoch = epoch
        self.role = "standby"
        self._follower = LogFollower(self.dir / "wal", after_seq=self.applied_seq)
        threading.Thread(target=self._follow, name=f"standby-{self.name}", daemon=True).start()

    def _follow(self) -> None:
        while not self._stop.is_set() and self.role == "standby":
            with self._apply_lock:
                if self.role != "standby":
                    return
                try:
                    self._catch_up()
                except CheckpointError as e:
                    log.warning("%s#%d standby: %s", self.name, self.index, e)
            self._stop.wait(0.002)

    def _catch_up(self) -> None:
        records = self._follower.poll()
        if records and records[0][0] != self.applied_seq + 1:
            # The primary snapshotted and dropped log segments we had not read: reload.
            self._load_snapshot()
            self._follower = LogFollower(self.dir / "wal", after_seq=self.applied_seq)
            records = self._follower.poll()
        for seq, payload in records:
            if seq <= self.applied_seq:
                continue
            call_id, method, args, kwargs = self.codec.decode_call(payload)
            self._apply(seq, call_id, method, args, kwargs)

    # -- calls -----------------------------------------------------------------------------

    def _begin_call(self, blob: bytes) -> tuple[int, tuple[str, Any]]:
        """Dedupe, log and apply one call: (sequence number to wait for, outcome).

        `blob` is the encoded (call id, method, args, kwargs) the caller sent; it is
        also the log record as is. Synchronous: no other call interleaves.
        """
        call_id, method, args, kwargs = self.codec.decode_call(blob)
        hit = self.results.get(call_id)
        if hit is not None:
            return hit
        if method in self.read_only:
            # No log record, but wait until every call it could have seen is durable.
            try:
                outcome: tuple[str, Any] = ("ok", getattr(self.instance, method)(
                    *args, **kwargs))
            except Exception as e:  # noqa: BLE001
                outcome = ("err", e)
            return self.applied_seq, outcome
        seq = self.wal.append(blob) if self.wal is not None else self.applied_seq + 1
        outcome = self._apply(seq, call_id, method, args, kwargs)
        self.calls_since_snapshot += 1
        return seq, outcome

    def _end_call(self) -> None:
        # The window a retry with the same call id exists for: applied and durable,
        # the caller not yet told.
        faultpoints.hit(self.dir, faultpoints.ACTOR_BEFORE_REPLY)
        self.completed += 1
        self.last_progress = time.monotonic()
        self._maybe_snapshot()

    def _maybe_snapshot(self) -> None:
        if self._snapshotting:
            return
        elapsed = time.monotonic() - self.last_snapshot_at
        if not self.policy.checkpoint.due(calls=self.calls_since_snapshot, seconds=elapsed):
            return
        captured = self._capture()
        self.calls_since_snapshot = 0
        self.last_snapshot_at = time.monotonic()
        self._snapshotting = True

        def write() -> None:
            try:
                self._write_snapshot(captured)
            except Exception:
                log.exception("%s: snapshot at %s failed; the log still covers it",
                              self.name, captured["seq"])
            finally:
                self._snapshotting = False

        self._io.submit(write)

    # -- control ---------------------------------------------------------------------------

    def __resilient_ping__(self) -> dict[str, Any]:
        return {"name": self.name, "index": self.index, "role": self.role, "epoch": self.epoch,
                "applied_seq": self.applied_seq, "snapshot_seq": self.snapshot_seq,
                "durable_seq": self.wal.durable_seq if self.wal else self.applied_seq,
                "flushes": self.wal.flushes if self.wal else 0, "pid": os.getpid(),
                "completed": self.completed, "exhausted": self.exhausted}

    def __resilient_promote__(self, expected_epoch: int) -> dict[str, Any]:
        """Become the primary if the epoch is still `expected_epoch` (idempotent)."""
        if self.role == "primary":
            return self.__resilient_ping__()
        if not self._writer_lock.acquire(timeout_s=2.0):
            return {**self.__resilient_ping__(), "busy": True}
        record = self.owner.compare_and_set(expected_epoch, self.index)
        if record["primary"] != self.index:
            self._writer_lock.release()  # another replica won
            return {**self.__resilient_ping__(), "primary": record["primary"]}
        with self._apply_lock:
            self._catch_up()
            self.role = "promoting"
            self.wal = WriteAheadLog(self.dir / "wal")
            self.epoch = record["epoch"]
            self.role = "primary"
        log.warning("%s#%d promoted to primary (epoch %d) at seq %d", self.name, self.index,
                    self.epoch, self.applied_seq)
        return self.__resilient_ping__()

    def __resilient_state__(self) -> Any:
        """The user object's state (for tests and tools)."""
        return self._capture_state_only()

    def _capture_state_only(self) -> Any:
        """The user object's state: declared attributes, its `__getstate__`, or its vars."""
        inst = self.instance
        if self.policy.state is not None:
            return {k: getattr(inst, k) for k in self.policy.state}
        if "__getstate__" in vars(type(inst)) or any(
                "__getstate__" in vars(k) for k in type(inst).__mro__[1:-1]):
            return inst.__getstate__()
        return dict(vars(inst))


def _unwrap(outcome: tuple[str, Any]) -> Any:
    kind, value = outcome
    if kind == "err":
        raise value
    return value


class _AsyncHost(_Host):
    """With the call log: an async actor, so that calls waiting for one fsync batch up.

    Ray starts the calls of one caller in submission order, and a call is logged and
    applied before its first await, so per-caller order is kept as with plain Ray.
    """

    async def _durable(self, seq: int) -> None:
        wal = self.wal
        if wal is None or wal.durable_seq >= seq:
            return
        # Let calls that already arrived log themselves first: they join this fsync.
        await asyncio.sleep(0)
        if self._inflight == 1 and (self._flushing is None or self._flushing.done()):
            # Still alone: a thread hop would cost more than the fsync itself.
            wal.flush()
            return
        loop = asyncio.get_running_loop()
        while wal.durable_seq < seq:
            if self._flushing is None or self._flushing.done():
                # Everything appended until now rides on this one fsync (group commit).
                self._flushing = loop.run_in_executor(self._io, wal.flush)
            await asyncio.shield(self._flushing)

    async def __resilient_call__(self, blob: bytes) -> Any:
        if self.exhausted is not None:
            raise FailoverExhausted(self.name, -1, self.exhausted)
        if self.role != "primary":
            return await self._forward(blob)
        seq, outcome = self._begin_call(blob)
        self._inflight += 1
        try:
            await self._durable(seq)
        finally:
            self._inflight -= 1
        self._end_call()
        return _unwrap(outcome)

    async def _forward(self, blob: bytes) -> Any:
        """A standby got a call (a Ray retry after its old primary died): send it on."""
        import ray

        record = self.owner.read() or {"primary": 0}
        primary = ray.get_actor(f"{self.name}#{record['primary']}", namespace=self.namespace)
        return await primary.__resilient_call__.remote(blob)


class _SyncHost(_Host):
    """Without the call log (`log=False`): a plain sync actor, nothing to wait for."""

    def __resilient_call__(self, blob: bytes) -> Any:
        if self.exhausted is not None:
            raise FailoverExhausted(self.name, -1, self.exhausted)
        _, outcome = self._begin_call(blob)
        self._end_call()
        return _unwrap(outcome)


def _task_call_id() -> str:
    import ray

    # Through a plain Ray handle: Ray keeps a task's id across its retries.
    return f"task:{ray.get_runtime_context().get_task_id() or uuid.uuid4().hex}"


def _proxy(method: str, is_async: bool, codec: Codec) -> Callable[..., Any]:
    if is_async:
        async def acall(self: _AsyncHost, *args: Any, **kwargs: Any) -> Any:
            blob = codec.encode_call(_task_call_id(), method, args, kwargs)
            return await self.__resilient_call__(blob)

        acall.__name__ = method
        return acall

    def call(self: _SyncHost, *args: Any, **kwargs: Any) -> Any:
        blob = codec.encode_call(_task_call_id(), method, args, kwargs)
        return self.__resilient_call__(blob)

    call.__name__ = method
    return call


def _make_host(user_cls: type, policy: ActorPolicy, metaclass: type = type) -> type:
    namespace: dict[str, Any] = {
        "_resilient_user_cls": user_cls,
        "_resilient_policy": policy,
        "__module__": user_cls.__module__,
        "__doc__": user_cls.__doc__,
    }
    for name in _public_methods(user_cls):
        namespace[name] = _proxy(name, policy.log, codec_for(policy.format))
    base = _AsyncHost if policy.log else _SyncHost
    host: type = metaclass(user_cls.__name__, (base,), namespace)
    # A name that does not resolve in the module: when the session has a Java
    # code_search_path, Ray loads actor classes "from local code" by module and
    # qualified name first, which would find the user's own class, not this host.
    host.__qualname__ = f"{user_cls.__qualname__}.__resilient_host__"
    return host
