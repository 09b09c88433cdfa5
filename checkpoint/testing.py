"""Conformance suite for `CheckpointStore` implementations, shipped for users.

A new store (remote, replicated, in-memory for tests) is a store when it passes::

    from checkpoint.testing import check_store
    check_store(lambda: MyStore(...), corrupt_chunk=..., corrupt_manifest=...)

or, to see each check as its own pytest test::

    @pytest.mark.parametrize("check", CONFORMANCE_CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check, tmp_path):
        check_store(lambda: MyStore(...), checks=[check])

`make_store` must return a new, empty store on every call. Checking that
damage is detected needs a way to damage stored objects behind the store's
back: `corrupt_chunk(store, ref, data)` and `corrupt_manifest(store,
checkpoint_id, data)` replace (or create) the stored bytes with `data`, bypassing
every check. For a `FileSystemStore` they default to `fs_corrupt_chunk` and
`fs_corrupt_manifest`; other stores must pass their own, or the checks that need
them raise `ConformanceSetupError`.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, TypeVar

from checkpoint._errors import CheckpointCorrupt, CheckpointNotFound, StoreWriteError
from checkpoint._manifest import ChunkRef, Manifest, TaskSnapshot, chunk_ref_of
from checkpoint._store import CheckpointStore, FileSystemStore

__all__ = [
    "CONFORMANCE_CHECKS",
    "ChunkCorruptor",
    "ConformanceSetupError",
    "ManifestCorruptor",
    "StoreHarness",
    "check_store",
    "fs_corrupt_chunk",
    "fs_corrupt_manifest",
    "make_manifest",
]

ChunkCorruptor = Callable[[CheckpointStore, ChunkRef, bytes], None]
"""`corrupt_chunk(store, ref, data)`: make the stored bytes of `ref` be `data`, unchecked."""

ManifestCorruptor = Callable[[CheckpointStore, int, bytes], None]
"""`corrupt_manifest(store, checkpoint_id, data)`: make that manifest's stored bytes `data`."""

Check = Callable[["StoreHarness"], None]
_E = TypeVar("_E", bound=BaseException)

_SEED: Final = 20240611


class ConformanceSetupError(ValueError):
    """The suite was called without what a check needs (e.g. no corruptor for this store).

    A usage error, not a failed check, so `check_store` lets it through unchanged.
    """


@dataclass(frozen=True)
class StoreHarness:
    """What every check receives: how to make a store and how to damage one."""

    make_store: Callable[[], CheckpointStore]
    corrupt_chunk: ChunkCorruptor | None = None
    corrupt_manifest: ManifestCorruptor | None = None

    def fresh_store(self) -> CheckpointStore:
        """A new store from `make_store`, checked to implement the protocol and be empty."""
        store = self.make_store()
        assert isinstance(store, CheckpointStore), f"{store!r} lacks CheckpointStore methods"
        assert store.list_chunks() == [], "make_store() must return an empty store (chunks found)"
        assert store.list_checkpoints() == [], "make_store() must return an empty store"
        return store

    def overwrite_chunk(self, store: CheckpointStore, ref: ChunkRef, data: bytes) -> None:
        """Damage a chunk through the configured (or FileSystemStore default) corruptor."""
        corrupt = self.corrupt_chunk
        if corrupt is None and isinstance(store, FileSystemStore):
            corrupt = fs_corrupt_chunk
        if corrupt is None:
            raise ConformanceSetupError(
                f"pass corrupt_chunk= to check {type(store).__name__}'s corruption detection"
            )
        corrupt(store, ref, data)

    def overwrite_manifest(self, store: CheckpointStore, checkpoint_id: int, data: bytes) -> None:
        """Damage or plant a manifest through the configured (or default) corruptor."""
        corrupt = self.corrupt_manifest
        if corrupt is None and isinstance(store, FileSystemStore):
            corrupt = fs_corrupt_manifest
        if corrupt is None:
            raise ConformanceSetupError(
                f"pass corrupt_manifest= to check {type(store).__name__}'s manifest verification"
            )
        corrupt(store, checkpoint_id, data)


def check_store(
    make_store: Callable[[], CheckpointStore],
    *,
    corrupt_chunk: ChunkCorruptor | None = None,
    corrupt_manifest: ManifestCorruptor | None = None,
    checks: Sequence[Check] | None = None,
) -> None:
    """Run the conformance checks (all of `CONFORMANCE_CHECKS` by default) against a store.

    Raises AssertionError naming the first failed check (an unexpected
    exception from the store counts as a failure, chained as the cause), or
    ConformanceSetupError if a check needs a corruptor that was not given.
    """
    harness = StoreHarness(make_store, corrupt_chunk, corrupt_manifest)
    for check in CONFORMANCE_CHECKS if checks is None else checks:
        try:
            check(harness)
        except ConformanceSetupError:
            raise
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__} failed: {exc}") from exc
        except Exception as exc:  # any surprise from the store fails the check, named
            raise AssertionError(
                f"{check.__name__} failed: unexpected {type(exc).__name__}: {exc}"
            ) from exc


def make_manifest(
    job_id: str,
    checkpoint_id: int,
    tasks: Mapping[str, Sequence[ChunkRef]],
    *,
    fencing_epoch: int = 1,
    code_version: str = "conformance-v1",
) -> Manifest:
    """A plausible checkpoint manifest for tests: one TaskSnapshot per entry of `tasks`."""
    return Manifest(
        job_id=job_id,
        checkpoint_id=checkpoint_id,
        fencing_epoch=fencing_epoch,
        code_version=code_version,
        schema_version=1,
        created_at=1_700_000_000.0 + checkpoint_id,
        duration_s=0.25,
        tasks={
            task_id: TaskSnapshot(
                task_id=task_id,
                kind="keyed-state",
                chunks=tuple(chunks),
                metadata={"key_groups": [0, 127], "base_chunks": len(chunks)},
            )
            for task_id, chunks in tasks.items()
        },
    )


def fs_corrupt_chunk(store: CheckpointStore, ref: ChunkRef, data: bytes) -> None:
    """Overwrite a FileSystemStore chunk file in place with `data` (no temp file, no checks)."""
    path = _fs(store).chunk_path(ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def fs_corrupt_manifest(store: CheckpointStore, checkpoint_id: int, data: bytes) -> None:
    """Overwrite (or create) a FileSystemStore manifest file in place with `data`."""
    path = _fs(store).manifest_path(checkpoint_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _fs(store: CheckpointStore) -> FileSystemStore:
    if not isinstance(store, FileSystemStore):
        raise ConformanceSetupError(f"fs_ corruptors only handle FileSystemStore, not {store!r}")
    return store


def _payload(size: int, salt: int = 0) -> bytes:
    return random.Random(_SEED * 1_000_003 + size * 7919 + salt).randbytes(size)


def _raises(expected: type[_E], call: Callable[[], object], failure: str) -> _E:
    """Return the `expected` exception `call` raises; AssertionError(failure) if it returns."""
    try:
        call()
    except expected as exc:
        return exc
    raise AssertionError(failure)


def _flip_one_byte(data: bytes, index: int) -> bytes:
    damaged = bytearray(data)
    damaged[index] ^= 0x01
    return bytes(damaged)


# -- the checks -----------------------------------------------------------------


def check_protocol_surface(harness: StoreHarness) -> None:
    """A fresh store implements the protocol, is empty, and names its job and location."""
    store = harness.fresh_store()
    assert isinstance(store.job_id, str), "job_id must be a string"
    assert store.job_id, "job_id must not be empty"
    description = store.describe()
    assert isinstance(description, str), "describe() must return a string"
    assert description, "describe() must not be empty"


def check_chunk_round_trip(harness: StoreHarness) -> None:
    """put_chunk returns the content address; get_chunk returns the same bytes, any size."""
    store = harness.fresh_store()
    payloads = [b"", b"x", _payload(4096), _payload(1 << 20)]
    refs = []
    for data in payloads:
        ref = store.put_chunk(data)
        assert ref == chunk_ref_of(data), f"put_chunk returned {ref}, expected {chunk_ref_of(data)}"
        refs.append(ref)
    for data, ref in zip(payloads, refs, strict=True):
        assert store.has_chunk(ref), f"has_chunk({ref.digest}) is False after put"
        assert store.get_chunk(ref) == data, f"get_chunk({ref.digest}) returned other bytes"
    assert store.list_chunks() == sorted(refs), "list_chunks must list each chunk, by digest"


def check_put_chunk_idempotent(harness: StoreHarness) -> None:
    """Putting the same bytes again returns the same ref and stores one chunk."""
    store = harness.fresh_store()
    data = _payload(10_000)
    refs = {store.put_chunk(data) for _ in range(3)}
    assert len(refs) == 1, f"same bytes gave several refs: {refs}"
    assert store.list_chunks() == [chunk_ref_of(data)], "a re-put chunk must be listed once"
    assert store.get_chunk(chunk_ref_of(data)) == data


def check_corrupted_chunk_detected(harness: StoreHarness) -> None:
    """A chunk altered in place (same size) raises CheckpointCorrupt naming the chunk."""
    store = harness.fresh_store()
    data = _payload(5000)
    ref = store.put_chunk(data)
    harness.overwrite_chunk(store, ref, _flip_one_byte(data, 2500))
    error = _raises(
        CheckpointCorrupt, lambda: store.get_chunk(ref), "get_chunk returned altered bytes"
    )
    assert ref.digest in str(error), f"the error must name the chunk: {error}"


def check_truncated_chunk_detected(harness: StoreHarness) -> None:
    """A chunk shorter or longer than its ref raises CheckpointCorrupt naming the chunk."""
    store = harness.fresh_store()
    data = _payload(5000)
    ref = store.put_chunk(data)
    for damaged in (data[:-1], data[:0], data + b"\x00"):
        harness.overwrite_chunk(store, ref, damaged)
        error = _raises(
            CheckpointCorrupt,
            lambda: store.get_chunk(ref),
            f"get_chunk accepted {len(damaged)} bytes for a {ref.size}-byte chunk",
        )
        assert ref.digest in str(error), f"the error must name the chunk: {error}"


def check_truncated_chunk_repaired_by_put(harness: StoreHarness) -> None:
    """Re-putting a chunk whose stored copy is truncated repairs it (dedup must not trust it)."""
    store = harness.fresh_store()
    data = _payload(5000)
    ref = store.put_chunk(data)
    harness.overwrite_chunk(store, ref, data[:100])
    assert store.put_chunk(data) == ref
    assert store.get_chunk(ref) == data, "put_chunk skipped rewriting a truncated chunk"


def check_manifest_round_trip(harness: StoreHarness) -> None:
    """A manifest read back equals the one written, and is listed."""
    store = harness.fresh_store()
    refs = [store.put_chunk(_payload(100, salt)) for salt in range(3)]
    manifest = make_manifest(store.job_id, 42, {"map-0": refs[:2], "map-1": refs[1:]})
    store.put_manifest(manifest)
    assert store.list_checkpoints() == [42]
    assert store.get_manifest(42) == manifest, "manifest changed through the store"


def check_manifest_never_overwritten(harness: StoreHarness) -> None:
    """Re-putting an identical manifest succeeds; a different one with that id is refused."""
    store = harness.fresh_store()
    manifest = make_manifest(store.job_id, 7, {"map-0": [store.put_chunk(b"state")]})
    store.put_manifest(manifest)
    store.put_manifest(manifest)
    rival = make_manifest(store.job_id, 7, {"map-0": []}, fencing_epoch=2)
    _raises(
        StoreWriteError,
        lambda: store.put_manifest(rival),
        "a different manifest replaced committed checkpoint 7",
    )
    assert store.get_manifest(7) == manifest, "the committed manifest changed"


def check_corrupted_manifest_detected(harness: StoreHarness) -> None:
    """A manifest altered in place raises CheckpointCorrupt (checksum or parse failure)."""
    store = harness.fresh_store()
    manifest = make_manifest(store.job_id, 3, {"map-0": [store.put_chunk(b"a")]})
    store.put_manifest(manifest)
    data = manifest.to_bytes()
    marker = data.index(b"conformance-v1")
    for damaged in (_flip_one_byte(data, marker + 3), b"\x00\xff garbage", b"{}"):
        harness.overwrite_manifest(store, 3, damaged)
        _raises(
            CheckpointCorrupt,
            lambda: store.get_manifest(3),
            f"get_manifest accepted damaged bytes {damaged[:40]!r}",
        )


def check_truncated_manifest_detected(harness: StoreHarness) -> None:
    """A manifest cut short at any point raises CheckpointCorrupt."""
    store = harness.fresh_store()
    manifest = make_manifest(store.job_id, 3, {"map-0": [store.put_chunk(b"a")]})
    store.put_manifest(manifest)
    data = manifest.to_bytes()
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        harness.overwrite_manifest(store, 3, data[:cut])
        _raises(
            CheckpointCorrupt,
            lambda: store.get_manifest(3),
            f"get_manifest accepted a manifest cut to {cut} bytes",
        )


def check_foreign_manifest_refused(harness: StoreHarness) -> None:
    """Manifests of another job are refused on write and, if planted, on read (naming both)."""
    store = harness.fresh_store()
    other_job = store.job_id + "-other"
    foreign = make_manifest(other_job, 5, {"map-0": [store.put_chunk(b"a")]})
    _raises(
        StoreWriteError,
        lambda: store.put_manifest(foreign),
        "put_manifest accepted a manifest of another job",
    )
    assert store.list_checkpoints() == [], "a refused manifest must leave nothing listed"
    harness.overwrite_manifest(store, 5, foreign.to_bytes())
    message = str(
        _raises(
            CheckpointCorrupt,
            lambda: store.get_manifest(5),
            "get_manifest returned a manifest of another job",
        )
    )
    assert repr(other_job) in message, f"the error must name the manifest's job: {message}"
    assert repr(store.job_id) in message, f"the error must name the store's job: {message}"


def check_misplaced_manifest_refused(harness: StoreHarness) -> None:
    """A valid manifest stored under another checkpoint id is refused (names are not trusted)."""
    store = harness.fresh_store()
    manifest = make_manifest(store.job_id, 7, {"map-0": [store.put_chunk(b"a")]})
    harness.overwrite_manifest(store, 8, manifest.to_bytes())
    _raises(CheckpointCorrupt, lambda: store.get_manifest(8), "get_manifest(8) returned 7")


def check_list_ordering(harness: StoreHarness) -> None:
    """list_checkpoints is numerically ascending whatever the write order; list_chunks by digest."""
    store = harness.fresh_store()
    ids = [10, 2, 33, 1, 10**12, 9]
    for checkpoint_id in ids:
        store.put_manifest(make_manifest(store.job_id, checkpoint_id, {}))
    assert store.list_checkpoints() == sorted(ids), f"got {store.list_checkpoints()}"
    refs = [store.put_chunk(_payload(64, salt)) for salt in range(20)]
    assert store.list_chunks() == sorted(refs), "list_chunks must be ordered by digest"


def check_delete_semantics(harness: StoreHarness) -> None:
    """Deleting removes exactly the object named; deleting an absent object is not an error."""
    store = harness.fresh_store()
    kept, dropped = store.put_chunk(b"kept"), store.put_chunk(b"dropped")
    store.delete_chunk(dropped)
    store.delete_chunk(dropped)
    assert not store.has_chunk(dropped), "has_chunk is True after delete_chunk"
    assert store.list_chunks() == [kept]
    assert store.get_chunk(kept) == b"kept"
    _raises(CheckpointNotFound, lambda: store.get_chunk(dropped), "read a deleted chunk")
    for checkpoint_id in (1, 2):
        store.put_manifest(make_manifest(store.job_id, checkpoint_id, {"map-0": [kept]}))
    store.delete_manifest(1)
    store.delete_manifest(1)
    store.delete_manifest(999)
    assert store.list_checkpoints() == [2]
    _raises(CheckpointNotFound, lambda: store.get_manifest(1), "read a deleted manifest")
    assert store.has_chunk(kept), "deleting a manifest must not delete its chunks"


def check_missing_objects_not_found(harness: StoreHarness) -> None:
    """Absent objects raise CheckpointNotFound, not CheckpointCorrupt."""
    store = harness.fresh_store()
    absent = chunk_ref_of(b"never written")
    assert not store.has_chunk(absent)
    # A CheckpointCorrupt here escapes _raises and fails the check as unexpected.
    _raises(CheckpointNotFound, lambda: store.get_chunk(absent), "read an absent chunk")
    _raises(CheckpointNotFound, lambda: store.get_manifest(12345), "read an absent manifest")


def check_concurrent_writers(harness: StoreHarness) -> None:
    """Threads putting overlapping chunks and the same manifest at once all succeed, cleanly."""
    store = harness.fresh_store()
    writers = 8
    shared = [_payload(2048, salt) for salt in range(24)]
    start = threading.Barrier(writers)

    def write(worker: int) -> list[ChunkRef]:
        order = list(shared) + [_payload(512, 1000 + worker * 100 + i) for i in range(6)]
        random.Random(worker).shuffle(order)
        start.wait(timeout=30)
        return [store.put_chunk(data) for data in order]

    with ThreadPoolExecutor(max_workers=writers) as pool:
        results = list(pool.map(write, range(writers)))
    expected = sorted({ref for refs in results for ref in refs})
    assert len(expected) == 24 + writers * 6
    assert store.list_chunks() == expected, "concurrent puts lost, duplicated or leaked objects"
    for data in shared:
        assert store.get_chunk(chunk_ref_of(data)) == data

    manifest = make_manifest(store.job_id, 1, {"map-0": expected[:5]})
    manifest_start = threading.Barrier(writers)

    def commit(_: int) -> None:
        manifest_start.wait(timeout=30)
        store.put_manifest(manifest)

    with ThreadPoolExecutor(max_workers=writers) as pool:
        list(pool.map(commit, range(writers)))
    assert store.list_checkpoints() == [1]
    assert store.get_manifest(1) == manifest


CONFORMANCE_CHECKS: Final[tuple[Check, ...]] = (
    check_protocol_surface,
    check_chunk_round_trip,
    check_put_chunk_idempotent,
    check_corrupted_chunk_detected,
    check_truncated_chunk_detected,
    check_truncated_chunk_repaired_by_put,
    check_manifest_round_trip,
    check_manifest_never_overwritten,
    check_corrupted_manifest_detected,
    check_truncated_manifest_detected,
    check_foreign_manifest_refused,
    check_misplaced_manifest_refused,
    check_list_ordering,
    check_delete_semantics,
    check_missing_objects_not_found,
    check_concurrent_writers,
)
"""Every conformance check, in the order `check_store` runs them."""
