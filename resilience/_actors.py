"""`@resilient`: exactly-once stateful Ray actors without rewriting them.

What a decorated class gets:

* **Snapshots** of its state (declared attributes, or ``__getstate__``/``__setstate__``,
  or its whole ``__dict__``) in a checkpoint store, on a policy
  (``every(seconds=1) | every(calls=10_000)``), restored when the process comes back.
* **A write-ahead log of calls**: every call gets a call id and is logged before its
  result is returned; fsyncs are group-committed (calls arriving while a flush runs
  share the next one). After a crash the newest snapshot is loaded and the logged
  calls after it are re-applied, so each call's effect on state happens exactly once.
  Methods must therefore be deterministic functions of state and arguments.
* **Deduplication**: a call whose id was already applied returns the recorded
  result instead of running again. Ray's task retries keep their task id, so calls
  through a plain Ray handle are deduplicated too; calls through a `ResilientHandle`
  carry ids of their own and can be re-sent to another replica.
* **Failover** on a policy: ``restart(max=10)`` (Ray restarts the process, the state
  is restored, retried calls are answered), ``standby(n)`` (warm replicas follow the
  log and one is promoted without a process start), ``escalate()`` (hand over to the
  job). A spent budget ends in `FailoverExhausted`, never in a half-alive actor.

Exclusivity of the log writer is a `flock` on the actor's directory, held for the
life of the primary's process: a standby can only be promoted once the old primary
is gone, so two writers never interleave. (This fences processes on one node; a
store shared between nodes needs the etcd lease instead, as jobs use.)

A read-only method (``read_only=("get",)`` or `resilient.read_only`) skips the log,
but still waits until every logged call it could have observed is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import inspect
import itertools
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpoint import (
    CheckpointError,
    FileSystemStore,
    Manifest,
    ResilienceError,
    TaskSnapshot,
    apply_retention,
    plan_retention,
)
from checkpoint._wal import LogFollower, WriteAheadLog
from resilience import faultpoints
from resilience._actor_codec import FORMATS, Codec, codec_for
from resilience._errors import FailoverExhausted
from resilience.policies import (
    AnyDetector,
    AnyTrigger,
    CheckpointTrigger,
    Detector,
    Escalate,
    FailoverAction,
    FailoverChain,
    FailoverState,
    GiveUp,
    Health,
    Promote,
    StandbyStatus,
    decide,
    escalate,
    every,
    missed_heartbeats,
    restart,
    standby,
)

__all__ = [
    "ActorPolicy",
    "ResilientActorClass",
    "ResilientHandle",
    "StateNotSerializable",
    "resilient",
]

log = logging.getLogger(__name__)

STORE_ENV = "RESILIENCE_STORE"
_READ_ONLY_MARK = "__resilient_read_only__"
_SNAPSHOT_FORMAT = 1
_KEPT_SNAPSHOTS = 2


class StateNotSerializable(ResilienceError):
    """An attribute of a decorated actor cannot be snapshotted."""

    def __init__(self, cls_name: str, attribute: str, reason: str) -> None:
        super().__init__(
            f"{cls_name}.{attribute} cannot be serialized for a snapshot ({reason}); "
            f"leave it out with state=(...) or define __getstate__/__setstate__"
        )
        self.cls_name = cls_name
        self.attribute = attribute
        self.reason = reason

    def __reduce__(self) -> tuple[type[StateNotSerializable], tuple[str, str, str]]:
        return (type(self), (self.cls_name, self.attribute, self.reason))


# -- policy ------------------------------------------------------------------------------


def _default_store() -> str:
    return os.environ.get(STORE_ENV) or str(Path.cwd() / ".resilience" / "actors")


@dataclass(frozen=True)
class ActorPolicy:
    """Everything `@resilient` was told, validated when the decorator runs."""

    checkpoint: CheckpointTrigger = field(
        default_factory=lambda: every(seconds=1) | every(calls=10_000))
    failover: FailoverChain = field(default_factory=lambda: FailoverChain((restart(max=10),)))
    detect: Detector = field(default_factory=lambda: missed_heartbeats(3))
    log: bool = True
    read_only: frozenset[str] = frozenset()
    state: tuple[str, ...] | None = None
    store: str | None = None
    results_window: int = 100_000
    format: str = "pickle"

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint, every):
            object.__setattr__(self, "checkpoint", AnyTrigger((self.checkpoint,)))
        if not isinstance(self.checkpoint, CheckpointTrigger):
            raise TypeError(f"resilient(checkpoint=...): not a checkpoint trigger: "
                            f"{self.checkpoint!r} (use every(seconds=...) | every(calls=...))")
        failover: Any = self.failover
        if isinstance(failover, FailoverAction):
            object.__setattr__(self, "failover", FailoverChain((failover,)))
        elif not isinstance(failover, FailoverChain):
            raise TypeError(f"resilient(failover=...): not a failover policy: {failover!r} "
                            "(use restart(...), standby(...), escalate(), combined with |)")
        if isinstance(self.detect, missed_heartbeats):
            object.__setattr__(self, "detect", AnyDetector((self.detect,)))
        if not isinstance(self.detect, Detector):
            raise TypeError(f"resilient(detect=...): not a failure detector: {self.detect!r}")
        if not isinstance(self.log, bool):
            raise TypeError(f"resilient(log=...) must be True or False, got {self.log!r}")
        if self.results_window < 1:
            raise ValueError(f"resilient(results_window=...) must be >= 1, "
                             f"got {self.results_window}")
        if self.format not in FORMATS:
            raise ValueError(f"resilient(format=...) must be one of {', '.join(FORMATS)}, "
                             f"got {self.format!r}")
        if self.standby is not None and not self.log:
            raise ValueError("resilient(failover=standby(...)) needs log=True: "
                             "standbys follow the call log")

    @property
    def standby(self) -> standby | None:
        return self.failover.get(standby)  # type: ignore[no-any-return]

    @property
    def restart(self) -> restart | None:
        return self.failover.get(restart)  # type: ignore[no-any-return]

    @property
    def replicas(self) -> int:
        s = self.standby
        return 1 + (s.n if s is not None else 0)


# -- on-disk pieces -------------------------------------------------------------------------


class _Owner:
    """Who writes the log: `{"epoch": e, "primary": index}`, changed under a file lock."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "owner.json"
        self.lock_path = directory / "owner.lock"

    def read(self) -> dict[str, int] | None:
        try:
            return dict(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None

    def _write(self, record: dict[str, int]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(record))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def compare_and_set(self, expected_epoch: int | None, primary: int) -> dict[str, int]:
        """Make `primary` the writer if the epoch is still `expected_epoch`; return the record."""
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read()
            epoch = 0 if current is None else current["epoch"]
            if current is not None and expected_epoch is not None and epoch != expected_epoch:
                return current
            if current is not None and expected_epoch is None:
                return current
            record = {"epoch": epoch + 1, "primary": primary}
            self._write(record)
            return record


class _WriterLock:
    """The exclusive right to append to the log, for the life of this process."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "writer.lock"
        self._file: Any = None

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def acquire(self, timeout_s: float) -> bool:
        if self._file is not None:
            return True
        f = open(self.path, "a")  # noqa: SIM115 - held until the process dies
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._file = f
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.close()
                    return False
                time.sleep(0.005)


def _restart_count(directory: Path, index: int) -> int:
    """Count this restart of replica `index` (persisted: Ray does not say how many)."""
    path = directory / f"restarts-{index}.json"
    try:
        n = int(json.loads(path.read_text())["restarts"])
    except (FileNotFoundError, ValueError, KeyError):
        n = 0
    n += 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"restarts": n}))
    tmp.replace(path)
    return n


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
        from checkpoint._wal import read_log

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
        faultpoints.hit(self.dir, "actor.before_reply")
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


# -- the caller's side -------------------------------------------------------------------------


class _Method:
    def __init__(self, handle: ResilientHandle, name: str) -> None:
        self._handle = handle
        self._name = name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Submit the call; returns a Ray ObjectRef (use `ResilientHandle.get` for failover)."""
        return self._handle._submit(self._name, args, kwargs)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Submit and wait, failing over if the primary dies meanwhile."""
        return self._handle._get(self.remote(*args, **kwargs))


class ResilientHandle:
    """A handle to a decorated actor (its primary and its standbys).

    `handle.method.remote(...)` returns an ObjectRef. With a restart policy,
    `ray.get` on it sees a result even across a crash (Ray retries the call on the
    restarted process, which deduplicates it). With standbys, use `resilient.get(refs)`
    (or `handle.method.call(...)`): when the primary dies it promotes a standby and
    re-sends the pending calls with their ids, so none runs twice. Every public
    attribute of a handle is a method of the decorated class; the handle's own
    helpers are `resilient.get`, `resilient.ping` and `resilient.state`.
    """

    def __init__(self, name: str, namespace: str | None, policy: ActorPolicy,
                 methods: Iterable[str], replicas: list[Any] | None = None) -> None:
        self._name = name
        self._namespace = namespace
        self._policy = policy
        self._methods = frozenset(methods)
        self._replicas = replicas
        self._id = uuid.uuid4().hex[:16]
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._primary = 0
        self._epoch = 0
        self._pending: OrderedDict[Any, tuple[str, str, Any, Any, int]] = OrderedDict()
        self._failover_lock = threading.Lock()
        self._refreshed_at = 0.0
        self._submitters: dict[int, Any] = {}
        self._supervisor: _Supervisor | None = None
        self._failovers: list[dict[str, Any]] = []

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A copy in another process gets its own id: call ids stay unique per caller.
        return (ResilientHandle, (self._name, self._namespace, self._policy, self._methods, None))

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_") or name not in self._methods:
            raise AttributeError(f"{self._name} has no public method {name!r}")
        return _Method(self, name)

    def _replica(self, index: int) -> Any:
        import ray

        if self._replicas is not None and index < len(self._replicas):
            return self._replicas[index]
        return ray.get_actor(f"{self._name}#{index}", namespace=self._namespace)

    def _primary_actor(self) -> Any:
        return self._replica(self._primary)

    def _submit(self, method: str, args: Any, kwargs: Any, call_id: str | None = None) -> Any:
        call_id = call_id or f"{self._id}:{next(self._counter)}"
        # With standbys the handle fails over itself (fast); otherwise Ray retries the call
        # on the restarted process.
        retries = 0 if self._policy.standby is not None else -1
        if retries == 0 and time.monotonic() - self._refreshed_at > 0.5:
            # Another caller or a restarted replica may have moved the primary: follow
            # the owner record (a standby would forward the call, one hop slower).
            self._refreshed_at = time.monotonic()
            record = self._owner_record()
            if record is not None:
                self._primary, self._epoch = int(record["primary"]), int(record["epoch"])
        target = self._primary
        submit = self._submitters.get(target)
        if submit is None:
            submit = self._replica(target).__resilient_call__.options(max_task_retries=retries)
            self._submitters[target] = submit
        # One encoding, which is also the log record: Ray ships bytes cheaply.
        ref = submit.remote(codec_for(self._policy.format).encode_call(
            call_id, method, args, kwargs))
        with self._lock:
            self._pending[ref] = (call_id, method, args, kwargs, target)
            while len(self._pending) > 100_000:
                self._pending.popitem(last=False)
        with _REFS_LOCK:
            _REFS[ref] = self
            while len(_REFS) > 200_000:
                _REFS.popitem(last=False)
        return ref

    def _get(self, refs: Any, *, timeout_s: float | None = None) -> Any:
        """`ray.get` that fails over to a standby and re-sends calls the primary lost."""
        import ray
        from ray.exceptions import RayActorError

        single = not isinstance(refs, list)
        todo: list[Any] = [refs] if single else list(refs)
        results: list[Any] = [None] * len(todo)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        i = 0
        while i < len(todo):
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
            try:
                results[i] = ray.get(todo[i], timeout=remaining)
            except FailoverExhausted as e:
                self._escalate_if_asked(str(e))
                raise
            except RayActorError:
                with self._lock:
                    call = self._pending.get(todo[i])
                if call is None:
                    raise
                with self._failover_lock:
                    # Only the first call the dead primary lost fails over; the
                    # others follow to the new primary.
                    if call[4] == self._primary:
                        self._failover()
                # Re-send, in one go, every call of this batch still headed for the
                # dead replica: they are doomed, and the ids make re-sending safe.
                dead = call[4]
                for k in range(i, len(todo)):
                    with self._lock:
                        pending = self._pending.get(todo[k])
                    if pending is not None and pending[4] == dead:
                        with self._lock:
                            self._pending.pop(todo[k], None)
                        todo[k] = self._submit(pending[1], pending[2], pending[3],
                                               call_id=pending[0])
                continue
            with self._lock:
                self._pending.pop(todo[i], None)
            i += 1
        return results[0] if single else results

    def _failover(self) -> None:
        """The primary is gone: apply the policy (promote a standby, or wait for Ray)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        t0 = time.monotonic()
        others = [i for i in range(self._policy.replicas) if i != self._primary]
        pings = {self._replica(i).__resilient_ping__.remote(): i for i in others}
        # A replica that does not answer at once is restarting or hung: not a candidate.
        ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=0.3)
        answers = {}
        for ref in ready:
            with contextlib.suppress(RayActorError, GetTimeoutError):
                answers[pings[ref]] = ray.get(ref)
        for i, st in answers.items():
            if st["role"] == "primary":  # another caller (or the restarted one) handed over
                self._primary, self._epoch = i, int(st["epoch"])
                self._failovers.append({"decision": "Follow", "reason": f"replica {i} leads",
                                        "seconds": time.monotonic() - t0})
                return
        statuses = [StandbyStatus(i, i in answers,
                                  max(0, self._seen_seq(answers[i])) if i in answers else 0)
                    for i in others]
        decision = decide(self._policy.failover, FailoverState(standbys=statuses))
        if isinstance(decision, Promote):
            epoch = (self._owner_record() or {}).get("epoch", self._epoch)
            st = ray.get(self._replica(decision.index).__resilient_promote__.remote(epoch),
                         timeout=30)
            if st.get("busy"):
                # The old primary still holds the log (hung, not dead): kill it first.
                with contextlib.suppress(Exception):
                    ray.kill(self._primary_actor(), no_restart=False)
                st = ray.get(self._replica(decision.index).__resilient_promote__.remote(epoch),
                             timeout=30)
            self._primary = int(st.get("primary", decision.index)) \
                if st.get("role") != "primary" else decision.index
            self._epoch = int(st["epoch"])
        elif isinstance(decision, Escalate):
            note = self._escalate_if_asked(decision.reason)
            raise FailoverExhausted(self._name, -1, f"{decision.reason} ({note})")
        elif isinstance(decision, GiveUp):
            raise FailoverExhausted(self._name, -1, decision.reason)
        # Restart: Ray restarts the process; the re-sent call waits for it.
        self._failovers.append({"decision": type(decision).__name__,
                               "reason": getattr(decision, "reason", ""),
                               "seconds": time.monotonic() - t0})

    def _escalate_if_asked(self, reason: str) -> str:
        """Hand the failure to the running job when the policy says `escalate()`."""
        if self._policy.failover.get(escalate) is None:
            return "the policy does not escalate"
        from resilience._job import current_job

        the_job = current_job()
        if the_job is None:
            return "no job to escalate to"
        return ("the job's escalation hook ran" if the_job.escalate(self._name, reason)
                else "the job has no escalation hook")

    def _seen_seq(self, status: dict[str, Any]) -> int:
        """How far a standby is behind the log (0 when it caught up)."""
        try:
            from checkpoint._wal import read_log

            root = Path(self._policy.store or _default_store()) / self._name / "wal"
            last = 0
            for seq, _ in read_log(root, after_seq=int(status["applied_seq"])):
                last = seq
            return max(0, last - int(status["applied_seq"]))
        except (OSError, CheckpointError):
            return 0

    def _owner_record(self) -> dict[str, int] | None:
        return _Owner(Path(self._policy.store or _default_store()) / self._name).read()

    def _ping(self, index: int | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
        import ray

        target = self._primary_actor() if index is None else self._replica(index)
        return dict(ray.get(target.__resilient_ping__.remote(), timeout=timeout_s))

    def _state(self, timeout_s: float = 10.0) -> Any:
        """The primary's user-object state (tests, tools)."""
        import ray

        return ray.get(self._primary_actor().__resilient_state__.remote(), timeout=timeout_s)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _heartbeat_interval(detect: Detector) -> float:
    detectors = detect.detectors if isinstance(detect, AnyDetector) else (detect,)
    intervals = [d.interval_s for d in detectors if isinstance(d, missed_heartbeats)]
    return min(intervals, default=0.5)


class _Supervisor:
    """Applies the `detect=` policy to the primary; kills it when the policy says failed.

    Runs in the process that created the actor. Ray notices crashed processes, not
    stopped or stuck ones: a stopped primary (missed heartbeats) or one whose calls
    make no progress is killed here, and the failover policy takes it from there.
    """

    def __init__(self, handle: ResilientHandle) -> None:
        self.handle = handle
        self.events: list[dict[str, Any]] = []
        self.interval = _heartbeat_interval(handle._policy.detect)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"supervise-{handle._name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _read(self, index: int) -> tuple[float, int, int] | None:
        path = Path(self.handle._policy.store or _default_store()) / self.handle._name / \
            f"heartbeat-{index}"
        try:
            at, completed, _role, pid = path.read_text().split()
            return float(at), int(completed), int(pid)
        except (OSError, ValueError):
            return None

    def _run(self) -> None:
        import ray

        last_completed: dict[int, tuple[int, float]] = {}
        while not self._stop.wait(self.interval):
            index = self.handle._primary
            beat = self._read(index)
            if beat is None:
                continue  # not started yet
            now = time.time()
            at, completed, pid = beat
            if now - at > self.interval and not _process_alive(pid):
                continue  # it died: Ray restarts it; only a live, silent process is hung
            seen = last_completed.get(index)
            if seen is None or seen[0] != completed:
                last_completed[index] = (completed, now)
            since_progress = now - last_completed[index][1]
            with self.handle._lock:
                pending = sum(1 for c in self.handle._pending.values() if c[4] == index)
            health = Health(alive=True, missed_heartbeats=int((now - at) / self.interval),
                            since_progress_s=since_progress, pending_calls=pending)
            if self.handle._policy.detect.failed(health):
                self.events.append({"at": now, "replica": index, "health": health})
                log.warning("%s#%d looks failed (%s): killing it so the failover policy "
                            "applies", self.handle._name, index, health)
                with contextlib.suppress(Exception):
                    ray.kill(self.handle._replica(index), no_restart=False)
                last_completed.pop(index, None)
                self._stop.wait(max(2.0, self.interval * 4))  # let it come back


class ResilientActorClass:
    """Creates the replicas of a decorated class: `.remote(...)`, `.options(...)` as in Ray."""

    def __init__(self, user_cls: type, policy: ActorPolicy, ray_options: dict[str, Any],
                 host: type | None = None) -> None:
        self.user_cls = user_cls
        self.policy = policy
        self.ray_options = dict(ray_options)
        self.host = host or _make_host(user_cls, policy)

    def options(self, **ray_options: Any) -> ResilientActorClass:
        return ResilientActorClass(self.user_cls, self.policy,
                                   {**self.ray_options, **ray_options}, self.host)

    def remote(self, *args: Any, **kwargs: Any) -> ResilientHandle:
        import ray

        opts = dict(self.ray_options)
        name = opts.pop("name", None) or f"{self.user_cls.__name__}-{uuid.uuid4().hex[:8]}"
        if "#" in name:
            raise ValueError(f"actor name {name!r} must not contain '#'")
        namespace = opts.pop("namespace", None) or ray.get_runtime_context().namespace
        opts.setdefault("num_cpus", 0)
        opts["max_restarts"] = -1  # the policy, not Ray, counts restarts (FailoverExhausted)
        opts.setdefault("max_task_retries", -1)
        if self.policy.log:
            # Async host: calls waiting for one fsync must be able to overlap. (A sync
            # host keeps Ray's default of one call at a time, in submission order.)
            opts.setdefault("max_concurrency", 1000)
        host = self.host
        policy = self.policy
        if policy.store is None:
            # Resolve where state lives now, in the creating process (a job's store, or
            # $RESILIENCE_STORE, or ./.resilience/actors), not in whatever cwd a worker has.
            policy = dataclasses.replace(policy, store=_default_store())
            host = _make_host(self.user_cls, policy, metaclass=type(self.host))
            if isinstance(host, _ResilientMeta):
                host._resilient_factory = self
        remote_host: Any = ray.remote(host)
        replicas = [
            remote_host.options(name=f"{name}#{i}", namespace=namespace, **opts).remote(
                *args, **kwargs)
            for i in range(policy.replicas)
        ]
        handle = ResilientHandle(name, namespace, policy, _public_methods(self.user_cls),
                                 replicas)
        # Creation errors (an unserializable attribute at the first checkpoint) surface here.
        ray.get([r.__resilient_ping__.remote() for r in replicas])
        handle._supervisor = _Supervisor(handle)
        return handle

    def __repr__(self) -> str:
        return f"resilient({self.user_cls.__qualname__}, failover={self.policy.failover!r})"


class _ResilientMeta(type):
    """Metaclass of a decorated plain class: `Cls.remote(...)` works without `@ray.remote`.

    The class itself stays an ordinary class, so `@ray.remote` may also be put on top
    of `@resilient` (Ray then hosts it directly; see `resilient`).
    """

    _resilient_factory: ResilientActorClass

    def remote(cls, *args: Any, **kwargs: Any) -> ResilientHandle:
        return cls._resilient_factory.remote(*args, **kwargs)

    def options(cls, **ray_options: Any) -> ResilientActorClass:
        return cls._resilient_factory.options(**ray_options)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        # Ray builds actors with __new__ + __init__, never through this.
        raise TypeError(f"{cls.__name__} is a resilient actor class: use "
                        f"{cls.__name__}.remote(...)")

    @property
    def ray_options(cls) -> dict[str, Any]:
        return cls._resilient_factory.ray_options


class _QuietOverwriteWarning(logging.Filter):
    """Ray warns that a class defining `remote` gets it overwritten; ours is on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("overwrites attribute" in msg and any(
            f"class {n} " in msg for n in _decorated_names))


_decorated_names: set[str] = set()
logging.getLogger("ray.actor").addFilter(_QuietOverwriteWarning())


def resilient(
    cls: type | None = None,
    *,
    checkpoint: CheckpointTrigger | None = None,
    failover: FailoverAction | FailoverChain | None = None,
    detect: Detector | None = None,
    log: bool = True,
    read_only: Iterable[str] = (),
    state: Iterable[str] | None = None,
    store: str | Path | None = None,
    results_window: int = 100_000,
    format: str = "pickle",
) -> Any:
    """Make a Ray actor class exactly-once and failover-safe (see the module docstring).

    Three placements, all supported:

    * above a plain class: ``Cls.remote(...)`` creates the replicas and returns a
      `ResilientHandle`; ``Cls.options(name=..., ...)`` takes Ray's options;
    * above ``@ray.remote(...)``: the same, keeping that decorator's Ray options;
    * below ``@ray.remote(max_restarts=-1, max_task_retries=-1)``: Ray hosts the class
      directly; calls through the plain Ray handle are logged and deduplicated by
      task id (standbys need the `ResilientHandle`, so not in this placement).

    ``format="msgpack"`` keeps snapshots and the call log in MessagePack instead of
    pickle: plain data only (arguments, results and state), language neutral, and a
    restore never runs code found in the store (see `resilience._actor_codec`).

    Every option is validated now: a wrong one raises here, naming it.
    """
    kwargs: dict[str, Any] = {"log": log, "read_only": frozenset(read_only),
                              "results_window": results_window, "format": format,
                              "state": tuple(state) if state is not None else None,
                              "store": str(store) if store is not None else None}
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    if failover is not None:
        kwargs["failover"] = failover
    if detect is not None:
        kwargs["detect"] = detect
    policy = ActorPolicy(**kwargs)

    def wrap(target: Any) -> Any:
        metadata = getattr(target, "__ray_metadata__", None)
        if metadata is not None:  # above @ray.remote: an ActorClass
            user_cls = metadata.modified_class.__ray_actor_class__
            _check_methods(user_cls, policy)
            return ResilientActorClass(user_cls, policy,
                                       dict(getattr(target, "_default_options", {}) or {}))
        if not inspect.isclass(target):
            raise TypeError(f"@resilient decorates a class, got {target!r}")
        _check_methods(target, policy)
        host: Any = _make_host(target, policy, metaclass=_ResilientMeta)
        host._resilient_factory = ResilientActorClass(target, policy, {}, host)
        _decorated_names.add(host.__name__)
        return host

    return wrap(cls) if cls is not None else wrap


def _check_methods(user_cls: type, policy: ActorPolicy) -> None:
    public = set(_public_methods(user_cls))
    unknown = sorted(set(policy.read_only) - public)
    if unknown:
        raise ValueError(f"resilient(read_only=...): {user_cls.__name__} has no public "
                         f"method {', '.join(unknown)}")
    if policy.state is not None:
        for attr in policy.state:
            if not isinstance(attr, str) or not attr.isidentifier():
                raise ValueError(f"resilient(state=...): {attr!r} is not an attribute name")


def _read_only(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a method as read-only: it skips the log (it must not change state)."""
    setattr(method, _READ_ONLY_MARK, True)
    return method


_REFS: OrderedDict[Any, ResilientHandle] = OrderedDict()  # ref -> handle that made it
_REFS_LOCK = threading.Lock()


def _get(refs: Any, *, timeout_s: float | None = None) -> Any:
    """Like `ray.get`, failing over to a standby for refs made by a `ResilientHandle`."""
    import ray

    items = refs if isinstance(refs, list) else [refs]
    with _REFS_LOCK:
        owners = [_REFS.get(r) for r in items]
    out = []
    for ref, owner in zip(items, owners, strict=True):
        out.append(ray.get(ref, timeout=timeout_s) if owner is None
                   else owner._get(ref, timeout_s=timeout_s))
    with _REFS_LOCK:
        for r in items:
            _REFS.pop(r, None)
    return out if isinstance(refs, list) else out[0]


def _ping(handle: ResilientHandle, index: int | None = None) -> dict[str, Any]:
    """Status of the primary (or of replica `index`): role, epoch, log position, pid."""
    return handle._ping(index)


def _state(handle: ResilientHandle) -> Any:
    """The primary's user-object state (for tests and tools)."""
    return handle._state()


def _job(*args: Any, **kwargs: Any) -> Any:
    from resilience._job import job

    return job(*args, **kwargs)


_job.__doc__ = "Decorate a driver function as a job: see `resilience._job.job`."
resilient.read_only = _read_only  # type: ignore[attr-defined]
resilient.job = _job  # type: ignore[attr-defined]
resilient.get = _get  # type: ignore[attr-defined]
resilient.ping = _ping  # type: ignore[attr-defined]
resilient.state = _state  # type: ignore[attr-defined]
