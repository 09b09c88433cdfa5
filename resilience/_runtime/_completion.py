"""What completes a checkpoint, and what happens to it afterwards: the coordinator's
bookkeeping with the store and etcd, apart from the actor that decides when.

* `commit_checkpoint`: every task acknowledged checkpoint N; write its manifest to the
  store, then its record to etcd in a transaction fenced by the leader's epoch. Only then
  is N complete (a deposed leader gets `FencedOut`).
* `retain`: keep the newest complete checkpoints, delete what no kept manifest refers to.
* `write_savepoint` / `import_initial_savepoint`: copy a complete checkpoint out as a named
  savepoint; at a run's start, make a savepoint the newest complete checkpoint (once per run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import traceback
from collections.abc import Collection
from pathlib import Path

from checkpoint import (
    CheckpointCompleted,
    CheckpointError,
    CheckpointStore,
    FencedOut,
    Manifest,
    apply_retention,
    chunk_ref_of,
    copy_checkpoint,
    plan_retention,
)
from resilience._errors import EtcdError
from resilience._runtime._registry import CheckpointRecord, CheckpointRegistry, job_prefix
from resilience._runtime._savepoints import import_savepoint, open_savepoint, savepoint_store
from resilience._runtime._spec import PipelineSpec
from resilience.coordination._client import EtcdClient
from resilience.coordination._election import Leadership

__all__ = ["commit_checkpoint", "commit_record", "import_initial_savepoint", "retain",
           "write_manifest", "write_savepoint"]

log = logging.getLogger(__name__)


def _short(error: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(error), error)).strip()
    return text.splitlines()[-1][:500] if text else repr(error)


def commit_checkpoint(done: CheckpointCompleted, *, spec: PipelineSpec, store: CheckpointStore,
                      registry: CheckpointRegistry, leadership: Leadership,
                      source_id: str) -> tuple[Manifest, int]:
    """Make checkpoint `done` complete; returns its manifest and the source watermark.

    Raises `FencedOut` (deposed), or `CheckpointError`/`EtcdError`/`OSError` (the
    checkpoint is then aborted and the job goes on with the previous one).
    """
    manifest, watermark = write_manifest(done, spec=spec, store=store, leadership=leadership,
                                         source_id=source_id)
    commit_record(manifest, watermark, done, registry=registry, leadership=leadership)
    return manifest, watermark


def write_manifest(done: CheckpointCompleted, *, spec: PipelineSpec, store: CheckpointStore,
                   leadership: Leadership, source_id: str) -> tuple[Manifest, int]:
    """The first half of completing `done`: its manifest, durable in the store. The
    checkpoint is not complete until `commit_record` (a standby may hold it first)."""
    source_meta = done.acks[source_id].metadata.get("op", {})
    watermark = int(source_meta.get("watermark", 0))
    manifest = Manifest(
        job_id=spec.job_id,
        checkpoint_id=done.checkpoint_id,
        fencing_epoch=leadership.epoch,
        code_version=spec.code_version,
        schema_version=spec.schema_version,
        created_at=time.time(),
        duration_s=done.duration_s,
        tasks=dict(done.acks),
    )
    store.put_manifest(manifest)
    return manifest, watermark


def commit_record(manifest: Manifest, watermark: int, done: CheckpointCompleted, *,
                  registry: CheckpointRegistry, leadership: Leadership,
                  also: dict[str, bytes] | None = None) -> None:
    """The second half: the checkpoint's record in etcd, fenced by the leader's epoch,
    with the puts `also` (model versions) in the same transaction. From here on the
    checkpoint is complete."""
    record = CheckpointRecord(
        checkpoint_id=manifest.checkpoint_id,
        fencing_epoch=leadership.epoch,
        watermark=watermark,
        created_at=manifest.created_at,
        duration_s=done.duration_s,
        total_bytes=manifest.total_bytes(),
        manifest_checksum=chunk_ref_of(manifest.to_bytes()).digest,
        unaligned=any(t.metadata.get("channel_state") for t in manifest.tasks.values()),
    )
    registry.commit(leadership, record, also)


def retain(*, store: CheckpointStore, registry: CheckpointRegistry, leadership: Leadership,
           keep: int, last_completed: int, pinned: Collection[int] = ()) -> set[int]:
    """Keep the newest `keep` complete checkpoints and the `pinned` ones (a lagging
    standby's); return the ids deleted. Failures are logged, never raised."""
    try:
        ids = store.list_checkpoints()
        if len(ids) <= keep:
            return set()
        committed = {r.checkpoint_id for r in registry.completed()}
        manifests = []
        for cid in ids:
            if cid in committed:
                with contextlib.suppress(CheckpointError):
                    manifests.append(store.get_manifest(cid))
        plan = plan_retention(manifests, keep, pinned=pinned)
        stale_uncommitted = [c for c in ids if c not in committed and c < last_completed
                             and c not in pinned]
        registry.forget(leadership, list(plan.delete_manifests))
        apply_retention(store, plan)
        for cid in stale_uncommitted:
            store.delete_manifest(cid)
        return {*plan.delete_manifests, *stale_uncommitted}
    except (CheckpointError, EtcdError, OSError, FencedOut) as e:
        log.warning("retention skipped: %s", e)
        return set()


def write_savepoint(*, store: CheckpointStore, client: EtcdClient, job_id: str,
                    savepoint_dir: Path, name: str, checkpoint_id: int) -> None:
    """Copy a complete checkpoint out as savepoint `name` and answer the request in etcd."""
    prefix = job_prefix(job_id)
    try:
        target = savepoint_store(savepoint_dir, name)
        manifest = copy_checkpoint(store, checkpoint_id, target, name=name)
        answer = {"name": name, "checkpoint_id": checkpoint_id,
                  "path": target.describe(), "bytes": manifest.total_bytes(),
                  "schema_version": manifest.schema_version, "ok": True}
    except (CheckpointError, OSError) as e:
        answer = {"name": name, "checkpoint_id": checkpoint_id, "ok": False,
                  "error": _short(e)}
    with contextlib.suppress(EtcdError):
        client.put(f"{prefix}savepoints/{name}", json.dumps(answer).encode())
        client.delete(f"{prefix}requests/savepoint/{name}")


def import_initial_savepoint(records: list[CheckpointRecord], *, spec: PipelineSpec,
                             store: CheckpointStore, client: EtcdClient,
                             registry: CheckpointRegistry, leadership: Leadership,
                             source_id: str) -> list[CheckpointRecord]:
    """At a run's start from a savepoint: make it the newest complete checkpoint (once)."""
    location = spec.initial_savepoint
    if location is None:
        return records
    marker = f"{job_prefix(spec.job_id)}runs/{spec.run_id}/savepoint"
    if client.get(marker) is not None:
        return records  # imported by an earlier incarnation of this run
    source = savepoint_store(location)
    manifest = open_savepoint(source, schema_version=spec.schema_version)
    highest = max([0, *store.list_checkpoints(), *[r.checkpoint_id for r in records]])
    imported = import_savepoint(source, manifest, store, checkpoint_id=highest + 1,
                                fencing_epoch=leadership.epoch)
    source_meta = imported.tasks[source_id].metadata.get("op", {})
    record = CheckpointRecord(
        checkpoint_id=imported.checkpoint_id,
        fencing_epoch=leadership.epoch,
        watermark=int(source_meta.get("watermark", 0)),
        created_at=time.time(),
        duration_s=0.0,
        total_bytes=imported.total_bytes(),
        manifest_checksum=chunk_ref_of(imported.to_bytes()).digest,
    )
    leadership.fenced_txn(puts={
        f"{registry.prefix}checkpoints/{record.checkpoint_id:020d}": record.to_bytes(),
        marker: json.dumps({"savepoint": str(location)}).encode(),
    })
    log.warning("imported savepoint %s as checkpoint %s", location, record.checkpoint_id)
    return [*records, record]
