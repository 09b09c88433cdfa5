"""Poison pills: records that fail an operator, and failures that come back on every replay.

A record that makes an operator raise fails its task; the job restores from the
last checkpoint and replays. If the record is the cause, the replay fails again,
forever: one line of input would stop the job for good. So:

1. After an operator error, the coordinator restores and tells the failed task to
   *isolate*: give its operator one record at a time, until a checkpoint taken after
   that restore completes (a count of records would not do: a task with several
   inputs receives them in another interleaving after a restore).
2. A record that fails alone is *poison*. The coordinator quarantines it: one entry
   in ``WORKDIR/quarantine.jsonl`` (stage, record, exception), durable before
   anything else happens, and restores again; every task of that stage skips a
   quarantined record from then on, isolating or not, so no replay meets it again.
3. A `QuarantineBudget` turns too many poison records into a clear job failure.

A record is known by a digest of its content (MessagePack, or its repr for other
objects): identical records of one stage are quarantined together.

Failures that no record explains (a snapshot that cannot encode its state, a
source that cannot read) are caught by `repeated_failure`: the same failure from the
same checkpoint with nothing committed in between ends the job at once, naming it,
instead of replaying until the restart budget is spent.

Decisions here are pure functions; only the coordinator acts on them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

__all__ = [
    "QUARANTINE_FILE",
    "Quarantine",
    "QuarantineBudget",
    "budget_exceeded",
    "record_digest",
    "repeated_failure",
]

QUARANTINE_FILE = "quarantine.jsonl"


@dataclass(frozen=True)
class QuarantineBudget:
    """How many poison records a job may quarantine before it fails instead.

    `max_records`: a count over the job's life (None: no limit). `max_fraction`: a
    share of the records the source has read, judged once `min_records` were read
    (None: no limit). The job fails as soon as either is exceeded.
    """

    max_records: int | None = 100
    max_fraction: float | None = 0.01
    min_records: int = 10_000

    def __post_init__(self) -> None:
        if self.max_records is not None and self.max_records < 0:
            raise ValueError(f"max_records must be >= 0 or None, got {self.max_records}")
        if self.max_fraction is not None and not 0 <= self.max_fraction <= 1:
            raise ValueError(f"max_fraction must be in [0, 1] or None, got {self.max_fraction}")
        if self.min_records < 0:
            raise ValueError(f"min_records must be >= 0, got {self.min_records}")


def budget_exceeded(quarantined: int, records_read: int, budget: QuarantineBudget) -> str | None:
    """Why `quarantined` poison records out of `records_read` are too many, or None."""
    if budget.max_records is not None and quarantined > budget.max_records:
        return (f"{quarantined} records quarantined, more than the budget of "
                f"{budget.max_records}")
    if (budget.max_fraction is not None and records_read >= budget.min_records
            and quarantined > budget.max_fraction * records_read):
        return (f"{quarantined} of {records_read:,} records quarantined, more than "
                f"{budget.max_fraction:.2%}")
    return None


def record_digest(record: Any) -> str:
    """A stable name for a record's content, the same in every process and run."""
    try:
        data = msgpack.packb(record, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        data = b"repr:" + repr(record).encode("utf-8", "backslashreplace")
    return hashlib.sha256(data).hexdigest()[:32]


def describe_record(record: Any, limit: int = 2000) -> str:
    """The record as text for people (repr, cut at `limit`, always encodable)."""
    text = repr(record).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Quarantine:
    """The job's quarantined records, kept in ``WORKDIR/quarantine.jsonl``.

    An entry is appended and fsynced before the job acts on it, so a crash cannot
    lose one, and a record is never entered twice (entries are keyed by stage and
    digest). Only the coordinator writes it.
    """

    def __init__(self, workdir: Path) -> None:
        self.path = Path(workdir) / QUARANTINE_FILE
        self._by_stage: dict[str, set[str]] = {}
        self.count = 0
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
                stage, digest = str(entry["stage"]), str(entry["digest"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line of a crash: its record is found again
            if digest not in self._by_stage.setdefault(stage, set()):
                self._by_stage[stage].add(digest)
                self.count += 1

    def of_stage(self, stage: str) -> frozenset[str]:
        return frozenset(self._by_stage.get(stage, ()))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        stage, digest = key
        return digest in self._by_stage.get(stage, ())

    def add(self, entry: Mapping[str, Any]) -> bool:
        """Record a poison record (`stage`, `digest`, ...); False if it was already in."""
        stage, digest = str(entry["stage"]), str(entry["digest"])
        if (stage, digest) in self:
            return False
        line = json.dumps({**entry, "at": entry.get("at", time.time())}).encode() + b"\n"
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._by_stage.setdefault(stage, set()).add(digest)
        self.count += 1
        return True


def repeated_failure(restores: Sequence[Mapping[str, Any]], times: int = 3) -> str | None:
    """Why replaying is pointless, or None.

    `restores` are the job's restores after its start, oldest first, the one about
    to happen last: each with its `reason`, `kind` and `first_commit_at` (None while
    nothing was committed after it). When the last `times` were all caused by the
    job's own code raising ("error"), with the same reason, and none but the newest
    was followed by a commit, every replay from the same checkpoint ends the same
    way: the failure follows the input, not the infrastructure.
    """
    if times < 2 or len(restores) < times:
        return None
    last = restores[-times:]
    if any(r.get("kind") != "error" for r in last):
        return None
    if len({r.get("reason") for r in last}) != 1:
        return None
    if any(r.get("first_commit_at") is not None for r in last[:-1]):
        return None
    return f"the same failure {times} times in a row, nothing committed in between: " + str(
        last[-1].get("reason"))
