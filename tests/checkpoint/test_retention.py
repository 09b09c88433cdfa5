"""Retention planning (pure), applying it to a store, and orphan garbage collection."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checkpoint import (
    CheckpointCorrupt,
    CheckpointNotFound,
    ChunkRef,
    FileSystemStore,
    Manifest,
    apply_retention,
    chunk_ref_of,
    collect_garbage,
    plan_retention,
)
from checkpoint.testing import make_manifest

JOB = "payments"
OLD = 1_000_000.0  # an mtime far in the past


def chunk(name: str) -> ChunkRef:
    return chunk_ref_of(name.encode())


def checkpoint_with(checkpoint_id: int, *names: str) -> Manifest:
    return make_manifest(JOB, checkpoint_id, {"map-0": [chunk(n) for n in names]})


def savepoint(manifest: Manifest) -> Manifest:
    return dataclasses.replace(manifest, kind="savepoint", name=f"sp-{manifest.checkpoint_id}")


_NAMES = [f"chunk-{i}" for i in range(40)] + ["base", "delta-1", "delta-2", "delta-3", "orphan"]
_DATA = {chunk(name): name.encode() for name in _NAMES}


def populate(store: FileSystemStore, manifests: Sequence[Manifest]) -> None:
    """Write each manifest's chunks, then the manifest, as a checkpoint writer would."""
    for manifest in manifests:
        for ref in manifest.chunk_refs():
            store.put_chunk(_DATA[ref])
        store.put_manifest(manifest)


def age_everything(store: FileSystemStore) -> None:
    for ref in store.list_chunks():
        os.utime(store.chunk_path(ref), (OLD, OLD))


# -- plan_retention ---------------------------------------------------------------------


def test_keeps_the_last_n_and_deletes_chunks_only_they_used() -> None:
    manifests = [
        checkpoint_with(1, "base", "delta-1"),
        checkpoint_with(2, "base", "delta-2"),
        checkpoint_with(3, "base", "delta-3"),
    ]
    plan = plan_retention(manifests, keep=2)
    assert plan.delete_manifests == (1,)
    assert plan.delete_chunks == frozenset({chunk("delta-1")})
    assert plan.retained == (2, 3)


def test_keep_counts_by_id_not_by_input_order() -> None:
    manifests = [checkpoint_with(i, f"chunk-{i}") for i in (5, 1, 9, 3)]
    assert plan_retention(manifests, keep=2).delete_manifests == (1, 3)


def test_pinned_and_savepoints_are_kept_and_protect_their_chunks() -> None:
    manifests = [
        checkpoint_with(1, "chunk-1", "base"),
        savepoint(checkpoint_with(2, "chunk-2")),
        checkpoint_with(3, "chunk-3"),
        checkpoint_with(4, "chunk-4"),
        checkpoint_with(5, "chunk-5", "base"),
    ]
    plan = plan_retention(manifests, keep=1, pinned={1, 77})
    assert plan.delete_manifests == (3, 4)
    assert plan.retained == (1, 2, 5)
    assert plan.delete_chunks == frozenset({chunk("chunk-3"), chunk("chunk-4")})


def test_savepoints_do_not_count_toward_keep() -> None:
    manifests = [checkpoint_with(1, "chunk-1"), savepoint(checkpoint_with(2, "chunk-2"))]
    assert plan_retention(manifests, keep=1).delete_manifests == ()


def test_shared_chunk_is_compared_by_digest() -> None:
    shared = chunk("base")
    liar = ChunkRef(shared.digest, shared.size + 1)  # same digest, other size: a damaged listing
    manifests = [
        make_manifest(JOB, 1, {"map-0": [liar]}),
        make_manifest(JOB, 2, {"map-0": [shared]}),
    ]
    assert plan_retention(manifests, keep=1).delete_chunks == frozenset()


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_must_be_positive(keep: int) -> None:
    with pytest.raises(ValueError, match="keep"):
        plan_retention([checkpoint_with(1)], keep=keep)


def test_duplicate_ids_and_mixed_jobs_are_refused() -> None:
    with pytest.raises(ValueError, match="share checkpoint id 1"):
        plan_retention([checkpoint_with(1), checkpoint_with(1, "chunk-1")], keep=1)
    other = make_manifest("refunds", 2, {})
    with pytest.raises(ValueError, match="several jobs"):
        plan_retention([checkpoint_with(1), other], keep=1)


def test_empty_input_plans_nothing() -> None:
    plan = plan_retention([], keep=3)
    assert plan.delete_manifests == ()
    assert plan.delete_chunks == frozenset()


# -- apply_retention ---------------------------------------------------------------------


class RecordingStore(FileSystemStore):
    """Records deletions; optionally crashes on the n-th chunk deletion."""

    def __init__(self, *args: Any, crash_on_chunk_delete: int | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[str] = []
        self._crash_on = crash_on_chunk_delete

    def delete_manifest(self, checkpoint_id: int) -> None:
        self.calls.append("manifest")
        super().delete_manifest(checkpoint_id)

    def delete_chunk(self, ref: ChunkRef) -> None:
        self.calls.append("chunk")
        if self._crash_on is not None and self.calls.count("chunk") == self._crash_on:
            raise KeyboardInterrupt("simulated crash")
        super().delete_chunk(ref)


def assert_no_dangling_manifest(store: FileSystemStore) -> None:
    for checkpoint_id in store.list_checkpoints():
        for ref in store.get_manifest(checkpoint_id).chunk_refs():
            assert store.get_chunk(ref) == _DATA[ref], f"{checkpoint_id} lost {ref.digest}"


def test_apply_deletes_manifests_before_chunks(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path, job_id=JOB)
    manifests = [checkpoint_with(i, f"chunk-{i}", "base") for i in range(1, 6)]
    populate(store, manifests)
    deleted = apply_retention(store, plan_retention(manifests, keep=2))
    assert store.calls == ["manifest"] * 3 + ["chunk"] * 3
    assert deleted == {chunk("chunk-1"), chunk("chunk-2"), chunk("chunk-3")}
    assert store.list_checkpoints() == [4, 5]
    assert sorted(store.list_chunks()) == sorted(
        [chunk("chunk-4"), chunk("chunk-5"), chunk("base")]
    )
    assert_no_dangling_manifest(store)


def test_crash_between_deletions_leaves_only_garbage(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path, job_id=JOB, crash_on_chunk_delete=2)
    manifests = [checkpoint_with(i, f"chunk-{i}") for i in range(1, 6)]
    populate(store, manifests)
    with pytest.raises(KeyboardInterrupt):
        apply_retention(store, plan_retention(manifests, keep=1))
    assert store.list_checkpoints() == [5]
    assert_no_dangling_manifest(store)


def test_a_checkpoint_committed_after_planning_keeps_its_chunks(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path, job_id=JOB)
    manifests = [checkpoint_with(1, "chunk-1"), checkpoint_with(2, "chunk-2")]
    populate(store, manifests)
    plan = plan_retention(manifests, keep=1)
    assert chunk("chunk-1") in plan.delete_chunks
    populate(store, [checkpoint_with(3, "chunk-1", "chunk-3")])  # re-uses chunk-1
    apply_retention(store, plan)
    assert store.list_checkpoints() == [2, 3]
    assert_no_dangling_manifest(store)


def test_grace_spares_young_chunks(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path, job_id=JOB)
    manifests = [checkpoint_with(1, "chunk-1", "chunk-2"), checkpoint_with(2, "chunk-3")]
    populate(store, manifests)
    age_everything(store)
    store.put_chunk(b"chunk-2")  # a checkpoint in progress re-puts it: it is young again
    deleted = apply_retention(store, plan_retention(manifests, keep=1), grace_s=60, now=time.time)
    assert deleted == {chunk("chunk-1")}
    assert store.has_chunk(chunk("chunk-2"))


def test_grace_needs_a_store_that_knows_ages(tmp_path: Path) -> None:
    class Ageless:
        def __init__(self, inner: FileSystemStore) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            if name in ("chunk_mtime", "sweep_incomplete_writes"):
                raise AttributeError(name)
            return getattr(self.inner, name)

    store: Any = Ageless(FileSystemStore(tmp_path, job_id=JOB))
    with pytest.raises(TypeError, match="SupportsGarbageCollection"):
        apply_retention(store, plan_retention([checkpoint_with(1)], keep=1), grace_s=10)
    with pytest.raises(TypeError, match="SupportsGarbageCollection"):
        collect_garbage(store, [], grace_s=10)


# -- collect_garbage ---------------------------------------------------------------------


def test_collects_old_orphans_only(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path, job_id=JOB)
    populate(store, [checkpoint_with(1, "chunk-1"), checkpoint_with(2, "chunk-2")])
    old_orphan = store.put_chunk(b"orphan")
    age_everything(store)
    young_orphan = store.put_chunk(b"written by a checkpoint in progress")
    now = time.time()
    report = collect_garbage(store, [2], grace_s=300, now=lambda: now)
    assert report.deleted == (old_orphan,)
    assert report.kept_young == (young_orphan,)
    assert store.has_chunk(chunk("chunk-1")), "manifest 1 is present, so it protects its chunks"
    assert store.has_chunk(chunk("chunk-2"))
    assert store.has_chunk(young_orphan)
    assert not store.has_chunk(old_orphan)


def test_grace_boundary_uses_the_injected_clock(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path, job_id=JOB)
    orphan = store.put_chunk(b"orphan")
    os.utime(store.chunk_path(orphan), (OLD, OLD))
    assert collect_garbage(store, [], grace_s=100, now=lambda: OLD + 99).deleted == ()
    assert collect_garbage(store, [], grace_s=100, now=lambda: OLD + 100).deleted == (orphan,)


def test_removes_leftovers_of_dead_writers(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path, job_id=JOB)
    ref = store.put_chunk(b"chunk")
    leftover = store.chunk_path(ref).parent / ".tmp-dead.42.ff"
    leftover.write_bytes(b"half a chunk")
    os.utime(leftover, (OLD, OLD))
    report = collect_garbage(store, [], grace_s=60, now=lambda: OLD + 3600)
    assert report.incomplete_writes_removed == 1
    assert not leftover.exists()


def test_absent_retained_id_stops_collection(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path, job_id=JOB)
    orphan = store.put_chunk(b"orphan")
    os.utime(store.chunk_path(orphan), (OLD, OLD))
    with pytest.raises(CheckpointNotFound, match=r"\[7\]"):
        collect_garbage(store, [7], grace_s=0)
    assert store.has_chunk(orphan)


def test_unreadable_manifest_stops_collection(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path, job_id=JOB)
    populate(store, [checkpoint_with(1, "chunk-1")])
    store.manifest_path(1).write_bytes(b"{ truncated")
    age_everything(store)
    with pytest.raises(CheckpointCorrupt):
        collect_garbage(store, [], grace_s=0)
    assert store.has_chunk(chunk("chunk-1"))


@pytest.mark.parametrize("grace_s", [-1.0, float("nan")])
def test_grace_must_be_non_negative(tmp_path: Path, grace_s: float) -> None:
    with pytest.raises(ValueError, match="grace_s"):
        collect_garbage(FileSystemStore(tmp_path, job_id=JOB), [], grace_s=grace_s)


# -- the property ------------------------------------------------------------------------


manifest_sets = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=60),  # checkpoint id
        st.sets(st.integers(min_value=0, max_value=15), max_size=6),  # chunk indexes
        st.booleans(),  # savepoint?
    ),
    max_size=12,
    unique_by=lambda entry: entry[0],
)


@settings(max_examples=100, deadline=None)
@given(
    entries=manifest_sets,
    keep=st.integers(min_value=1, max_value=5),
    pinned=st.sets(st.integers(min_value=1, max_value=60), max_size=3),
)
def test_retention_never_strands_a_retained_manifest(
    entries: list[tuple[int, set[int], bool]], keep: int, pinned: set[int]
) -> None:
    manifests = []
    for checkpoint_id, indexes, is_savepoint in entries:
        manifest = checkpoint_with(checkpoint_id, *(f"chunk-{i}" for i in sorted(indexes)))
        manifests.append(savepoint(manifest) if is_savepoint else manifest)
    plan = plan_retention(manifests, keep=keep, pinned=pinned)

    retained = [m for m in manifests if m.checkpoint_id not in plan.delete_manifests]
    retained_digests = {ref.digest for m in retained for ref in m.chunk_refs()}
    checkpoint_ids = sorted(m.checkpoint_id for m in manifests if m.kind == "checkpoint")
    assert set(checkpoint_ids[-keep:]) <= {m.checkpoint_id for m in retained}
    assert all(ref.digest not in retained_digests for ref in plan.delete_chunks)

    # fsync only makes this slow; durability has its own tests in test_store_fs.py.
    with tempfile.TemporaryDirectory() as root, mock.patch.object(os, "fsync", return_value=None):
        store = FileSystemStore(root, job_id=JOB)
        populate(store, manifests)
        deleted = apply_retention(store, plan)
        assert store.list_checkpoints() == sorted(m.checkpoint_id for m in retained)
        for manifest in retained:
            for ref in manifest.chunk_refs():
                assert store.get_chunk(ref) == _DATA[ref]
        for ref in deleted:
            assert ref.digest not in retained_digests
            assert not store.has_chunk(ref)
        # And retention leaks nothing: only what retained manifests use stays behind.
        assert {ref.digest for ref in store.list_chunks()} == retained_digests
