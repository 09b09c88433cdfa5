"""The job's record of complete checkpoints, kept in etcd.

A checkpoint is *complete* when its record is in etcd: the coordinator writes
it in a transaction fenced by its leader epoch, after the manifest is durable in
the store. A deposed coordinator's commit is refused (`FencedOut`), so two
coordinators can never both complete checkpoints of one job.

Layout under ``/resilience/jobs/<job>/``::

    checkpoints/<id:020d>   JSON record of one complete checkpoint
    savepoints/<name>       JSON record of one savepoint
    requests/savepoint/<n>  operator requests (watched by the coordinator)
    state                   running | finished | failed, with details
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from resilience.coordination._client import EtcdClient
from resilience.coordination._election import Leadership

__all__ = ["CheckpointRecord", "CheckpointRegistry", "job_prefix"]


def job_prefix(job_id: str) -> str:
    return f"/resilience/jobs/{job_id}/"


@dataclass(frozen=True)
class CheckpointRecord:
    """What etcd knows of one complete checkpoint."""

    checkpoint_id: int
    fencing_epoch: int
    watermark: int
    created_at: float
    duration_s: float
    total_bytes: int
    manifest_checksum: str
    unaligned: bool = False  # some task stored in-flight records with it

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> CheckpointRecord:
        doc = json.loads(data)
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


class CheckpointRegistry:
    """Reads and (fenced) writes the job's checkpoint records."""

    def __init__(self, client: EtcdClient, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.prefix = job_prefix(job_id)

    def _key(self, checkpoint_id: int) -> str:
        return f"{self.prefix}checkpoints/{checkpoint_id:020d}"

    def commit(self, leadership: Leadership, record: CheckpointRecord,
               also: dict[str, bytes] | None = None) -> None:
        """Make the checkpoint complete, with the puts `also` in the same transaction (the
        model versions it publishes). Raises `FencedOut` for a deposed leader."""
        leadership.fenced_txn(puts={**(also or {}),
                                    self._key(record.checkpoint_id): record.to_bytes()})

    def completed(self) -> list[CheckpointRecord]:
        """Complete checkpoints, oldest first."""
        out = []
        for kv in self.client.get_prefix(f"{self.prefix}checkpoints/"):
            try:
                out.append(CheckpointRecord.from_bytes(kv.value))
            except (ValueError, KeyError, TypeError):
                continue  # an unreadable record cannot be restored from; skip it
        return sorted(out, key=lambda r: r.checkpoint_id)

    def latest(self) -> CheckpointRecord | None:
        done = self.completed()
        return done[-1] if done else None

    def forget(self, leadership: Leadership, checkpoint_ids: Sequence[int]) -> None:
        """Drop records of checkpoints that retention deleted."""
        if checkpoint_ids:
            leadership.fenced_txn(deletes=[self._key(c) for c in checkpoint_ids])

    def set_state(self, leadership: Leadership | None, state: str, **detail: Any) -> None:
        value = json.dumps({"state": state, "at": time.time(), **detail},
                           sort_keys=True).encode()
        if leadership is None:
            self.client.put(f"{self.prefix}state", value)
        else:
            leadership.fenced_txn(puts={f"{self.prefix}state": value})

    def state(self) -> dict[str, Any] | None:
        kv = self.client.get(f"{self.prefix}state")
        return None if kv is None else dict(json.loads(kv.value))
