"""The payments job's state layout version, shared by its Python and Java stages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from resilience.pipeline import IncompatibleState, TaskSnapshot

__all__ = ["STATE_SCHEMA_VERSION", "check_schema", "single_snapshot"]

STATE_SCHEMA_VERSION = 2
"""Version of the job's state layout; bump it when a stage's snapshot format changes.

2: the source keeps every account's balance (rule 9 of the input contract)."""


def single_snapshot(snapshots: Sequence[TaskSnapshot]) -> TaskSnapshot | None:
    """The one snapshot of a stage of parallelism 1 (None: start empty)."""
    if len(snapshots) > 1:
        raise IncompatibleState("a stage of parallelism 1 restored from several tasks",
                                len(snapshots), 1)
    return snapshots[0] if snapshots else None


def check_schema(meta: Any, task_id: str) -> None:
    """Refuse state written with another layout, naming both versions."""
    found = int(meta.get("schema", STATE_SCHEMA_VERSION))
    if found != STATE_SCHEMA_VERSION:
        raise IncompatibleState(f"state of task {task_id}", found, STATE_SCHEMA_VERSION)
