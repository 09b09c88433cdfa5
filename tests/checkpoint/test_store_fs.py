"""FileSystemStore: the conformance suite, failure injection, on-disk layout and durability."""

from __future__ import annotations

import errno
import itertools
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import checkpoint._store as store_module
from checkpoint import (
    CheckpointCorrupt,
    CheckpointNotFound,
    CheckpointStore,
    ChunkRef,
    FileSystemStore,
    InvalidStoreConfig,
    StoreWriteError,
    chunk_ref_of,
    store_from_uri,
)
from checkpoint.testing import (
    CONFORMANCE_CHECKS,
    ConformanceSetupError,
    check_corrupted_chunk_detected,
    check_manifest_never_overwritten,
    check_store,
    make_manifest,
)

JOB = "payments"


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[[], FileSystemStore]:
    counter = itertools.count()
    return lambda: FileSystemStore(tmp_path / f"store-{next(counter)}", job_id=JOB)


@pytest.fixture
def store(tmp_path: Path) -> FileSystemStore:
    return FileSystemStore(tmp_path / "root", job_id=JOB)


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def temp_files(root: Path) -> list[Path]:
    return [p for p in all_files(root) if p.name.startswith(".tmp-")]


# -- conformance ------------------------------------------------------------------


@pytest.mark.parametrize("check", CONFORMANCE_CHECKS, ids=lambda check: check.__name__)
def test_conformance(check: Any, make_store: Callable[[], FileSystemStore]) -> None:
    check_store(make_store, checks=[check])


def test_conformance_suite_fails_a_store_that_trusts_its_files(tmp_path: Path) -> None:
    class TrustingStore(FileSystemStore):
        def get_chunk(self, ref: ChunkRef) -> bytes:
            return self.chunk_path(ref).read_bytes()

    counter = itertools.count()
    with pytest.raises(AssertionError, match="check_corrupted_chunk_detected"):
        check_store(
            lambda: TrustingStore(tmp_path / f"trusting-{next(counter)}", job_id=JOB),
            checks=[check_corrupted_chunk_detected],
        )


def test_conformance_suite_fails_a_store_that_overwrites_manifests(tmp_path: Path) -> None:
    class OverwritingStore(FileSystemStore):
        def put_manifest(self, manifest: Any) -> None:
            self.delete_manifest(manifest.checkpoint_id)
            super().put_manifest(manifest)

    counter = itertools.count()
    with pytest.raises(AssertionError, match="check_manifest_never_overwritten"):
        check_store(
            lambda: OverwritingStore(tmp_path / f"overwriting-{next(counter)}", job_id=JOB),
            checks=[check_manifest_never_overwritten],
        )


def test_conformance_suite_demands_corruptors_for_other_stores(store: FileSystemStore) -> None:
    class Wrapper:
        """Delegates to a FileSystemStore without being one."""

        def __init__(self, inner: FileSystemStore) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        @property
        def job_id(self) -> str:
            return self._inner.job_id

        def describe(self) -> str:
            return self._inner.describe()

        def put_chunk(self, data: bytes) -> ChunkRef:
            return self._inner.put_chunk(data)

        def get_chunk(self, ref: ChunkRef) -> bytes:
            return self._inner.get_chunk(ref)

        def has_chunk(self, ref: ChunkRef) -> bool:
            return self._inner.has_chunk(ref)

        def delete_chunk(self, ref: ChunkRef) -> None:
            self._inner.delete_chunk(ref)

        def list_chunks(self) -> list[ChunkRef]:
            return self._inner.list_chunks()

        def put_manifest(self, manifest: Any) -> None:
            self._inner.put_manifest(manifest)

        def get_manifest(self, checkpoint_id: int) -> Any:
            return self._inner.get_manifest(checkpoint_id)

        def list_checkpoints(self) -> list[int]:
            return self._inner.list_checkpoints()

        def delete_manifest(self, checkpoint_id: int) -> None:
            self._inner.delete_manifest(checkpoint_id)

    with pytest.raises(ConformanceSetupError, match="corrupt_chunk"):
        check_store(lambda: Wrapper(store), checks=[check_corrupted_chunk_detected])


# -- layout -----------------------------------------------------------------------


def test_layout_on_disk(store: FileSystemStore) -> None:
    ref = store.put_chunk(b"state bytes")
    store.put_manifest(make_manifest(JOB, 12, {"map-0": [ref]}))
    job_dir = store.root / JOB
    assert all_files(store.root) == [
        job_dir / "chunks" / ref.hex[:2] / ref.hex,
        job_dir / "manifests" / "00000000000000000012.json",
    ]
    assert store.describe() == str(job_dir)


def test_opening_a_store_creates_nothing(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "absent", job_id=JOB)
    assert store.list_chunks() == []
    assert store.list_checkpoints() == []
    with pytest.raises(CheckpointNotFound):
        store.get_manifest(1)
    assert not (tmp_path / "absent").exists()


def test_listing_ignores_temp_files_and_strays(store: FileSystemStore) -> None:
    ref = store.put_chunk(b"real")
    fanout = store.chunk_path(ref).parent
    (fanout / f".tmp-{ref.hex}.123.abc").write_bytes(b"half")
    (fanout / "README").write_text("operator note")
    (fanout.parent / "zz").mkdir()
    (store.root / JOB / "manifests").mkdir()
    (store.root / JOB / "manifests" / "notes.json").write_text("{}")
    (store.root / JOB / "manifests" / ".tmp-00000000000000000001.json.1.ab").write_text("{")
    assert store.list_chunks() == [ref]
    assert store.list_checkpoints() == []


# -- failure injection --------------------------------------------------------------


def enospc(path: str, nbytes: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def test_disk_full_on_chunk_leaves_nothing_behind(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path, job_id=JOB, fault_hook=enospc)
    with pytest.raises(StoreWriteError) as info:
        store.put_chunk(b"x" * 1000)
    ref = chunk_ref_of(b"x" * 1000)
    message = str(info.value)
    assert str(store.chunk_path(ref)) in message
    assert "No space left on device" in message
    assert "ENOSPC" in message
    assert all_files(tmp_path) == []
    assert store.list_chunks() == []


def test_disk_full_on_manifest_keeps_previous_state(tmp_path: Path) -> None:
    failing = False

    def hook(path: str, nbytes: int) -> None:
        if failing:
            enospc(path, nbytes)

    store = FileSystemStore(tmp_path, job_id=JOB, fault_hook=hook)
    ref = store.put_chunk(b"state")
    store.put_manifest(make_manifest(JOB, 1, {"map-0": [ref]}))
    before = all_files(tmp_path)
    failing = True
    with pytest.raises(StoreWriteError, match=r"00000000000000000002\.json.*ENOSPC"):
        store.put_manifest(make_manifest(JOB, 2, {"map-0": [ref]}))
    assert all_files(tmp_path) == before
    assert store.list_checkpoints() == [1]
    failing = False
    store.put_manifest(make_manifest(JOB, 2, {"map-0": [ref]}))
    assert store.list_checkpoints() == [1, 2]


def test_io_error_midway_through_data_leaves_no_temp_file(
    store: FileSystemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def short_then_eio(fd: int, data: Any) -> int:
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "write", short_then_eio)
    with pytest.raises(StoreWriteError, match="EIO"):
        store.put_chunk(b"y" * 100)
    monkeypatch.undo()
    assert temp_files(store.root) == []
    assert store.list_chunks() == []


def test_fault_hook_sees_every_write_but_not_skipped_ones(tmp_path: Path) -> None:
    calls: list[tuple[str, int]] = []
    store = FileSystemStore(tmp_path, job_id=JOB, fault_hook=lambda p, n: calls.append((p, n)))
    ref = store.put_chunk(b"12345")
    store.put_chunk(b"12345")
    manifest = make_manifest(JOB, 4, {"map-0": [ref]})
    store.put_manifest(manifest)
    assert calls == [
        (str(store.chunk_path(ref)), 5),
        (str(store.manifest_path(4)), len(manifest.to_bytes())),
    ]


def test_slow_fault_hook_only_delays(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path, job_id=JOB, fault_hook=lambda p, n: time.sleep(0.01))
    ref = store.put_chunk(b"slow")
    assert store.get_chunk(ref) == b"slow"


def test_failed_directory_sync_withdraws_the_manifest(
    store: FileSystemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = store.put_chunk(b"state")
    target = store.manifest_path(3)
    real_fsync_dir = store_module._fsync_dir

    def fsync_dir(directory: Path) -> None:
        if directory == target.parent and target.exists():
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync_dir(directory)

    monkeypatch.setattr(store_module, "_fsync_dir", fsync_dir)
    with pytest.raises(StoreWriteError, match="EIO"):
        store.put_manifest(make_manifest(JOB, 3, {"map-0": [ref]}))
    assert not target.exists()
    assert temp_files(store.root) == []


def test_write_protocol_is_fsync_rename_fsync_directory(
    store: FileSystemStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_chunk(b"warm up: directories exist and are synced")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    def link(src: Any, dst: Any) -> None:
        events.append(("link", str(dst)))
        real_link(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    ref = store.put_chunk(b"payload")
    chunk = store.chunk_path(ref)
    # A new fan-out directory: its own entry is made durable before anything goes in it.
    assert events[0] == ("fsync", str(chunk.parent.parent))
    assert events[1][0] == "fsync"
    assert Path(events[1][1]).name.startswith(".tmp-")
    assert Path(events[1][1]).parent == chunk.parent
    assert events[2:] == [("replace", str(chunk)), ("fsync", str(chunk.parent))]

    sibling = next(
        data
        for data in (f"sibling {i}".encode() for i in itertools.count())
        if chunk_ref_of(data).hex[:2] == ref.hex[:2]
    )
    events.clear()
    store.put_chunk(sibling)
    sibling_path = store.chunk_path(chunk_ref_of(sibling))
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[1:] == [("replace", str(sibling_path)), ("fsync", str(sibling_path.parent))]

    events.clear()
    store.put_manifest(make_manifest(JOB, 1, {"map-0": [ref]}))
    manifest_path = store.manifest_path(1)
    assert [kind for kind, _ in events] == ["fsync", "fsync", "link", "fsync"]
    assert events[2:] == [("link", str(manifest_path)), ("fsync", str(manifest_path.parent))]

    events.clear()
    store.delete_manifest(1)
    assert events == [("fsync", str(manifest_path.parent))]


# -- corruption on disk ---------------------------------------------------------------


def test_chunk_corrupted_on_disk_is_detected(store: FileSystemStore) -> None:
    ref = store.put_chunk(b"balance=100")
    store.chunk_path(ref).write_bytes(b"balance=999")
    with pytest.raises(CheckpointCorrupt) as info:
        store.get_chunk(ref)
    assert ref.digest in info.value.what
    assert str(store.chunk_path(ref)) in info.value.what


def test_same_size_damage_is_repaired_only_when_verifying_existing(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path, job_id=JOB)
    ref = store.put_chunk(b"balance=100")
    store.chunk_path(ref).write_bytes(b"balance=999")
    store.put_chunk(b"balance=100")  # size matches: the documented cheap skip
    with pytest.raises(CheckpointCorrupt):
        store.get_chunk(ref)
    verifying = FileSystemStore(tmp_path, job_id=JOB, verify_existing=True)
    verifying.put_chunk(b"balance=100")
    assert store.get_chunk(ref) == b"balance=100"


def test_truncated_chunk_is_rewritten_by_put(store: FileSystemStore) -> None:
    ref = store.put_chunk(b"0123456789")
    store.chunk_path(ref).write_bytes(b"01234")
    assert not store.has_chunk(ref)
    store.put_chunk(b"0123456789")
    assert store.get_chunk(ref) == b"0123456789"


def test_truncated_manifest_is_refused(store: FileSystemStore) -> None:
    store.put_manifest(make_manifest(JOB, 9, {"map-0": [store.put_chunk(b"s")]}))
    path = store.manifest_path(9)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CheckpointCorrupt) as info:
        store.get_manifest(9)
    assert info.value.what == str(path)


def test_manifest_of_another_job_is_refused_naming_both(tmp_path: Path) -> None:
    ours = FileSystemStore(tmp_path, job_id="payments")
    theirs = FileSystemStore(tmp_path, job_id="refunds")
    theirs.put_manifest(make_manifest("refunds", 5, {}))
    ours.manifest_path(5).parent.mkdir(parents=True)
    ours.manifest_path(5).write_bytes(theirs.manifest_path(5).read_bytes())
    with pytest.raises(CheckpointCorrupt) as info:
        ours.get_manifest(5)
    assert "'refunds'" in str(info.value)
    assert "'payments'" in str(info.value)


def test_manifest_of_another_job_is_not_written(store: FileSystemStore) -> None:
    with pytest.raises(StoreWriteError, match=r"'refunds'.*'payments'"):
        store.put_manifest(make_manifest("refunds", 5, {}))


# -- ages and garbage support -----------------------------------------------------------


def test_reput_refreshes_the_chunk_age(store: FileSystemStore) -> None:
    ref = store.put_chunk(b"reused")
    os.utime(store.chunk_path(ref), (1_000_000, 1_000_000))
    assert store.chunk_mtime(ref) == 1_000_000
    store.put_chunk(b"reused")
    mtime = store.chunk_mtime(ref)
    assert mtime is not None
    assert mtime > time.time() - 60
    assert store.chunk_mtime(chunk_ref_of(b"absent")) is None


def test_sweep_removes_only_old_temp_files(store: FileSystemStore) -> None:
    ref = store.put_chunk(b"keep me")
    fanout = store.chunk_path(ref).parent
    old, young = fanout / ".tmp-old.1.aa", fanout / ".tmp-young.1.bb"
    old.write_bytes(b"dead writer")
    young.write_bytes(b"live writer")
    os.utime(old, (1_000_000, 1_000_000))
    assert store.sweep_incomplete_writes(older_than=time.time() - 60) == 1
    assert not old.exists()
    assert young.exists()
    assert store.get_chunk(ref) == b"keep me"


# -- concurrency across processes ---------------------------------------------------------


def _process_writer(root: str, worker: int, start: Any, shared: list[bytes]) -> list[str]:
    store = FileSystemStore(Path(root), job_id=JOB)
    own = [f"worker {worker} chunk {i}".encode() * 50 for i in range(20)]
    start.wait(timeout=60)
    order = shared + own if worker % 2 else list(reversed(shared)) + own
    return [store.put_chunk(data).digest for data in order]


def _run_writer(args: tuple[str, int, Any, list[bytes], Any]) -> None:
    root, worker, start, shared, results = args
    results.put((worker, _process_writer(root, worker, start, shared)))


def test_two_processes_write_the_same_store_at_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    results = context.Queue()
    shared = [bytes([i]) * (1000 + i) for i in range(60)]
    processes = [
        context.Process(target=_run_writer, args=((str(tmp_path), worker, start, shared, results),))
        for worker in range(2)
    ]
    for process in processes:
        process.start()
    digests = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    store = FileSystemStore(tmp_path, job_id=JOB)
    expected = {chunk_ref_of(data) for data in shared}
    expected |= {
        chunk_ref_of(f"worker {w} chunk {i}".encode() * 50) for w in (0, 1) for i in range(20)
    }
    assert set(digests[0]) | set(digests[1]) == {ref.digest for ref in expected}
    assert store.list_chunks() == sorted(expected)
    for ref in expected:
        store.get_chunk(ref)
    assert temp_files(tmp_path) == []


# -- opening stores -------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["file", "file-localhost", "plain", "quoted"])
def test_store_from_uri(tmp_path: Path, form: str) -> None:
    target = tmp_path / "with space" if form == "quoted" else tmp_path
    uri = {
        "file": f"file://{target}",
        "file-localhost": f"file://localhost{target}",
        "plain": str(target),
        "quoted": f"file://{str(target).replace(' ', '%20')}",
    }[form]
    opened = store_from_uri(uri, job_id=JOB)
    assert isinstance(opened, FileSystemStore)
    assert isinstance(opened, CheckpointStore)
    assert opened.root == target
    assert opened.job_id == JOB


@pytest.mark.parametrize(
    "uri", ["s3://bucket/prefix", "file://otherhost/data", "", "file://", "etcd://x"]
)
def test_store_from_uri_refuses_what_it_cannot_open(uri: str) -> None:
    with pytest.raises(InvalidStoreConfig) as info:
        store_from_uri(uri, job_id=JOB)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("job_id", ["", ".", "..", "../escape", "a/b", ".hidden", "x" * 201])
def test_job_ids_that_cannot_name_a_directory_are_refused(tmp_path: Path, job_id: str) -> None:
    with pytest.raises(InvalidStoreConfig, match="job id"):
        FileSystemStore(tmp_path, job_id=job_id)


def test_store_pickles_for_ray_actors(store: FileSystemStore) -> None:
    ref = store.put_chunk(b"crosses processes")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get_chunk(ref) == b"crosses processes"
