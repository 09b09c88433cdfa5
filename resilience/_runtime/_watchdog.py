"""The driver's watchdog: what a running job stands on, checked every poll, with deadlines.

A job stands on etcd (leadership, checkpoint records), on Ray (the node its actors
run on) and on its coordinator. When one of them goes, the job must neither hang nor
lie: within seconds it either recovers (restart the embedded etcd, or the local Ray
node, when this process started them, and resume from the last checkpoint) or ends
with one line naming the cause and a non-zero exit, so that a supervisor can act.

`decide` is the policy, a pure function of one `Health` observation; `Watchdog`
observes and carries the decision out. Only the watchdog talks to the processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from resilience._errors import InfrastructureError

__all__ = [
    "Deadlines",
    "Health",
    "RestartEtcd",
    "RestartRay",
    "StopRun",
    "Watchdog",
    "decide",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deadlines:
    """How long the driver waits on each part before it gives up (or restarts it).

    `etcd_unreachable_s`: etcd answers nothing (an external one: give up; the embedded
    one: kill and restart it). `coordinator_silent_s`: the job's coordinator answers
    no status call. `electing_s`: the coordinator cannot lead the job (etcd refuses or
    another leader holds it). `restoring_s`: one restore takes this long.
    `max_restarts`: restarts of the embedded etcd, and of the local Ray, per run.
    """

    etcd_unreachable_s: float = 15.0
    coordinator_silent_s: float = 45.0
    electing_s: float = 60.0
    restoring_s: float = 180.0
    max_restarts: int = 3

    def __post_init__(self) -> None:
        for name in ("etcd_unreachable_s", "coordinator_silent_s", "electing_s",
                     "restoring_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Deadlines.{name} must be > 0, got {value}")
        if self.max_restarts < 0:
            raise ValueError(f"Deadlines.max_restarts must be >= 0, got {self.max_restarts}")


@dataclass(frozen=True)
class Health:
    """One observation by the driver. Durations are seconds of real time."""

    etcd_embedded: bool
    ray_local: bool
    etcd_exited: str | None = None  # the embedded etcd's process is gone: how
    etcd_silent_s: float = 0.0  # since etcd last answered
    ray_lost: str | None = None  # the local Ray node lost a process: which
    coordinator_silent_s: float = 0.0  # since the coordinator last answered
    state: str | None = None  # the coordinator's state
    state_s: float = 0.0  # how long it has been in that state
    etcd_restarts: int = 0
    ray_restarts: int = 0


@dataclass(frozen=True)
class RestartEtcd:
    reason: str


@dataclass(frozen=True)
class RestartRay:
    reason: str


@dataclass(frozen=True)
class StopRun:
    reason: str


Action = RestartEtcd | RestartRay | StopRun | None


def decide(health: Health, deadlines: Deadlines) -> Action:
    """What to do about `health`: restart a part this process owns, give up, or nothing."""
    h, d = health, deadlines
    if h.ray_lost is not None:
        if h.ray_local and h.ray_restarts < d.max_restarts:
            return RestartRay(h.ray_lost)
        return StopRun(h.ray_lost + (f" ({h.ray_restarts} restarts already)" if h.ray_local
                                    else ""))
    if h.etcd_exited is not None:
        if h.etcd_embedded and h.etcd_restarts < d.max_restarts:
            return RestartEtcd(h.etcd_exited)
        return StopRun(h.etcd_exited)
    if h.etcd_silent_s > d.etcd_unreachable_s:
        what = f"etcd has not answered for {h.etcd_silent_s:.0f} s"
        if h.etcd_embedded and h.etcd_restarts < d.max_restarts:
            return RestartEtcd(what)
        return StopRun(what)
    if h.coordinator_silent_s > d.coordinator_silent_s:
        return StopRun(f"the job's coordinator has not answered for "
                      f"{h.coordinator_silent_s:.0f} s (is the Ray cluster reachable?)")
    if h.state == "electing" and h.state_s > d.electing_s:
        return StopRun(f"the coordinator could not lead the job for {h.state_s:.0f} s "
                      "(etcd refuses it, or another coordinator holds the job)")
    if h.state == "restoring" and h.state_s > d.restoring_s:
        return StopRun(f"a restore has lasted {h.state_s:.0f} s")
    return None


class Infrastructure(Protocol):
    """What the watchdog needs from the job's driver (`resilience._job.Job`)."""

    @property
    def etcd_embedded(self) -> bool: ...

    @property
    def ray_local(self) -> bool: ...

    def etcd_exited(self) -> str | None: ...

    def etcd_answers(self) -> bool: ...

    def ray_lost(self) -> str | None: ...

    def restart_etcd(self) -> None: ...

    def restart_ray(self) -> None: ...

    def after_etcd_restart(self) -> None: ...


@dataclass
class Watchdog:
    """Checks a running pipeline's footing every poll and acts on `decide`.

    `check(runner, status)` is called by `PipelineRunner.wait` after each status poll
    (status None: the coordinator did not answer). It raises `InfrastructureError`
    with one line when the job cannot go on.
    """

    infra: Infrastructure
    deadlines: Deadlines = field(default_factory=Deadlines)
    clock: Callable[[], float] = time.monotonic
    etcd_probe_every_s: float = 1.0
    _etcd_ok_at: float = field(default=-1.0, init=False)
    _etcd_probed_at: float = field(default=-1.0, init=False)
    _status_ok_at: float = field(default=-1.0, init=False)
    _state: str | None = field(default=None, init=False)
    _state_since: float = field(default=-1.0, init=False)
    etcd_restarts: int = field(default=0, init=False)
    ray_restarts: int = field(default=0, init=False)
    events: list[str] = field(default_factory=list, init=False)

    def _reset_clocks(self, now: float) -> None:
        self._etcd_ok_at = self._etcd_probed_at = self._status_ok_at = now
        self._state, self._state_since = None, now

    def observe(self, status: dict[str, Any] | None) -> Health:
        now = self.clock()
        if self._status_ok_at < 0:
            self._reset_clocks(now)
        if status is not None:
            self._status_ok_at = now
            state = status.get("state")
            if state != self._state:
                self._state, self._state_since = state, now
        if now - self._etcd_probed_at >= self.etcd_probe_every_s:
            self._etcd_probed_at = now
            if self.infra.etcd_answers():
                self._etcd_ok_at = now
        return Health(
            etcd_embedded=self.infra.etcd_embedded,
            ray_local=self.infra.ray_local,
            etcd_exited=self.infra.etcd_exited(),
            etcd_silent_s=now - self._etcd_ok_at,
            ray_lost=self.infra.ray_lost(),
            coordinator_silent_s=now - self._status_ok_at,
            state=self._state,
            state_s=now - self._state_since,
            etcd_restarts=self.etcd_restarts,
            ray_restarts=self.ray_restarts,
        )

    def check(self, runner: Any, status: dict[str, Any] | None) -> None:
        action = decide(self.observe(status), self.deadlines)
        if action is None:
            return
        if isinstance(action, StopRun):
            raise InfrastructureError(f"job {runner.spec.job_id} stopped: {action.reason}")
        if isinstance(action, RestartEtcd):
            self._note(f"{action.reason}; restarting the embedded etcd")
            self.etcd_restarts += 1
            self.infra.restart_etcd()
            self.infra.after_etcd_restart()
        elif isinstance(action, RestartRay):
            self._note(f"{action.reason}; restarting the local Ray and the job's actors "
                       "(they resume from the last checkpoint)")
            self.ray_restarts += 1
            runner.abandon()
            self.infra.restart_ray()
            runner.start()
        self._reset_clocks(self.clock())

    def _note(self, message: str) -> None:
        log.warning("%s", message)
        self.events.append(message)
