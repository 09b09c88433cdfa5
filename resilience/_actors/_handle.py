"""The caller's side: `ResilientHandle` sends calls with ids of their own and fails over
to a standby; the supervisor that watches the primary's heartbeat; `get`/`ping`/`state`."""


from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from checkpoint import (
    CheckpointError,
)
from resilience._actors._codec import codec_for
from resilience._actors._files import _Owner
from resilience._actors._policy import ActorPolicy, _default_store
from resilience._errors import (
    FailoverExhausted,
)
from resilience.policies import (
    AnyDetector,
    Detector,
    EscalateToJob,
    FailCalls,
    FailoverState,
    Health,
    PromoteStandby,
    StandbyStatus,
    decide,
    escalate,
    missed_heartbeats,
)

log = logging.getLogger(__name__)

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
        if isinstance(decision, PromoteStandby):
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
        elif isinstance(decision, EscalateToJob):
            note = self._escalate_if_asked(decision.reason)
            raise FailoverExhausted(self._name, -1, f"{decision.reason} ({note})")
        elif isinstance(decision, FailCalls):
            raise FailoverExhausted(self._name, -1, decision.reason)
        # RestartActor: Ray restarts the process; the re-sent call waits for it.
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
            from checkpoint import read_log

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
                # ray.kill asks the worker to exit, which a stopped (SIGSTOP) or wedged
                # process never does: seen taking minutes. The heartbeat names its pid on
                # this host, so it is killed outright too.
                if _process_alive(pid) and _is_ray_worker(pid):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                last_completed.pop(index, None)
                self._stop.wait(max(2.0, self.interval * 4))  # let it come back


def _is_ray_worker(pid: int) -> bool:
    """Whether `pid` is a Ray worker (its title starts with ``ray::``): a heartbeat's pid
    may have been reused by another process since."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False
