"""What etcd records about a replicated job: which site is active, the state of its
replication, every takeover, and switchover requests.

Layout under ``/resilience/jobs/<job>/``::

    active_site               {"site", "epoch", "since", "kind"}: fenced by the leader
    replication/state         the active site's gate and lag (published by it, fenced)
    replication/takeovers/<epoch:020d>   one record per change of active site
    handover                  a switchover request and its progress

Writers hold the job's leadership (`Leadership.fenced_txn`), except a switchover
request, which an operator makes with a compare-and-swap: it is accepted only while the
site it names as the current primary is the active one and no other request is open,
so two operators cannot fail over twice.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from resilience._errors import SwitchoverRefused
from resilience._runtime._registry import job_prefix
from resilience.coordination._client import Compare, EtcdClient, Put
from resilience.coordination._election import Leadership

__all__ = ["HANDOVER_OPEN", "Handover", "ReplicationRegistry"]

HANDOVER_OPEN = ("requested", "draining", "ready")
"""States of a switchover that is still in progress."""


@dataclass(frozen=True)
class Handover:
    """A switchover request: move the job from site `source` to site `target`."""

    id: str
    source: str
    target: str
    state: str  # requested | draining | ready | done | refused | rolled_back
    requested_at: float
    timeout_s: float
    checkpoint_id: int = 0  # the last checkpoint of the old primary (ready and after)
    epoch: int = 0  # the epoch that handed over
    reason: str = ""
    updated_at: float = 0.0

    @property
    def open(self) -> bool:
        return self.state in HANDOVER_OPEN

    def expired(self, now: float | None = None) -> bool:
        return (now or time.time()) > self.requested_at + self.timeout_s

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Handover:
        doc = json.loads(data)
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})

    def moved(self, state: str, **changes: Any) -> Handover:
        doc = {**self.__dict__, **changes, "state": state, "updated_at": time.time()}
        return Handover(**doc)


class ReplicationRegistry:
    """Reads and writes the replication records of one job."""

    def __init__(self, client: EtcdClient, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.prefix = job_prefix(job_id)
        self._active = f"{self.prefix}active_site"
        self._state = f"{self.prefix}replication/state"
        self._takeovers = f"{self.prefix}replication/takeovers/"
        self._handover = f"{self.prefix}handover"

    def _read(self, key: str) -> dict[str, Any] | None:
        kv = self.client.get(key)
        if kv is None:
            return None
        try:
            doc = json.loads(kv.value)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    # -- the active site ----------------------------------------------------------------

    def active_site(self) -> dict[str, Any] | None:
        return self._read(self._active)

    def set_active(self, leadership: Leadership, site: str, kind: str) -> None:
        leadership.fenced_put(self._active, json.dumps({
            "site": site, "epoch": leadership.epoch, "since": time.time(), "kind": kind,
        }).encode())

    def publish_state(self, leadership: Leadership, doc: dict[str, Any]) -> None:
        leadership.fenced_put(self._state, json.dumps({**doc, "epoch": leadership.epoch,
                                                       "at": time.time()}).encode())

    def state(self) -> dict[str, Any] | None:
        return self._read(self._state)

    def record_takeover(self, leadership: Leadership, doc: dict[str, Any]) -> None:
        """Write (or rewrite) this reign's takeover record; `at` is the doc's own when it
        has one (the moment of the takeover), else now."""
        leadership.fenced_put(f"{self._takeovers}{leadership.epoch:020d}", json.dumps(
            {"at": time.time(), **doc, "epoch": leadership.epoch}).encode())

    def takeovers(self) -> list[dict[str, Any]]:
        out = []
        for kv in self.client.get_prefix(self._takeovers):
            try:
                out.append(json.loads(kv.value))
            except ValueError:
                continue
        return sorted(out, key=lambda d: int(d.get("epoch", 0)))

    # -- switchover -----------------------------------------------------------------------

    def handover(self) -> Handover | None:
        kv = self.client.get(self._handover)
        if kv is None:
            return None
        try:
            return Handover.from_bytes(kv.value)
        except (ValueError, TypeError, KeyError):
            return None

    def request_handover(self, *, target: str, expected_primary: str | None,
                         timeout_s: float) -> Handover:
        """Ask the active site to hand the job over to `target`.

        Refused (`SwitchoverRefused`, nothing written) when the active site is not
        `expected_primary` (when given), is `target` already, or another switchover is
        in progress; the check and the write are one etcd transaction.
        """
        active_kv = self.client.get(self._active)
        if active_kv is None:
            raise SwitchoverRefused(f"job {self.job_id}: no site is active")
        active = json.loads(active_kv.value)
        site = str(active.get("site"))
        if expected_primary is not None and site != expected_primary:
            raise SwitchoverRefused(f"job {self.job_id}: the active site is {site}, not "
                                    f"{expected_primary} as expected; nothing was moved")
        if site == target:
            raise SwitchoverRefused(f"job {self.job_id}: site {target} is already active")
        current_kv = self.client.get(self._handover)
        if current_kv is not None:
            current = Handover.from_bytes(current_kv.value)
            if current.open and not current.expired():
                raise SwitchoverRefused(f"job {self.job_id}: a switchover to {current.target} "
                                        f"is already in progress ({current.state})")
        request = Handover(id=uuid.uuid4().hex[:12], source=site, target=target,
                           state="requested", requested_at=time.time(), timeout_s=timeout_s,
                           updated_at=time.time())
        compares = [Compare.mod_revision(self._active, active_kv.mod_revision),
                    Compare.mod_revision(self._handover,
                                         current_kv.mod_revision if current_kv else 0)]
        result = self.client.transaction(compares, [Put(self._handover, request.to_bytes())])
        if not result.succeeded:
            raise SwitchoverRefused(f"job {self.job_id}: the active site or another switchover "
                                    "changed meanwhile; nothing was moved (look, then retry)")
        return request

    def update_handover(self, leadership: Leadership, handover: Handover) -> None:
        leadership.fenced_put(self._handover, handover.to_bytes())
