"""Small, composable, frozen policy objects, and the pure decisions made from them.

In the style of tenacity: each policy is a tiny immutable object, validated when it is
built (a wrong option raises at import time, naming the option), printable, and
combined with ``|``::

    checkpoint=every(seconds=1) | every(calls=10_000)
    detect=missed_heartbeats(3) | no_progress(seconds=5)
    failover=standby(1) | restart(max=10) | escalate()

A checkpoint trigger fires when any of its parts does; a detector reports a failure
when any of its parts does; a failover chain is tried left to right. The decisions
(`CheckpointTrigger.due`, `Detector.failed`, `decide`) are pure functions of status
snapshots, so they are tested without a cluster; only the runtime acts on them.
Restart backoff reuses tenacity's wait strategies (`wait_exponential`, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol, runtime_checkable

import tenacity

__all__ = [
    "AnyDetector",
    "AnyTrigger",
    "CheckpointTrigger",
    "Decision",
    "Detector",
    "EscalateToJob",
    "FailCalls",
    "FailoverAction",
    "FailoverChain",
    "FailoverState",
    "Health",
    "PromoteStandby",
    "RestartActor",
    "StandbyStatus",
    "decide",
    "escalate",
    "every",
    "missed_heartbeats",
    "no_progress",
    "restart",
    "standby",
]


def _positive(owner: str, name: str, value: float | None, *, integer: bool = False) -> None:
    if value is None:
        return
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r}")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")


# -- checkpoint triggers -----------------------------------------------------------


@runtime_checkable
class CheckpointTrigger(Protocol):
    """Says when an actor's state should be snapshotted."""

    def due(self, *, calls: int, seconds: float) -> bool:
        """`calls` and `seconds` since the last snapshot."""


@dataclass(frozen=True)
class every:  # noqa: N801 - reads like tenacity's stop_after_delay(...)
    """Snapshot after `seconds` of wall time or after `calls` logged calls (exactly one)."""

    seconds: float | None = None
    calls: int | None = None

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.calls is None):
            raise TypeError("every(): give exactly one of seconds= or calls=")
        _positive("every()", "seconds", self.seconds)
        _positive("every()", "calls", self.calls, integer=True)

    def due(self, *, calls: int, seconds: float) -> bool:
        if self.calls is not None:
            return calls >= self.calls
        assert self.seconds is not None
        return calls > 0 and seconds >= self.seconds

    def __or__(self, other: CheckpointTrigger) -> AnyTrigger:
        return AnyTrigger((self,)) | other

    def __repr__(self) -> str:
        return f"every(seconds={self.seconds:g})" if self.seconds else f"every(calls={self.calls})"


@dataclass(frozen=True)
class AnyTrigger:
    """Fires when any of its triggers does."""

    triggers: tuple[CheckpointTrigger, ...]

    def __post_init__(self) -> None:
        for t in self.triggers:
            if not isinstance(t, CheckpointTrigger):
                raise TypeError(f"not a checkpoint trigger: {t!r}")

    def due(self, *, calls: int, seconds: float) -> bool:
        return any(t.due(calls=calls, seconds=seconds) for t in self.triggers)

    def __or__(self, other: CheckpointTrigger) -> AnyTrigger:
        more = other.triggers if isinstance(other, AnyTrigger) else (other,)
        return AnyTrigger((*self.triggers, *more))

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.triggers)


# -- failure detection --------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """What the runtime observed about one actor (a status snapshot)."""

    alive: bool = True  # False when Ray reports the process gone
    missed_heartbeats: int = 0
    since_progress_s: float = 0.0  # time since a call last completed
    pending_calls: int = 0


@runtime_checkable
class Detector(Protocol):
    """Says whether an actor is to be considered failed."""

    def failed(self, health: Health) -> bool: ...


@dataclass(frozen=True)
class missed_heartbeats:  # noqa: N801
    """Failed after `count` heartbeats in a row went unanswered (every `interval_s`)."""

    count: int = 3
    interval_s: float = 0.5

    def __post_init__(self) -> None:
        _positive("missed_heartbeats()", "count", self.count, integer=True)
        _positive("missed_heartbeats()", "interval_s", self.interval_s)

    def failed(self, health: Health) -> bool:
        return not health.alive or health.missed_heartbeats >= self.count

    def __or__(self, other: Detector) -> AnyDetector:
        return AnyDetector((self,)) | other

    def __repr__(self) -> str:
        return f"missed_heartbeats({self.count}, interval_s={self.interval_s:g})"


@dataclass(frozen=True)
class no_progress:  # noqa: N801
    """Failed when calls are pending but none completed for `seconds` (a hung actor)."""

    seconds: float = 5.0

    def __post_init__(self) -> None:
        _positive("no_progress()", "seconds", self.seconds)

    def failed(self, health: Health) -> bool:
        return health.pending_calls > 0 and health.since_progress_s >= self.seconds

    def __or__(self, other: Detector) -> AnyDetector:
        return AnyDetector((self,)) | other

    def __repr__(self) -> str:
        return f"no_progress(seconds={self.seconds:g})"


@dataclass(frozen=True)
class AnyDetector:
    """Failed when any of its detectors says so."""

    detectors: tuple[Detector, ...]

    def __post_init__(self) -> None:
        for d in self.detectors:
            if not isinstance(d, Detector):
                raise TypeError(f"not a failure detector: {d!r}")

    def failed(self, health: Health) -> bool:
        return any(d.failed(health) for d in self.detectors)

    def __or__(self, other: Detector) -> AnyDetector:
        more = other.detectors if isinstance(other, AnyDetector) else (other,)
        return AnyDetector((*self.detectors, *more))

    def __repr__(self) -> str:
        return " | ".join(repr(d) for d in self.detectors)


# -- failover actions -----------------------------------------------------------------


class FailoverAction:
    """Base of the failover actions; `a | b` tries a, then b."""

    def __or__(self, other: FailoverAction | FailoverChain) -> FailoverChain:
        return FailoverChain((self,)) | other


def _default_backoff() -> Any:
    return tenacity.wait_exponential(multiplier=0.05, max=2.0)


@dataclass(frozen=True, repr=False)
class restart(FailoverAction):  # noqa: N801
    """Let Ray restart the process and restore its state; at most `max` times.

    `backoff` is a tenacity wait strategy (called with the attempt number) applied
    before restoring; the default waits 0.05 s, 0.1 s, 0.2 s ... up to 2 s.
    """

    max: int = 10
    backoff: Any = field(default_factory=_default_backoff)

    def __post_init__(self) -> None:
        _positive("restart()", "max", self.max, integer=True)
        if not callable(self.backoff):
            raise TypeError(f"restart(): backoff must be a tenacity wait strategy, "
                            f"got {self.backoff!r}")

    def delay_s(self, attempt: int) -> float:
        """Backoff before restart number `attempt` (1-based)."""
        state = SimpleNamespace(attempt_number=attempt, outcome=None, seconds_since_start=0.0,
                                idle_for=0.0)
        return float(self.backoff(state))

    def __repr__(self) -> str:
        return f"restart(max={self.max})"


@dataclass(frozen=True, repr=False)
class standby(FailoverAction):  # noqa: N801
    """Keep `n` warm replicas following the call log; promote one without a process start.

    A replica more than `max_lag` calls behind is reported and never promoted.
    """

    n: int = 1
    max_lag: int = 10_000

    def __post_init__(self) -> None:
        _positive("standby()", "n", self.n, integer=True)
        _positive("standby()", "max_lag", self.max_lag, integer=True)

    def __repr__(self) -> str:
        return f"standby({self.n}, max_lag={self.max_lag})"


@dataclass(frozen=True, repr=False)
class escalate(FailoverAction):  # noqa: N801
    """Hand the failure to the job: a whole-job restore from its last checkpoint."""

    def __repr__(self) -> str:
        return "escalate()"


@dataclass(frozen=True)
class FailoverChain:
    """Failover actions in order of preference."""

    actions: tuple[FailoverAction, ...]

    def __post_init__(self) -> None:
        if not self.actions:
            raise ValueError("a failover chain needs at least one action")
        kinds = [type(a) for a in self.actions]
        for a in self.actions:
            if not isinstance(a, FailoverAction):
                raise TypeError(f"not a failover action: {a!r}")
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"failover chain {self!r} names the same action twice")

    def __or__(self, other: FailoverAction | FailoverChain) -> FailoverChain:
        more = other.actions if isinstance(other, FailoverChain) else (other,)
        return FailoverChain((*self.actions, *more))

    def get(self, kind: type[Any]) -> Any:
        return next((a for a in self.actions if isinstance(a, kind)), None)

    def __repr__(self) -> str:
        return " | ".join(repr(a) for a in self.actions)


@dataclass(frozen=True)
class StandbyStatus:
    """One warm replica as the runtime sees it."""

    index: int
    alive: bool
    lag_calls: int


@dataclass(frozen=True)
class FailoverState:
    """What the decision needs: restarts used so far and the replicas' state."""

    restarts_used: int = 0
    standbys: Sequence[StandbyStatus] = ()


@dataclass(frozen=True)
class PromoteStandby:
    index: int
    reason: str


@dataclass(frozen=True)
class RestartActor:
    delay_s: float
    attempt: int
    reason: str


@dataclass(frozen=True)
class EscalateToJob:
    reason: str


@dataclass(frozen=True)
class FailCalls:
    reason: str


Decision = PromoteStandby | RestartActor | EscalateToJob | FailCalls


def decide(policy: FailoverAction | FailoverChain, state: FailoverState) -> Decision:
    """What to do about a failed primary. Pure: the same inputs give the same decision."""
    chain = policy if isinstance(policy, FailoverChain) else FailoverChain((policy,))
    notes: list[str] = []
    for action in chain.actions:
        if isinstance(action, standby):
            ready = [s for s in state.standbys if s.alive and s.lag_calls <= action.max_lag]
            lagging = [s for s in state.standbys if s.alive and s.lag_calls > action.max_lag]
            notes.extend(f"standby {s.index} is {s.lag_calls} calls behind "
                         f"(bound {action.max_lag}): not promoted" for s in lagging)
            if ready:
                best = min(ready, key=lambda s: (s.lag_calls, s.index))
                return PromoteStandby(best.index, "; ".join([f"standby {best.index} "
                                                      f"({best.lag_calls} calls behind)", *notes]))
            if not state.standbys or not any(s.alive for s in state.standbys):
                notes.append("no live standby")
        elif isinstance(action, restart):
            attempt = state.restarts_used + 1
            if attempt <= action.max:
                return RestartActor(action.delay_s(attempt), attempt,
                               "; ".join([f"restart {attempt} of {action.max}", *notes]))
            notes.append(f"restart budget of {action.max} spent")
        elif isinstance(action, escalate):
            return EscalateToJob("; ".join(["escalated to a whole-job restore", *notes]))
    return FailCalls("; ".join(notes) or "no failover action applies")
