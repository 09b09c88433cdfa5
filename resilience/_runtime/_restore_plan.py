"""Which checkpoint a global restore uses, and which snapshots each task gets: pure.

The coordinator tries the complete checkpoints newest first, then an empty start. A
checkpoint whose manifest or chunks do not verify is skipped (a *fallback*), with one
exception: falling back past a checkpoint that stored in-flight records (unaligned) is
refused, because the sink may have committed part of that checkpoint's in-flight output,
which the replay floor cannot tell apart from the rest: the job stops rather than lose or
double money.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from checkpoint import Manifest, TaskSnapshot
from resilience._runtime._registry import CheckpointRecord

__all__ = ["RestorePlan", "snapshots_for"]


class RestorePlan:
    """The checkpoints to try, newest first; what was skipped and whether to go on."""

    def __init__(self, records: Sequence[CheckpointRecord]) -> None:
        ordered = sorted(records, key=lambda r: r.checkpoint_id, reverse=True)
        self.candidates: list[CheckpointRecord | None] = [*ordered, None]
        self.fallbacks: list[str] = []
        self._skipped_unaligned: list[int] = []

    def __iter__(self) -> Iterator[CheckpointRecord | None]:
        return iter(self.candidates)

    def skip(self, checkpoint_id: int, why: str, *, unaligned: bool) -> None:
        """Checkpoint `checkpoint_id` could not be restored (corrupt): fall back past it."""
        self.fallbacks.append(f"checkpoint {checkpoint_id}: {why}")
        if unaligned:
            self._skipped_unaligned.append(checkpoint_id)

    def blocked(self, job_id: str) -> str | None:
        """Why the next (older) candidate must not be used, or None."""
        if not self._skipped_unaligned:
            return None
        return (f"job {job_id}: cannot fall back past checkpoint {self._skipped_unaligned[0]}, "
                f"which stored in-flight records (unaligned); skipped: "
                f"{'; '.join(self.fallbacks)}. Repair the store or restore a savepoint.")


def snapshots_for(manifest: Manifest | None, task_id: str, stage: str,
                  parallelism: int) -> list[TaskSnapshot]:
    """The snapshots task `task_id` restores from.

    Its own when the checkpoint has it; otherwise (the stage's parallelism changed
    since) every snapshot of its stage, to re-partition by key group; none for an
    empty start.
    """
    if manifest is None:
        return []
    own = manifest.tasks.get(task_id)
    same_stage = [s for s in manifest.tasks.values() if s.kind == stage]
    if own is not None and len(same_stage) == parallelism:
        return [own]
    return sorted(same_stage, key=lambda s: s.task_id)
