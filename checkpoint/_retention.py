"""Retention and garbage collection: which checkpoints to keep, which chunks may go.

`plan_retention` is a pure decision over manifests (unit-testable without a
store); `apply_retention` and `collect_garbage` carry it out. The invariant all
three protect: no manifest present in a store ever names a chunk that is gone.
Chunks are compared by digest, so a damaged chunk file listed with a wrong size
is still recognised as referenced (and kept, as evidence).

Concurrency contract: run retention and garbage collection from one place (the
checkpoint coordinator), not concurrently with each other. They may run while
a checkpoint is being written: chunks it writes or re-puts are young, and the
grace period (`grace_s`) keeps young chunks; `apply_retention` also re-reads the
manifests present just before deleting chunks, so a checkpoint committed after
the plan was made keeps its chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from checkpoint._errors import CheckpointNotFound
from checkpoint._manifest import ChunkRef, Manifest
from checkpoint._store import CheckpointStore, SupportsGarbageCollection

__all__ = [
    "GarbageReport",
    "RetentionPlan",
    "apply_retention",
    "collect_garbage",
    "plan_retention",
]


@dataclass(frozen=True)
class RetentionPlan:
    """What retention will delete: manifests (ascending ids) and the chunks only they used.

    `retained` lists the ids kept, for logs and the CLI.
    """

    delete_manifests: tuple[int, ...]
    delete_chunks: frozenset[ChunkRef]
    retained: tuple[int, ...] = ()


@dataclass(frozen=True)
class GarbageReport:
    """What `collect_garbage` did.

    `deleted`: unreferenced chunks removed. `kept_young`: unreferenced chunks
    kept because they are younger than the grace period (a checkpoint in
    progress may be about to reference them). `incomplete_writes_removed`: temp
    files of writers that died midway.
    """

    deleted: tuple[ChunkRef, ...]
    kept_young: tuple[ChunkRef, ...]
    incomplete_writes_removed: int


def plan_retention(
    manifests: Sequence[Manifest], keep: int, pinned: Collection[int] = ()
) -> RetentionPlan:
    """Decide which checkpoints to delete so that the last `keep` ones remain.

    Kept: the `keep` highest checkpoint ids of kind "checkpoint", every id in
    `pinned`, and every savepoint (savepoints belong to their user and never
    count toward `keep`). A chunk is deleted only if it is referenced by a
    deleted manifest and by no kept one. Chunks referenced by no manifest at all
    (left by failed checkpoints) are not this function's business: see
    `collect_garbage`.

    Raises ValueError if `keep` < 1 (deleting the latest checkpoint is never
    retention), if two manifests share an id, or if they belong to different jobs.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the latest checkpoint is always kept), got {keep}")
    by_id: dict[int, Manifest] = {}
    for manifest in manifests:
        if manifest.checkpoint_id in by_id:
            raise ValueError(f"two manifests share checkpoint id {manifest.checkpoint_id}")
        by_id[manifest.checkpoint_id] = manifest
    job_ids = {manifest.job_id for manifest in manifests}
    if len(job_ids) > 1:
        raise ValueError(f"manifests of several jobs cannot share a plan: {sorted(job_ids)}")

    checkpoint_ids = sorted(i for i, m in by_id.items() if m.kind == "checkpoint")
    retained = set(checkpoint_ids[-keep:]) | (set(pinned) & by_id.keys())
    retained |= {i for i, m in by_id.items() if m.kind == "savepoint"}
    deleted = sorted(by_id.keys() - retained)

    kept_digests = {ref.digest for i in retained for ref in by_id[i].chunk_refs()}
    delete_chunks = frozenset(
        ref for i in deleted for ref in by_id[i].chunk_refs() if ref.digest not in kept_digests
    )
    return RetentionPlan(
        delete_manifests=tuple(deleted),
        delete_chunks=delete_chunks,
        retained=tuple(sorted(retained)),
    )


def apply_retention(
    store: CheckpointStore,
    plan: RetentionPlan,
    *,
    grace_s: float | None = None,
    now: Callable[[], float] = time.time,
) -> frozenset[ChunkRef]:
    """Carry out `plan`: delete its manifests, then its chunks; return the chunks deleted.

    Manifests go first (each deletion durable), so a crash midway leaves only
    unreferenced chunks, never a manifest with a missing chunk. Before deleting
    chunks, the manifests still present are re-read and every chunk they name is
    spared, even if the plan listed it (a checkpoint committed since planning
    may share it). With `grace_s`, chunks written or re-put less than `grace_s`
    seconds ago (by `now()`) are spared too; that needs a store implementing
    `SupportsGarbageCollection` (TypeError otherwise). Spared chunks become
    orphans for a later `collect_garbage`.

    Errors from the store propagate (StoreWriteError, CheckpointCorrupt if a
    remaining manifest is unreadable: then no chunk is deleted).
    """
    aged_store: SupportsGarbageCollection | None = None
    if grace_s is not None:
        _require_grace(grace_s)
        aged_store = _require_gc_support(store)
    for checkpoint_id in plan.delete_manifests:
        store.delete_manifest(checkpoint_id)
    still_referenced = _referenced_digests(store, store.list_checkpoints())
    candidates = sorted(ref for ref in plan.delete_chunks if ref.digest not in still_referenced)
    if aged_store is not None and grace_s is not None:
        cutoff = now() - grace_s
        candidates = [ref for ref in candidates if _is_old(aged_store, ref, cutoff)]
    for ref in candidates:
        store.delete_chunk(ref)
    return frozenset(candidates)


def collect_garbage(
    store: CheckpointStore,
    retained_ids: Collection[int],
    *,
    grace_s: float,
    now: Callable[[], float] = time.time,
) -> GarbageReport:
    """Delete chunks no manifest references and that are older than `grace_s` seconds.

    Orphans come from checkpoints that failed after writing chunks; the grace
    period spares the chunks of a checkpoint still in progress, so it must
    exceed the longest checkpoint duration plus any clock skew between this
    machine and the store's (ages come from the store's timestamps, `now()` from
    here). Needs a store implementing `SupportsGarbageCollection` (TypeError
    otherwise); `FileSystemStore` does, using file mtimes.

    Every manifest present protects its chunks, listed in `retained_ids` or
    not: collection only removes what nothing refers to. Each id in
    `retained_ids` must be present (CheckpointNotFound otherwise: the caller's
    view of the store is wrong), and every manifest present must be readable
    (CheckpointCorrupt otherwise: an unreadable manifest's chunks are unknown,
    so nothing is deleted until an operator repairs or removes it).
    """
    _require_grace(grace_s)
    aged_store = _require_gc_support(store)
    # Chunks are listed before manifests: a checkpoint committed in between then
    # protects its chunks; the other order would leave them to the grace period alone.
    chunks = store.list_chunks()
    present = store.list_checkpoints()
    missing = sorted(set(retained_ids) - set(present))
    if missing:
        raise CheckpointNotFound(
            f"retained checkpoints {missing} are not in {store.describe()}; "
            "refusing to collect garbage against a wrong picture of the store"
        )
    referenced = _referenced_digests(store, present)
    cutoff = now() - grace_s
    deleted: list[ChunkRef] = []
    kept_young: list[ChunkRef] = []
    for ref in chunks:
        if ref.digest in referenced:
            continue
        mtime = aged_store.chunk_mtime(ref)
        if mtime is None:
            continue  # gone since listed
        if mtime <= cutoff:
            store.delete_chunk(ref)
            deleted.append(ref)
        else:
            kept_young.append(ref)
    removed = aged_store.sweep_incomplete_writes(cutoff)
    return GarbageReport(
        deleted=tuple(deleted), kept_young=tuple(kept_young), incomplete_writes_removed=removed
    )


def _referenced_digests(store: CheckpointStore, checkpoint_ids: Sequence[int]) -> set[str]:
    digests: set[str] = set()
    for checkpoint_id in checkpoint_ids:
        try:
            manifest = store.get_manifest(checkpoint_id)
        except CheckpointNotFound:
            continue  # deleted since listed; it protects nothing any more
        digests.update(ref.digest for ref in manifest.chunk_refs())
    return digests


def _is_old(store: SupportsGarbageCollection, ref: ChunkRef, cutoff: float) -> bool:
    mtime = store.chunk_mtime(ref)
    # Absent (None) counts as young: nothing to delete, and no reason to report it deleted.
    return mtime is not None and mtime <= cutoff


def _require_grace(grace_s: float) -> None:
    if not grace_s >= 0:  # also refuses NaN
        raise ValueError(f"grace_s must be >= 0 seconds, got {grace_s!r}")


def _require_gc_support(store: CheckpointStore) -> SupportsGarbageCollection:
    if not isinstance(store, SupportsGarbageCollection):
        raise TypeError(
            f"{type(store).__name__} cannot tell chunk ages (it does not implement "
            "SupportsGarbageCollection), so unreferenced chunks cannot be told apart "
            "from those of a checkpoint in progress"
        )
    return store
