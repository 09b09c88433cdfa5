"""Savepoint copies and checkpoint verification."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from checkpoint import (
    CheckpointCorrupt,
    CheckpointNotFound,
    FileSystemStore,
    Manifest,
    StoreWriteError,
    copy_checkpoint,
    verify_checkpoint,
)
from checkpoint.testing import make_manifest

JOB = "payments"


@pytest.fixture
def src(tmp_path: Path) -> FileSystemStore:
    return FileSystemStore(tmp_path / "checkpoints", job_id=JOB)


@pytest.fixture
def dst(tmp_path: Path) -> FileSystemStore:
    return FileSystemStore(tmp_path / "savepoints", job_id="payments-v2")


def write_checkpoint(store: FileSystemStore, checkpoint_id: int = 7) -> Manifest:
    shared = store.put_chunk(b"shared base" * 100)
    manifest = make_manifest(
        store.job_id,
        checkpoint_id,
        {
            "map-0": [shared, store.put_chunk(b"map-0 delta")],
            "map-1": [shared, store.put_chunk(b"map-1 delta")],
            "sink-0": [store.put_chunk(b"sink txn")],
        },
    )
    store.put_manifest(manifest)
    return manifest


def test_savepoint_is_a_self_contained_copy(
    src: FileSystemStore, dst: FileSystemStore, tmp_path: Path
) -> None:
    original = write_checkpoint(src)
    savepoint = copy_checkpoint(src, 7, dst, name="before-migration")
    assert savepoint.kind == "savepoint"
    assert savepoint.name == "before-migration"
    assert savepoint.job_id == "payments-v2"
    assert savepoint.checkpoint_id == 7
    assert savepoint.tasks == original.tasks
    assert dst.get_manifest(7) == savepoint

    shutil.rmtree(tmp_path / "checkpoints")
    report = verify_checkpoint(dst, 7)
    assert report.ok, report.summary()
    for ref in original.chunk_refs():
        dst.get_chunk(ref)


def test_copying_again_under_the_same_name_is_idempotent(
    src: FileSystemStore, dst: FileSystemStore
) -> None:
    write_checkpoint(src)
    first = copy_checkpoint(src, 7, dst, name="nightly")
    assert copy_checkpoint(src, 7, dst, name="nightly") == first
    with pytest.raises(StoreWriteError, match="already exists"):
        copy_checkpoint(src, 7, dst, name="another-name")
    assert dst.get_manifest(7).name == "nightly"


def test_corrupt_source_chunk_aborts_before_the_manifest(
    src: FileSystemStore, dst: FileSystemStore
) -> None:
    manifest = write_checkpoint(src)
    damaged = manifest.tasks["map-1"].chunks[1]
    src.chunk_path(damaged).write_bytes(b"map-1 DELTA")
    with pytest.raises(CheckpointCorrupt) as info:
        copy_checkpoint(src, 7, dst, name="doomed")
    assert damaged.digest in str(info.value)
    assert dst.list_checkpoints() == []


def test_copy_of_an_absent_checkpoint(src: FileSystemStore, dst: FileSystemStore) -> None:
    with pytest.raises(CheckpointNotFound):
        copy_checkpoint(src, 99, dst, name="nothing")


def test_verify_reports_ok_per_task(src: FileSystemStore) -> None:
    write_checkpoint(src)
    report = verify_checkpoint(src, 7)
    assert report.ok
    assert report.manifest is not None
    assert [task.task_id for task in report.tasks] == ["map-0", "map-1", "sink-0"]
    assert [task.chunks_checked for task in report.tasks] == [2, 2, 1]
    assert report.tasks[0].bytes_checked == len(b"shared base" * 100) + len(b"map-0 delta")
    assert "OK" in report.summary()


def test_verify_reports_damage_on_the_tasks_it_hurts(src: FileSystemStore) -> None:
    manifest = write_checkpoint(src)
    shared = manifest.tasks["map-0"].chunks[0]
    sink_chunk = manifest.tasks["sink-0"].chunks[0]
    path = src.chunk_path(shared)
    path.write_bytes(path.read_bytes()[:-1])
    src.delete_chunk(sink_chunk)

    report = verify_checkpoint(src, 7)
    assert not report.ok
    by_task = {task.task_id: task for task in report.tasks}
    assert not by_task["map-0"].ok
    assert not by_task["map-1"].ok
    assert any(shared.digest in p and "truncated" in p for p in by_task["map-0"].problems)
    assert by_task["sink-0"].problems == (f"chunk {sink_chunk.digest} (8 bytes) is missing",)
    assert by_task["map-1"].bytes_checked == len(b"map-1 delta")
    assert "DAMAGED" in report.summary()
    assert sink_chunk.digest in report.summary()


def test_verify_reports_a_corrupt_manifest_without_raising(src: FileSystemStore) -> None:
    write_checkpoint(src)
    path = src.manifest_path(7)
    path.write_bytes(path.read_bytes().replace(b"conformance-v1", b"conformance-v2"))
    report = verify_checkpoint(src, 7)
    assert not report.ok
    assert report.manifest is None
    assert report.manifest_problem is not None
    assert "checksum mismatch" in report.manifest_problem
    assert report.tasks == ()
    assert "manifest unreadable" in report.summary()


def test_verify_of_an_absent_checkpoint_raises(src: FileSystemStore) -> None:
    with pytest.raises(CheckpointNotFound):
        verify_checkpoint(src, 1)
