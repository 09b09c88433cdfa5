"""Savepoints: named, self-contained checkpoints that outlive a job's deployment.

A savepoint lives in its own `FileSystemStore` (``<savepoint dir>/<name>/``)
holding every chunk it needs, so deleting the job's checkpoints, its workdir
or its etcd does not touch it. Starting a job from a savepoint *imports* it:
its chunks are copied into the job's store and it becomes the job's newest
complete checkpoint (under a fresh id, committed in etcd under the job's
fencing epoch), so everything after that is an ordinary restore.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from checkpoint import (
    CheckpointNotFound,
    CheckpointStore,
    FileSystemStore,
    IncompatibleState,
    Manifest,
)

__all__ = ["import_savepoint", "open_savepoint", "savepoint_store"]


def savepoint_store(location: Path, name: str | None = None) -> FileSystemStore:
    """The store of savepoint `name` under directory `location`.

    With `name` None, `location` is the savepoint's own directory
    (``.../savepoints/<name>``).
    """
    if name is None:
        return FileSystemStore(location.parent, job_id=location.name)
    return FileSystemStore(location, job_id=name)


def open_savepoint(store: CheckpointStore, *, schema_version: int) -> Manifest:
    """Read and check the savepoint's manifest.

    Raises `CheckpointNotFound` when the directory holds no savepoint,
    `CheckpointCorrupt` when its manifest does not verify, and
    `IncompatibleState` (naming both versions) when it was written with a state
    schema this code cannot read.
    """
    ids = store.list_checkpoints()
    if not ids:
        raise CheckpointNotFound(f"no savepoint in {store.describe()}")
    manifest = store.get_manifest(ids[-1])
    if manifest.schema_version != schema_version:
        raise IncompatibleState(
            f"savepoint {manifest.name or store.job_id} ({store.describe()})",
            manifest.schema_version,
            schema_version,
        )
    return manifest


def import_savepoint(
    savepoint: CheckpointStore, manifest: Manifest, job_store: CheckpointStore, *,
    checkpoint_id: int, fencing_epoch: int,
) -> Manifest:
    """Copy the savepoint into the job's store as checkpoint `checkpoint_id`.

    Chunks first (each verified on both sides), the manifest last: the import is
    complete exactly when the manifest exists. The caller then commits it.
    """
    for ref in sorted(manifest.chunk_refs()):
        if not job_store.has_chunk(ref):
            job_store.put_chunk(savepoint.get_chunk(ref))
        job_store.get_chunk(ref)
    imported = dataclasses.replace(
        manifest,
        job_id=job_store.job_id,
        checkpoint_id=checkpoint_id,
        fencing_epoch=fencing_epoch,
        kind="checkpoint",
        name=f"savepoint:{manifest.name or savepoint.job_id}",
    )
    job_store.put_manifest(imported)
    return imported
