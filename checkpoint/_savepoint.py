"""Savepoints (self-contained copies of a checkpoint) and checkpoint verification."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from checkpoint._errors import CheckpointCorrupt, CheckpointError, CheckpointNotFound
from checkpoint._manifest import ChunkRef, Manifest
from checkpoint._store import CheckpointStore

__all__ = [
    "TaskVerification",
    "VerifyReport",
    "copy_checkpoint",
    "verify_checkpoint",
]


def copy_checkpoint(
    src: CheckpointStore, checkpoint_id: int, dst: CheckpointStore, *, name: str
) -> Manifest:
    """Copy a checkpoint into `dst` as a savepoint named `name`; return its manifest.

    Every chunk is read from `src` (verified), written to `dst`, and read back
    from `dst` (verified again) before the manifest is written, last, so the
    savepoint is complete exactly when its manifest exists, and it needs nothing
    from `src` afterwards. The savepoint manifest is the source manifest with
    kind="savepoint", `name`, and `dst.job_id` as its job (a savepoint may seed
    a different job); it keeps the checkpoint id and creation time, so copying
    the same checkpoint under the same name again is idempotent.

    Raises CheckpointNotFound / CheckpointCorrupt if the source checkpoint or
    one of its chunks is absent or damaged (no manifest is written in `dst`;
    chunks already copied are unreferenced garbage there), StoreWriteError if
    `dst` refuses a write, including when `dst` already holds a different
    manifest with this checkpoint id.
    """
    manifest = src.get_manifest(checkpoint_id)
    for ref in sorted(manifest.chunk_refs()):
        data = src.get_chunk(ref)
        written = dst.put_chunk(data)
        if written != ref:
            raise CheckpointCorrupt(
                f"chunk {ref.digest}",
                f"{dst.describe()} stored it as {written.digest} ({written.size} bytes)",
            )
        dst.get_chunk(ref)  # read back: the savepoint is only as good as dst's copy
    savepoint = dataclasses.replace(manifest, kind="savepoint", name=name, job_id=dst.job_id)
    dst.put_manifest(savepoint)
    return savepoint


@dataclass(frozen=True)
class TaskVerification:
    """The verification result of one task's chunks; `problems` is empty when all is well."""

    task_id: str
    chunks_checked: int
    bytes_checked: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether every chunk of the task is present and intact."""
        return not self.problems


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of `verify_checkpoint`.

    `manifest` is None exactly when the manifest itself is unreadable, and then
    `manifest_problem` says why and `tasks` is empty.
    """

    checkpoint_id: int
    store: str
    manifest: Manifest | None
    manifest_problem: str | None
    tasks: tuple[TaskVerification, ...]

    @property
    def ok(self) -> bool:
        """Whether the manifest and every chunk of every task verified."""
        return self.manifest_problem is None and all(task.ok for task in self.tasks)

    def summary(self) -> str:
        """A few human-readable lines, one per task, for the CLI and logs."""
        head = f"checkpoint {self.checkpoint_id} in {self.store}"
        if self.manifest_problem is not None:
            return f"{head}: manifest unreadable: {self.manifest_problem}"
        lines = [f"{head}: {'OK' if self.ok else 'DAMAGED'}"]
        for task in self.tasks:
            state = "ok" if task.ok else f"{len(task.problems)} problem(s)"
            lines.append(
                f"  {task.task_id}: {state} "
                f"({task.chunks_checked} chunks, {task.bytes_checked} bytes)"
            )
            lines.extend(f"    - {problem}" for problem in task.problems)
        return "\n".join(lines)


def verify_checkpoint(store: CheckpointStore, checkpoint_id: int) -> VerifyReport:
    """Re-read every chunk of a checkpoint, checking sizes and sha256; report per task.

    Never raises for damage: a corrupt manifest, a missing, truncated or
    altered chunk, or an unreadable file is reported. Raises CheckpointNotFound
    if there is no manifest with that id. A chunk shared by several tasks is
    read once and its verdict reported for each of them.
    """
    try:
        manifest = store.get_manifest(checkpoint_id)
    except CheckpointNotFound:
        raise
    except CheckpointError as exc:
        return VerifyReport(
            checkpoint_id=checkpoint_id,
            store=store.describe(),
            manifest=None,
            manifest_problem=str(exc),
            tasks=(),
        )
    verdicts: dict[ChunkRef, str | None] = {}
    tasks = []
    for task_id in sorted(manifest.tasks):
        task = manifest.tasks[task_id]
        problems: list[str] = []
        checked_bytes = 0
        for ref in task.chunks:
            if ref not in verdicts:
                verdicts[ref] = _chunk_problem(store, ref)
            problem = verdicts[ref]
            if problem is None:
                checked_bytes += ref.size
            elif problem not in problems:
                problems.append(problem)
        tasks.append(
            TaskVerification(
                task_id=task_id,
                chunks_checked=len(task.chunks),
                bytes_checked=checked_bytes,
                problems=tuple(problems),
            )
        )
    return VerifyReport(
        checkpoint_id=checkpoint_id,
        store=store.describe(),
        manifest=manifest,
        manifest_problem=None,
        tasks=tuple(tasks),
    )


def _chunk_problem(store: CheckpointStore, ref: ChunkRef) -> str | None:
    try:
        store.get_chunk(ref)
    except CheckpointNotFound:
        return f"chunk {ref.digest} ({ref.size} bytes) is missing"
    except CheckpointError as exc:  # CheckpointCorrupt, or an I/O error while reading
        return str(exc)
    return None
