"""The fault vocabulary: what can be broken, how it is injected and how it is healed.

A `FaultStep` is a line of a scenario (kind, target, when, for how long). Its kind
names a `FaultType` in `FAULT_KINDS`, which knows how to inject it into a running
environment and how to heal it. Every injection and healing is journaled with its
time by the runner. Healing is idempotent and always happens, also when a run is
interrupted (the rollback).

Faults of a job on two sites (`SITE_FAULTS`: the active site lost, cut off, or handed
over) are carried out by a drill (`chaos._sites_run`). Kinds that need a capability not
built yet (bad models) are in the vocabulary already, marked unavailable: a scenario that
uses them is refused with the reason, not silently ignored.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from checkpoint import FileSystemStore
from resilience import faultpoints
from resilience.clock import Skew, skew, unskew

__all__ = ["FAULT_KINDS", "SITE_FAULTS", "FaultStep", "FaultType", "Injected", "check_fault"]


@dataclass(frozen=True)
class FaultStep:
    """One fault of a scenario: `kind` at `target`, at a time or after some input lines."""

    kind: str
    target: str = ""
    at_seconds: float | None = None
    at_lines: int | None = None
    duration: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    line: int | None = None

    def to_yaml(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"fault": self.kind}
        if self.target:
            doc["target"] = self.target
        if self.at_lines is not None:
            doc["at"] = {"lines": self.at_lines}
        elif self.at_seconds is not None:
            doc["at"] = {"seconds": self.at_seconds}
        if self.duration is not None:
            doc["duration"] = self.duration
        if self.params:
            doc["params"] = dict(self.params)
        return doc

    def describe(self) -> str:
        when = (f"after {self.at_lines:,} lines" if self.at_lines is not None
                else f"at {self.at_seconds:g}s" if self.at_seconds is not None else "at once")
        dur = f" for {self.duration:g}s" if self.duration is not None else ""
        tgt = f" {self.target}" if self.target else ""
        args = (" (" + ", ".join(f"{k}={v}" for k, v in sorted(self.params.items())) + ")"
                if self.params else "")
        return f"{self.kind}{tgt} {when}{dur}{args}"


class Environment(Protocol):
    """What faults act on (implemented by the runner)."""

    workdir: Any
    job_id: str

    @property
    def job_dir(self) -> Any:
        """The job's own workdir: its fault points and checkpoint store live there."""

    def task_pid(self, task: str) -> int: ...

    def task_names(self) -> list[str]: ...

    def coordinator_pid(self) -> int: ...

    def helper_pids(self, kind: str) -> dict[str, int]:
        """Task -> pid of the `kind` process its operator runs (``"java"``: its JVM)."""

    def etcd_member(self, index: int) -> Any: ...

    def proxy(self, link: str) -> Any: ...

    def node(self, index: int) -> Any: ...

    def remove_node(self, index: int) -> None: ...

    def restore_node(self, index: int) -> None: ...

    def coordinator_lease(self) -> int | None: ...

    def revoke_lease(self, lease_id: int) -> None: ...


@dataclass
class Injected:
    """A fault as injected: what the heal needs to undo it."""

    step: FaultStep
    target: str  # resolved (a random task chosen, ...)
    detail: str = ""
    undo: Callable[[], None] | None = None
    healed: bool = False

    def heal(self) -> None:
        if not self.healed:
            self.healed = True
            if self.undo is not None:
                self.undo()


@dataclass(frozen=True)
class FaultType:
    """A kind of fault: its checks, its injection, what the environment must offer."""

    name: str
    description: str
    inject: Callable[[Environment, FaultStep, Any], Injected] | None
    targeted: bool = False
    target_prefixes: tuple[str, ...] = ()
    has_duration: bool = False
    duration_required: bool = False
    needs: tuple[str, ...] = ()
    available: bool = True
    unavailable_reason: str = ""
    # What a random schedule picks `params` from (a kind whose params have defaults: none).
    random_params: tuple[Mapping[str, Any], ...] = ()
    min_duration_s: float = 0.5  # the shortest duration that makes sense (and is drawn)

    def targets_among(self, targets: Sequence[str]) -> list[str]:
        """The targets (of a random schedule) this kind of fault can take."""
        return [t for t in targets if t.startswith(self.target_prefixes)]


def _resolve_task(env: Environment, target: str, rng: Any) -> str:
    name = target.removeprefix("task:")
    names = env.task_names()
    if name == "*":
        return str(rng.choice(sorted(names)))
    if name not in names:
        raise ValueError(f"no task {name!r} in this job (tasks: {', '.join(sorted(names))})")
    return name


def _pid_of(env: Environment, target: str, rng: Any) -> tuple[str, int]:
    if target == "coordinator":
        return "coordinator", env.coordinator_pid()
    if target.startswith("java:"):
        # The JVM of a Java stage (task balances-0 with balances_stage: java).
        jvms = env.helper_pids("java")
        name = target.removeprefix("java:")
        if name == "*":
            if not jvms:
                raise ValueError("no task of this job runs a Java actor "
                                 "(set job.balances_stage: java)")
            name = str(rng.choice(sorted(jvms)))
        if name not in jvms:
            raise ValueError(f"task {name!r} runs no Java actor (tasks with one: "
                             f"{', '.join(sorted(jvms)) or 'none'})")
        return f"java:{name}", jvms[name]
    task = _resolve_task(env, target, rng)
    return f"task:{task}", env.task_pid(task)


def _kill(env: Environment, step: FaultStep, rng: Any) -> Injected:
    target, pid = _pid_of(env, step.target, rng)
    os.kill(pid, signal.SIGKILL)
    return Injected(step, target, f"SIGKILL pid {pid}")


def _pause(env: Environment, step: FaultStep, rng: Any) -> Injected:
    target, pid = _pid_of(env, step.target, rng)
    os.kill(pid, signal.SIGSTOP)

    def undo() -> None:
        # Killed meanwhile (a supervisor, a health check): nothing to resume.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    return Injected(step, target, f"SIGSTOP pid {pid}", undo)


def _member(step: FaultStep) -> int:
    return int(step.target.removeprefix("etcd:"))


def _etcd_kill(env: Environment, step: FaultStep, rng: Any) -> Injected:
    member = env.etcd_member(_member(step))
    member.kill()
    return Injected(step, step.target, "SIGKILL of an etcd member", member.restart)


def _etcd_pause(env: Environment, step: FaultStep, rng: Any) -> Injected:
    member = env.etcd_member(_member(step))
    member.pause()
    return Injected(step, step.target, "SIGSTOP of an etcd member", member.resume)


def _lease_expire(env: Environment, step: FaultStep, rng: Any) -> Injected:
    lease = env.coordinator_lease()
    if lease is None:
        return Injected(step, "coordinator lease", "no leader at that moment: nothing to expire")
    env.revoke_lease(lease)
    return Injected(step, "coordinator lease", f"revoked lease {lease:x}")


def _link(env: Environment, step: FaultStep) -> Any:
    return env.proxy(step.target.removeprefix("link:"))


def _partition(env: Environment, step: FaultStep, rng: Any) -> Injected:
    proxy = _link(env, step)
    proxy.blackhole()
    return Injected(step, step.target, "blackhole", proxy.heal)


def _latency(env: Environment, step: FaultStep, rng: Any) -> Injected:
    proxy = _link(env, step)
    ms = float(step.params.get("ms", 200))
    jitter = float(step.params.get("jitter_ms", 0))
    proxy.set_latency(ms, jitter, rng=rng)
    return Injected(step, step.target, f"latency {ms:g}ms ±{jitter:g}", proxy.heal)


def _link_reset(env: Environment, step: FaultStep, rng: Any) -> Injected:
    _link(env, step).reset_connections()
    return Injected(step, step.target, "connections reset")


def _storage(env: Environment, step: FaultStep, rng: Any) -> Injected:
    mode = str(step.params.get("mode", "enospc"))
    action = f"slow {float(step.params.get('seconds', 0.5))}" if mode == "slow" else mode
    faultpoints.arm(env.job_dir, faultpoints.STORE_WRITE, action)
    return Injected(step, "checkpoint store", f"every write: {action}",
                    lambda: faultpoints.disarm(env.job_dir, faultpoints.STORE_WRITE))


def _clock_skew(env: Environment, step: FaultStep, rng: Any) -> Injected:
    if step.target == "coordinator":
        component = "coordinator"
    else:
        component = f"task:{_resolve_task(env, step.target, rng)}"
    s = skew(env.job_dir, component, offset_s=float(step.params.get("offset_s", 0.0)),
             rate=float(step.params.get("rate", 1.0)))
    return Injected(step, component, f"clock at {s.rate:g}x real speed, {s.offset_s:+g} s",
                    lambda: unskew(env.job_dir, component))


def _corrupt_checkpoint(env: Environment, step: FaultStep, rng: Any) -> Injected:
    store = FileSystemStore(env.job_dir / "checkpoints", job_id=env.job_id)
    ids = store.list_checkpoints()
    if not ids:
        return Injected(step, "checkpoint store", "no checkpoint yet: nothing corrupted")
    manifest = store.get_manifest(ids[-1])
    chunks = sorted(manifest.chunk_refs())
    if not chunks:
        return Injected(step, "checkpoint store", f"checkpoint {ids[-1]} has no chunk")
    ref = chunks[rng.randrange(len(chunks))]
    path = store.chunk_path(ref)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the checksum can tell
    path.write_bytes(bytes(data))
    return Injected(step, f"checkpoint {ids[-1]}", f"flipped a byte of chunk {ref.hex[:12]}")


def _sink_crash_mid_commit(env: Environment, step: FaultStep, rng: Any) -> Injected:
    point = faultpoints.SINK_BEFORE_COMMIT.format(sink=step.params.get("sink", "ledger"))
    faultpoints.arm(env.job_dir, point, "kill")
    return Injected(step, point, "the sink dies after its pre-commit, before its commit",
                    lambda: faultpoints.disarm(env.job_dir, point))


def _node_loss(env: Environment, step: FaultStep, rng: Any) -> Injected:
    index = int(step.target.removeprefix("node:"))
    env.remove_node(index)
    return Injected(step, step.target, "raylet and every worker of the node killed",
                    lambda: env.restore_node(index))


_TASK = ("task:", "java:", "coordinator")
_SITE_PARAMS = tuple({"mode": m, "failback": f} for m in ("sync", "async") for f in (False, True))
SITE_FAULTS = ("site_loss", "replication_partition", "switchover")
"""Faults of a job on two sites; the drill (`resilience drill`) injects them."""
_LATER = "is part of the vocabulary, but needs {}, which is not built yet"

FAULT_KINDS: dict[str, FaultType] = {f.name: f for f in [
    FaultType("kill", "SIGKILL of a task's worker process, a Java stage's JVM or the "
              "coordinator", _kill, targeted=True, target_prefixes=_TASK),
    FaultType("pause", "SIGSTOP for `duration` seconds, then SIGCONT", _pause, targeted=True,
              target_prefixes=_TASK, has_duration=True, duration_required=True),
    FaultType("etcd_kill", "SIGKILL of an etcd member, restarted after `duration`", _etcd_kill,
              targeted=True, target_prefixes=("etcd:",), has_duration=True,
              needs=("etcd_cluster",)),
    FaultType("etcd_pause", "SIGSTOP of an etcd member for `duration`", _etcd_pause,
              targeted=True, target_prefixes=("etcd:",), has_duration=True,
              duration_required=True, needs=("etcd_cluster",)),
    FaultType("lease_expire", "revoke the coordinator's leader lease in etcd", _lease_expire),
    FaultType("partition", "blackhole a network link for `duration`", _partition,
              targeted=True, target_prefixes=("link:",), has_duration=True,
              duration_required=True, needs=("etcd_proxy",)),
    FaultType("latency", "delay a link (params ms, jitter_ms) for `duration`", _latency,
              targeted=True, target_prefixes=("link:",), has_duration=True,
              duration_required=True, needs=("etcd_proxy",)),
    FaultType("link_reset", "reset every connection of a link", _link_reset, targeted=True,
              target_prefixes=("link:",), needs=("etcd_proxy",)),
    FaultType("storage", "the checkpoint store fails writes (params mode: enospc, eio, slow)",
              _storage, has_duration=True, duration_required=True),
    FaultType("corrupt_checkpoint", "flip a byte of a chunk of the newest checkpoint",
              _corrupt_checkpoint),
    FaultType("sink_crash_mid_commit", "kill the sink between its pre-commit and its commit",
              _sink_crash_mid_commit),
    FaultType("node_loss", "lose a whole Ray node (raylet and workers); it comes back after "
              "`duration`", _node_loss, targeted=True, target_prefixes=("node:",),
              has_duration=True, needs=("nodes",)),
    # Two sites: a drill carries these (chaos._sites_run), not the one-site environment.
    FaultType("site_loss", "lose the active site: SIGKILL of its driver, its Ray and its "
              "etcd member (params mode: sync|async, failback: true|false)", None,
              needs=("sites",), random_params=_SITE_PARAMS),
    FaultType("replication_partition", "cut the active site off for `duration`: its etcd "
              "member stops answering, the replication link is blackholed both ways, its "
              "processes run on (params mode, failback)", None, has_duration=True,
              duration_required=True, needs=("sites",), random_params=_SITE_PARAMS,
              min_duration_s=4.0),
    FaultType("switchover", "a planned handover from the active site to the standby "
              "(params mode, failback)", None, needs=("sites",), random_params=_SITE_PARAMS),
    FaultType("poison_labels", "poisoned labels for a window", None, has_duration=True,
              available=False, unavailable_reason=_LATER.format("model version rollback")),
    FaultType("clock_skew", "skew the project clock of the coordinator or a task for "
              "`duration` (params rate: speed vs real time, offset_s: a jump)", _clock_skew,
              targeted=True, target_prefixes=("task:", "coordinator"), has_duration=True,
              duration_required=True,
              random_params=({"rate": 0.1}, {"rate": 0.5}, {"rate": 4.0}, {"offset_s": 30.0})),
]}


def _clock_params_problem(params: Mapping[str, Any]) -> str | None:
    unknown = sorted(set(params) - {"rate", "offset_s"})
    if unknown:
        return f"clock_skew params are rate and offset_s, not {', '.join(unknown)}"
    if not params:
        return "clock_skew needs params rate (speed vs real time) and/or offset_s (a jump)"
    for name in ("rate", "offset_s"):
        value = params.get(name, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            return f"clock_skew params {name} must be a number, got {value!r}"
    try:  # the clock's own rules for what a skew may be
        Skew(offset_s=float(params.get("offset_s", 0.0)), rate=float(params.get("rate", 1.0)))
    except ValueError as e:
        return f"clock_skew params: {e}"
    return None


def check_fault(step: FaultStep) -> str | None:
    """Why `step` is not a valid fault, or None."""
    ftype = FAULT_KINDS.get(step.kind)
    if ftype is None:
        return f"unknown fault kind {step.kind!r} (known: {', '.join(sorted(FAULT_KINDS))})"
    if not ftype.available:
        return f"fault {step.kind!r} {ftype.unavailable_reason}"
    if ftype.targeted and not step.target:
        return f"fault {step.kind!r} needs a target ({' or '.join(ftype.target_prefixes)}...)"
    if ftype.targeted and not step.target.startswith(ftype.target_prefixes):
        return (f"fault {step.kind!r}: target {step.target!r} must start with "
                f"{' or '.join(ftype.target_prefixes)}")
    if not ftype.targeted and step.target:
        return f"fault {step.kind!r} takes no target"
    if step.duration is not None and not ftype.has_duration:
        return f"fault {step.kind!r} has no duration"
    if ftype.duration_required and step.duration is None:
        return f"fault {step.kind!r} needs a duration (seconds)"
    if step.duration is not None and step.duration <= 0:
        return "duration must be > 0"
    if step.duration is not None and step.duration < ftype.min_duration_s:
        return (f"fault {step.kind!r} lasts at least {ftype.min_duration_s:g}s (shorter, "
                "the active site's lease outlives it and nothing is taken over)")
    if step.at_seconds is None and step.at_lines is None:
        return "a fault needs 'at' (seconds or lines)"
    if step.kind == "storage" and step.params.get("mode", "enospc") not in (
            "enospc", "eio", "slow"):
        return "storage params mode must be enospc, eio or slow"
    if step.kind in SITE_FAULTS:
        unknown = sorted(set(step.params) - {"mode", "failback"})
        if unknown:
            return f"{step.kind} params are mode and failback, not {', '.join(unknown)}"
        if step.params.get("mode", "sync") not in ("sync", "async"):
            return f"{step.kind} params mode must be sync or async"
        if not isinstance(step.params.get("failback", False), bool):
            return f"{step.kind} params failback must be true or false"
    if step.kind == "clock_skew":
        problem = _clock_params_problem(step.params)
        if problem:
            return problem
    for prefix in ("etcd:", "node:"):
        if step.target.startswith(prefix) and not step.target[len(prefix):].isdigit():
            return f"target {step.target!r}: {prefix}<index>"
    return None
