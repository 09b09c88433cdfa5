"""What one site of a multi-site job knows about its part in it: plain, picklable data.

The runtime carries a `ReplicationConfig` in the `PipelineSpec` of each site (every
actor gets it from its constructor arguments); `resilience.replication.Sites` builds it
from a sites file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["MODES", "ON_STANDBY_LOSS", "LinkSecurity", "Mode", "OnStandbyLoss",
           "ReplicationConfig"]

Mode = Literal["sync", "async"]
OnStandbyLoss = Literal["fail-closed", "degrade"]
MODES: tuple[Mode, ...] = ("sync", "async")
ON_STANDBY_LOSS: tuple[OnStandbyLoss, ...] = ("fail-closed", "degrade")


@dataclass(frozen=True)
class LinkSecurity:
    """How a site proves itself on the replication link, and checks its peer.

    Mutual TLS: `cert`/`key` are this site's (used as server and as client), `ca` signs
    every site's certificate. `token_file` holds the deployment's shared token, sent as
    ``authorization: Bearer ...`` on every call and checked by the receiver.
    """

    ca: Path
    cert: Path
    key: Path
    token_file: Path

    def token(self) -> str:
        return self.token_file.read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class ReplicationConfig:
    """This site's part in a job that runs on two sites, one active at a time.

    `site` is this site, `peer` the other one. This site's receiver listens on `listen`;
    when this site is active it ships every checkpoint to `peer_address`. `mode`:
    ``sync`` commits a checkpoint only once the standby holds it (RPO 0), ``async``
    commits at once and ships behind. `on_standby_loss` (sync only): when the standby
    has not acknowledged for `standby_timeout_s`, ``fail-closed`` stops committing until
    it is back, ``degrade`` goes on committing, recording that RPO 0 no longer holds
    until the standby caught up. `max_backlog`: checkpoints kept for a standby that
    lags before it needs a whole copy instead. `primary`: the site that starts the job;
    until some site has led it, the other one only stands by (a fresh start never lands
    on the disaster-recovery site because it happened to come up first). None: whichever
    site campaigns first.
    """

    site: str
    peer: str
    listen: str
    peer_address: str
    security: LinkSecurity
    mode: Mode = "sync"
    on_standby_loss: OnStandbyLoss = "fail-closed"
    standby_timeout_s: float = 2.0
    max_backlog: int = 60
    switchover_timeout_s: float = 30.0
    lag_budget_checkpoints: int = 2
    primary: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"replication mode must be one of {MODES}, got {self.mode!r}")
        if self.on_standby_loss not in ON_STANDBY_LOSS:
            raise ValueError(f"on_standby_loss must be one of {ON_STANDBY_LOSS}, "
                             f"got {self.on_standby_loss!r}")
        if self.site == self.peer:
            raise ValueError(f"site and peer are both {self.site!r}")
        if self.primary not in (None, self.site, self.peer):
            raise ValueError(f"primary must be {self.site!r} or {self.peer!r}, "
                             f"got {self.primary!r}")
        for name in ("standby_timeout_s", "switchover_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if self.max_backlog < 1 or self.lag_budget_checkpoints < 0:
            raise ValueError("max_backlog must be >= 1 and lag_budget_checkpoints >= 0")
