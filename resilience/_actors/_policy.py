"""Where an actor's state lives and what its decorator asked for (`ActorPolicy`)."""


from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resilience._actors._codec import FORMATS
from resilience.policies import (
    AnyDetector,
    AnyTrigger,
    CheckpointTrigger,
    Detector,
    FailoverAction,
    FailoverChain,
    every,
    missed_heartbeats,
    restart,
    standby,
)

log = logging.getLogger(__name__)

STORE_ENV = "RESILIENCE_STORE"
_READ_ONLY_MARK = "__resilient_read_only__"
_SNAPSHOT_FORMAT = 1
_KEPT_SNAPSHOTS = 2


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
