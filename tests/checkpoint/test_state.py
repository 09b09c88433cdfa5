"""KeyedState: key groups, incremental snapshots, compaction, failed writes, rescaling, restore."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from checkpoint import (
    DEFAULT_MAX_PARALLELISM,
    CheckpointCorrupt,
    ChunkRef,
    CompactionPolicy,
    FileSystemStore,
    IncompatibleState,
    KeyedState,
    KeyGroupRange,
    StateHandle,
    StoreWriteError,
    key_group_of,
    partition_of,
)

KEYS = [f"account-{i}" for i in range(3000)]


class FlakyStore:
    """A FileSystemStore whose next `fail_puts` chunk writes raise StoreWriteError.

    `fail_after` lets that many writes through first, to fail a later write of
    the same snapshot (the compaction after the delta).
    """

    def __init__(self, inner: FileSystemStore) -> None:
        self.inner = inner
        self.fail_puts = 0
        self.fail_after = 0
        self.puts: list[ChunkRef] = []

    def put_chunk(self, data: bytes) -> ChunkRef:
        if self.fail_puts:
            if self.fail_after:
                self.fail_after -= 1
            else:
                self.fail_puts -= 1
                raise StoreWriteError("injected: disk full")
        ref = self.inner.put_chunk(data)
        self.puts.append(ref)
        return ref

    def get_chunk(self, ref: ChunkRef) -> bytes:
        return self.inner.get_chunk(ref)


@pytest.fixture
def store(tmp_path: Path) -> FileSystemStore:
    return FileSystemStore(tmp_path, job_id="t")


@pytest.fixture
def flaky(store: FileSystemStore) -> FlakyStore:
    return FlakyStore(store)


def snapshot(state: KeyedState, checkpoint_id: int, store: Any) -> StateHandle:
    return state.begin_snapshot(checkpoint_id).write(store)


def restored(store: Any, handles: Iterable[StateHandle], **kwargs: Any) -> dict[str, Any]:
    state = KeyedState(**kwargs)
    state.restore(store, list(handles))
    return dict(state.items())


def decode(store: FileSystemStore, ref: ChunkRef) -> dict[str, Any]:
    doc = msgpack.unpackb(store.get_chunk(ref), raw=False, strict_map_key=False)
    assert isinstance(doc, dict)
    return doc


def newest_delta(handle: StateHandle) -> ChunkRef:
    assert handle.metadata["delta_chunks"] >= 1, handle.metadata
    return handle.chunks[-1]


# -- key groups ---------------------------------------------------------------------


@pytest.mark.parametrize("max_parallelism", [16, DEFAULT_MAX_PARALLELISM, 1000])
@pytest.mark.parametrize("parallelism", range(1, 17))
def test_key_group_ranges_partition_all_groups_consistently_with_partition_of(
    parallelism: int, max_parallelism: int
) -> None:
    ranges = [KeyGroupRange.for_task(i, parallelism, max_parallelism) for i in range(parallelism)]
    # Contiguous, in task order, covering [0, maxp) without gaps or overlaps.
    assert ranges[0].start == 0
    assert ranges[-1].end == max_parallelism
    for left, right in itertools.pairwise(ranges):
        assert left.end == right.start
    for kg in range(max_parallelism):
        owners = [i for i, r in enumerate(ranges) if kg in r]
        assert len(owners) == 1, (kg, owners)
        assert owners[0] == kg * parallelism // max_parallelism
    # Ranges are balanced: sizes differ by at most one key group.
    sizes = [r.end - r.start for r in ranges]
    assert max(sizes) - min(sizes) <= 1
    for key in KEYS[:500]:
        task = partition_of(key, parallelism, max_parallelism)
        assert 0 <= task < parallelism
        assert key_group_of(key, max_parallelism) in ranges[task]
        state = KeyedState(ranges[task], max_parallelism=max_parallelism)
        assert state.owns(key)
        assert sum(KeyedState(r, max_parallelism=max_parallelism).owns(key) for r in ranges) == 1


def test_key_group_is_crc32_of_utf8_and_stable() -> None:
    # Values pinned: the Java runtime computes the same numbers.
    assert key_group_of("") == 0
    assert key_group_of("a") == 0xE8B7BE43 % 128
    assert key_group_of("é") == key_group_of("\u00e9")
    assert key_group_of("a", 1000) == 0xE8B7BE43 % 1000


def test_key_group_range_rejects_inconsistent_arguments() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        KeyGroupRange.for_task(2, 2)
    with pytest.raises(ValueError, match="inconsistent"):
        KeyGroupRange.for_task(0, 129)
    with pytest.raises(ValueError, match="invalid key group range"):
        KeyGroupRange(5, 4)
    assert 3 not in KeyGroupRange(0, 3)
    assert "1" not in KeyGroupRange(0, 3)
    assert list(KeyGroupRange(2, 5)) == [2, 3, 4]


def test_compaction_policy_validation_and_decision() -> None:
    with pytest.raises(ValueError, match="every_deltas"):
        CompactionPolicy(every_deltas=0)
    with pytest.raises(ValueError, match="max_delta_ratio"):
        CompactionPolicy(max_delta_ratio=0)
    policy = CompactionPolicy(every_deltas=3, max_delta_ratio=2.0)
    assert not policy.should_compact(0, 10_000, 1)
    assert not policy.should_compact(2, 200, 100)
    assert policy.should_compact(2, 201, 100)
    assert policy.should_compact(3, 0, 100)
    # No base yet: only the count decides.
    assert not policy.should_compact(2, 10**9, 0)


# -- snapshot and restore -------------------------------------------------------------


def test_snapshot_restore_round_trip(store: FileSystemStore) -> None:
    state = KeyedState()
    model = {k: (i, k.upper(), b"\x00" + k.encode()) for i, k in enumerate(KEYS[:200])}
    model["unicode-ключ"] = "значение"
    model["big"] = 2**62
    model["neg"] = -5
    for key, value in model.items():
        state.put(key, value)
    handle = snapshot(state, 1, store)
    assert handle.metadata["keys"] == len(model)
    assert handle.metadata["checkpoint_id"] == 1
    assert handle.metadata["key_groups"] == [0, DEFAULT_MAX_PARALLELISM]
    back = restored(store, [handle])
    # msgpack turns tuples into lists; values are otherwise identical.
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in model.items()}
    assert back == expected


def test_empty_state_snapshots_and_restores_empty(store: FileSystemStore) -> None:
    state = KeyedState()
    handle = snapshot(state, 1, store)
    assert restored(store, [handle]) == {}
    assert handle.metadata["keys"] == 0


def test_restore_replaces_previous_contents(store: FileSystemStore) -> None:
    state = KeyedState()
    state.put("a", 1)
    handle = snapshot(state, 1, store)
    state.put("b", 2)
    state.delete("a")
    state.restore(store, [handle])
    assert dict(state.items()) == {"a": 1}
    assert "b" not in state
    assert len(state) == 1
    # Nothing is dirty after a same-range restore: the next delta is empty.
    nxt = state.begin_snapshot(2)
    assert nxt.changed_keys == 0


def test_delta_size_follows_changed_keys_not_total_keys(store: FileSystemStore) -> None:
    big = KeyedState(compaction=CompactionPolicy(every_deltas=100, max_delta_ratio=1e9))
    for i in range(100_000):
        big.put(f"key-{i:06d}", i)
    first = snapshot(big, 1, store)
    full_delta = newest_delta(first)
    for i in range(0, 100_000, 1000):  # 100 keys
        big.put(f"key-{i:06d}", -i)
    second = snapshot(big, 2, store)
    small_delta = newest_delta(second)
    assert second.metadata["delta_chunks"] == 2
    assert full_delta.size > 1_000_000
    assert small_delta.size < full_delta.size / 500

    # Same number of changes on a state 100x smaller: about the same delta size.
    small = KeyedState(compaction=CompactionPolicy(every_deltas=100, max_delta_ratio=1e9))
    for i in range(1000):
        small.put(f"key-{i:06d}", i)
    snapshot(small, 1, store)
    for i in range(0, 100_000, 1000):
        small.put(f"key-{i:06d}", -i)
    same_change = newest_delta(snapshot(small, 2, store))
    assert abs(same_change.size - small_delta.size) < 64

    # And the delta grows with the number of changed keys.
    for i in range(0, 100_000, 100):  # 1000 keys
        big.put(f"key-{i:06d}", i + 1)
    tenfold = newest_delta(snapshot(big, 3, store))
    assert 8 * small_delta.size < tenfold.size < 12 * small_delta.size

    expected = {f"key-{i:06d}": i for i in range(100_000)}
    expected.update({f"key-{i:06d}": i + 1 for i in range(0, 100_000, 100)})
    big_back = KeyedState()
    big_back.restore(store, [snapshot(big, 4, store)])
    assert dict(big_back.items()) == expected


def test_begin_snapshot_is_isolated_from_later_mutations(store: FileSystemStore) -> None:
    state = KeyedState()
    state.put("a", 1)
    state.put("b", 2)
    snap = state.begin_snapshot(1)
    state.put("a", 100)
    state.delete("b")
    state.put("c", 3)
    assert restored(store, [snap.write(store)]) == {"a": 1, "b": 2}


def test_compaction_folds_deltas_into_base_chunks_and_bounds_the_chain(
    store: FileSystemStore,
) -> None:
    every = 3
    state = KeyedState(compaction=CompactionPolicy(every_deltas=every, max_delta_ratio=1e9))
    model: dict[str, int] = {}
    keys = KEYS[:300]
    for checkpoint_id in range(1, 21):
        for j in range(checkpoint_id, checkpoint_id + 40):
            key = keys[(j * 7) % len(keys)]
            state.put(key, checkpoint_id * 1000 + j)
            model[key] = checkpoint_id * 1000 + j
        victim = keys[(checkpoint_id * 13) % len(keys)]
        state.delete(victim)
        model.pop(victim, None)
        handle = snapshot(state, checkpoint_id, store)
        deltas = handle.metadata["delta_chunks"]
        bases = handle.metadata["base_chunks"]
        assert deltas == checkpoint_id % every, (checkpoint_id, handle.metadata)
        assert len(handle.chunks) == bases + deltas
        if checkpoint_id >= every:
            # One base chunk per non-empty key group, each holding only its group.
            groups = {key_group_of(k) for k in model} if deltas == 0 else None
            seen_groups = []
            for ref in handle.chunks[:bases]:
                doc = decode(store, ref)
                assert doc["t"] == "base"
                seen_groups.append(doc["kg"])
                assert all(key_group_of(k) == doc["kg"] for k in doc["entries"])
            assert seen_groups == sorted(seen_groups)
            if groups is not None:
                assert set(seen_groups) == groups
        for ref in handle.chunks[bases:]:
            assert decode(store, ref)["t"] == "delta"
        assert restored(store, [handle]) == model


def test_compaction_by_ratio_when_deltas_outgrow_the_base(store: FileSystemStore) -> None:
    state = KeyedState(compaction=CompactionPolicy(every_deltas=1000, max_delta_ratio=0.5))
    keys = KEYS[:2000]
    for key in keys:
        state.put(key, 0)
    first = snapshot(state, 1, store)
    second = snapshot(state, 2, store)
    # Without a base only the count decides, however big the deltas are.
    assert first.metadata["delta_chunks"] == 1
    assert second.metadata["delta_chunks"] == 2
    # A restore from two handles forces a base at the next snapshot.
    state.restore(store, [second, snapshot(KeyedState(), 3, store)])
    based = snapshot(state, 4, store)
    assert based.metadata["delta_chunks"] == 0
    assert based.metadata["base_chunks"] > 0
    base_bytes = sum(r.size for r in based.chunks)
    for key in keys[:100]:
        state.put(key, 1)
    cool = snapshot(state, 5, store)
    assert cool.metadata["delta_chunks"] == 1  # 5% of the keys: a delta
    assert newest_delta(cool).size < 0.5 * base_bytes
    for key in keys:
        state.put(key, 2)
    hot = snapshot(state, 6, store)
    # Rewriting every key outgrows half the base: compacted at once, far before 1000 deltas.
    assert hot.metadata["delta_chunks"] == 0
    assert restored(store, [hot]) == dict.fromkeys(keys, 2)


def test_deletes_survive_restore_before_and_after_compaction(store: FileSystemStore) -> None:
    state = KeyedState(compaction=CompactionPolicy(every_deltas=2, max_delta_ratio=1e9))
    for key in KEYS[:20]:
        state.put(key, 1)
    snapshot(state, 1, store)
    based = snapshot(state, 2, store)
    assert based.metadata["delta_chunks"] == 0
    assert based.metadata["base_chunks"] > 0
    state.delete(KEYS[3])
    state.delete("never-existed")
    in_delta = snapshot(state, 3, store)
    assert in_delta.metadata["delta_chunks"] == 1
    assert KEYS[3] not in restored(store, [in_delta])
    assert len(restored(store, [in_delta])) == 19
    folded = snapshot(state, 4, store)
    assert folded.metadata["delta_chunks"] == 0
    for ref in folded.chunks:
        assert KEYS[3] not in decode(store, ref)["entries"]
    assert restored(store, [folded]) == {k: 1 for k in KEYS[:20] if k != KEYS[3]}


def test_put_after_delete_in_one_interval_keeps_the_key(store: FileSystemStore) -> None:
    state = KeyedState(compaction=CompactionPolicy(every_deltas=2, max_delta_ratio=1e9))
    state.put("k", 1)
    state.put("other", 1)
    snapshot(state, 1, store)
    state.delete("k")
    state.put("k", 2)  # deleted and re-put between two barriers
    handle = snapshot(state, 2, store)  # compacts: exercises the fold
    assert restored(store, [handle]) == {"k": 2, "other": 1}
    state.delete("other")
    state.put("other", 5)
    handle = snapshot(state, 3, store)  # a plain delta: exercises restore's replay
    assert handle.metadata["delta_chunks"] == 1
    assert restored(store, [handle]) == {"k": 2, "other": 5}


def test_delete_then_put_then_delete_is_a_delete(store: FileSystemStore) -> None:
    state = KeyedState()
    state.put("k", 1)
    snapshot(state, 1, store)
    state.delete("k")
    state.put("k", 2)
    state.delete("k")
    assert restored(store, [snapshot(state, 2, store)]) == {}


# -- failed writes --------------------------------------------------------------------


def test_failed_delta_keys_go_to_the_next_snapshot(
    store: FileSystemStore, flaky: FlakyStore
) -> None:
    state = KeyedState()
    state.put("gone", 0)
    good = snapshot(state, 1, flaky)
    state.put("a", 1)
    state.put("b", 2)
    state.delete("gone")
    failing = state.begin_snapshot(2)
    flaky.fail_puts = 1
    with pytest.raises(StoreWriteError):
        failing.write(flaky)
    state.snapshot_failed(failing)
    # Nothing of the failed snapshot reached the chain.
    assert restored(store, [good]) == {"gone": 0}
    state.put("c", 3)
    nxt = state.begin_snapshot(3)
    assert set(nxt.changed) == {"a", "b", "c"}
    assert nxt.deleted == {"gone"}
    handle = nxt.write(flaky)
    assert handle.chunks[: len(good.chunks)] == good.chunks  # the chain continued
    assert restored(store, [handle]) == {"a": 1, "b": 2, "c": 3}


def test_failed_write_of_keys_changed_again_uses_the_newest_value(
    store: FileSystemStore, flaky: FlakyStore
) -> None:
    state = KeyedState()
    state.put("a", 1)
    state.put("b", 1)
    failing = state.begin_snapshot(1)
    flaky.fail_puts = 1
    with pytest.raises(StoreWriteError):
        failing.write(flaky)
    state.put("a", 2)  # changed again before the failure is handed back
    state.delete("b")
    state.snapshot_failed(failing)
    assert restored(store, [snapshot(state, 2, flaky)]) == {"a": 2}


def test_failed_compaction_leaves_the_chain_and_retries(
    store: FileSystemStore, flaky: FlakyStore
) -> None:
    state = KeyedState(compaction=CompactionPolicy(every_deltas=2, max_delta_ratio=1e9))
    for key in KEYS[:10]:
        state.put(key, 1)
    first = snapshot(state, 1, flaky)
    state.put(KEYS[0], 2)
    failing = state.begin_snapshot(2)
    flaky.fail_puts = 1
    flaky.fail_after = 1  # the delta is written, the base chunk write fails
    with pytest.raises(StoreWriteError):
        failing.write(flaky)
    state.snapshot_failed(failing)
    state.put(KEYS[1], 2)
    handle = snapshot(state, 3, flaky)
    assert handle.metadata["delta_chunks"] == 0  # compacted this time
    expected = dict.fromkeys(KEYS[:10], 1) | {KEYS[0]: 2, KEYS[1]: 2}
    assert restored(store, [handle]) == expected
    assert restored(store, [first]) == dict.fromkeys(KEYS[:10], 1)


def test_snapshot_begun_before_a_failed_one_was_handed_back_has_no_hole(
    store: FileSystemStore, flaky: FlakyStore
) -> None:
    """Two snapshots in flight (a timed-out checkpoint and the next one): the first fails.

    The second was begun before the failure was known, so its delta alone misses
    the first one's keys; the chain it produces must still hold them.
    """
    state = KeyedState()
    state.put("base", 0)
    snapshot(state, 1, flaky)
    state.put("a", 1)
    state.delete("base")
    first = state.begin_snapshot(2)
    state.put("b", 2)
    second = state.begin_snapshot(3)
    flaky.fail_puts = 1
    with pytest.raises(StoreWriteError):
        first.write(flaky)
    handle = second.write(flaky)  # the writer thread goes on before the task hears of it
    state.snapshot_failed(first)
    assert restored(store, [handle]) == {"a": 1, "b": 2}
    # The keys handed back are written again; that is harmless.
    assert restored(store, [snapshot(state, 4, flaky)]) == {"a": 1, "b": 2}


def test_a_value_that_does_not_encode_fails_every_snapshot_until_it_is_gone(
    store: FileSystemStore, flaky: FlakyStore
) -> None:
    """An int past 64 bits fails the encoding, not the store: its keys must not vanish.

    Found as a wrong ledger with exit 0: the delta was encoded before the failure was
    recorded, so a snapshot begun before the hand-back completed without those keys.
    """
    state = KeyedState()
    state.put("base", 0)
    snapshot(state, 1, flaky)
    state.put("big", 2**70)
    first = state.begin_snapshot(2)
    state.put("b", 2)
    second = state.begin_snapshot(3)
    with pytest.raises(OverflowError):
        first.write(flaky)
    # Begun before the failure was handed back, yet it must not complete without "big".
    with pytest.raises(OverflowError):
        second.write(flaky)
    state.snapshot_failed(first)
    state.snapshot_failed(second)
    with pytest.raises(OverflowError):
        snapshot(state, 4, flaky)
    state.put("big", 5)
    assert restored(store, [snapshot(state, 5, flaky)]) == {"base": 0, "big": 5, "b": 2}


# -- rescaling -------------------------------------------------------------------------


def _filled_tasks(
    store: FileSystemStore, parallelism: int, model: dict[str, int]
) -> list[StateHandle]:
    """Tasks of `parallelism` holding `model` (routed by partition_of); their handles.

    Each chain has a base, deltas with sets and deletes: the general case.
    """
    tasks = [
        KeyedState(
            KeyGroupRange.for_task(i, parallelism),
            compaction=CompactionPolicy(every_deltas=2, max_delta_ratio=1e9),
        )
        for i in range(parallelism)
    ]
    doomed = [f"doomed-{i}" for i in range(30)]
    for key in [*model, *doomed]:
        tasks[partition_of(key, parallelism)].put(key, -1)
    handles = [snapshot(t, 1, store) for t in tasks]
    handles = [snapshot(t, 2, store) for t in tasks]  # compacted into bases
    for key, value in model.items():
        tasks[partition_of(key, parallelism)].put(key, value)
    for key in doomed:
        tasks[partition_of(key, parallelism)].delete(key)
    handles = [snapshot(t, 3, store) for t in tasks]
    assert all(h.metadata["base_chunks"] > 0 and h.metadata["delta_chunks"] == 1
               for h in handles)
    return handles


@pytest.mark.parametrize(("old", "new"), [(2, 3), (3, 1), (1, 4), (4, 2), (3, 3)])
def test_rescale_restores_exactly_the_owned_keys(
    store: FileSystemStore, old: int, new: int
) -> None:
    model = {key: i for i, key in enumerate(KEYS[:1000])}
    handles = _filled_tasks(store, old, model)
    total = 0
    for j in range(new):
        mine = KeyGroupRange.for_task(j, new)
        state = KeyedState(mine)
        state.restore(store, handles)
        owned = {k: v for k, v in model.items() if partition_of(k, new) == j}
        assert dict(state.items()) == owned
        total += len(state)
        # A restore from several handles (or another range) writes a full base next.
        handle = snapshot(state, 10, store)
        assert handle.metadata["delta_chunks"] == 0
        assert handle.metadata["key_groups"] == [mine.start, mine.end]
        groups = sorted({key_group_of(k) for k in owned})
        assert [decode(store, r)["kg"] for r in handle.chunks] == groups
        assert restored(store, [handle], key_groups=mine) == owned
        # ...and then goes on incrementally.
        some_key = next(iter(owned))
        state.put(some_key, -7)
        after = snapshot(state, 11, store)
        assert after.metadata["delta_chunks"] == 1
        assert after.chunks[: len(handle.chunks)] == handle.chunks
    assert total == len(model)


def test_same_range_single_handle_continues_the_chain(store: FileSystemStore) -> None:
    mine = KeyGroupRange.for_task(1, 2)
    state = KeyedState(mine, compaction=CompactionPolicy(every_deltas=5, max_delta_ratio=1e9))
    for key in KEYS[:100]:
        if partition_of(key, 2) == 1:
            state.put(key, 1)
    first = snapshot(state, 1, store)
    again = KeyedState(mine, compaction=CompactionPolicy(every_deltas=5, max_delta_ratio=1e9))
    again.restore(store, [first])
    again.put("x-key", 5)
    nxt = snapshot(again, 2, store)
    assert nxt.chunks[:1] == first.chunks
    assert nxt.metadata["delta_chunks"] == 2


def test_restore_refuses_another_max_parallelism(store: FileSystemStore) -> None:
    state = KeyedState(max_parallelism=64)
    state.put("a", 1)
    handle = snapshot(state, 1, store)
    with pytest.raises(IncompatibleState):
        KeyedState().restore(store, [handle])


# -- corruption ---------------------------------------------------------------------------


def test_corrupted_chunk_raises_checkpoint_corrupt(store: FileSystemStore) -> None:
    state = KeyedState()
    for key in KEYS[:50]:
        state.put(key, 1)
    handle = snapshot(state, 1, store)
    path = store.chunk_path(handle.chunks[0])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    target = KeyedState()
    target.put("kept", 1)
    with pytest.raises(CheckpointCorrupt):
        target.restore(store, [handle])
    assert dict(target.items()) == {"kept": 1}  # a failed restore changes nothing


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # not MessagePack
        b"\x92\x01",  # truncated MessagePack
        msgpack.packb([1, 2]),  # not a map
        msgpack.packb({"t": "base", "v": 1, "kg": 0, "entries": {}}),  # base where delta expected
    ],
)
def test_chunk_that_verifies_but_does_not_decode_raises_checkpoint_corrupt(
    store: FileSystemStore, payload: bytes
) -> None:
    ref = store.put_chunk(payload)
    handle = StateHandle(chunks=(ref,), metadata={"base_chunks": 0, "max_parallelism": 128})
    with pytest.raises(CheckpointCorrupt):
        KeyedState().restore(store, [handle])


def test_chunk_of_a_newer_format_raises_incompatible_state(store: FileSystemStore) -> None:
    ref = store.put_chunk(msgpack.packb({"t": "delta", "v": 99, "set": {}, "del": []}))
    handle = StateHandle(chunks=(ref,), metadata={"base_chunks": 0})
    with pytest.raises(IncompatibleState):
        KeyedState().restore(store, [handle])


# -- model-based --------------------------------------------------------------------------

MODEL_KEYS = st.sampled_from([f"k{i}" for i in range(6)])


class KeyedStateMachine(RuleBasedStateMachine):
    """Random puts, deletes, snapshots (some written late, some failing) and restores vs a dict.

    Snapshots are written in the order they were begun (one writer thread);
    a failing write is handed back with `snapshot_failed`, possibly after
    later snapshots were begun or written. A restore is from the newest
    written handle and must give back the dict as it was when that snapshot began.
    """

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="keyed-state-"))
        self.store = FlakyStore(FileSystemStore(self.root, job_id="t"))
        self.model: dict[str, int] = {}
        self.state = KeyedState()
        self.in_flight: list[tuple[Any, dict[str, int]]] = []  # (StateSnapshot, model at begin)
        self.failed_not_handed_back: list[Any] = []
        self.latest: tuple[StateHandle, dict[str, int]] | None = None
        self.next_id = 1

    @initialize(every=st.integers(1, 4), ratio=st.sampled_from([0.3, 1.0, 1e9]))
    def configure(self, every: int, ratio: float) -> None:
        self.policy = CompactionPolicy(every_deltas=every, max_delta_ratio=ratio)
        self.state = KeyedState(compaction=self.policy)

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @rule(key=MODEL_KEYS, value=st.integers(-5, 5))
    def put(self, key: str, value: int) -> None:
        self.state.put(key, value)
        self.model[key] = value

    @rule(key=MODEL_KEYS)
    def delete(self, key: str) -> None:
        self.state.delete(key)
        self.model.pop(key, None)

    @rule(key=MODEL_KEYS, value=st.integers(-5, 5))
    def delete_then_put(self, key: str, value: int) -> None:
        # Both in one checkpoint interval: the delta must not record a delete.
        self.state.delete(key)
        self.state.put(key, value)
        self.model[key] = value

    @rule()
    def begin(self) -> None:
        self.in_flight.append((self.state.begin_snapshot(self.next_id), dict(self.model)))
        self.next_id += 1

    @precondition(lambda self: bool(self.in_flight))
    @rule(fail=st.booleans(), fail_after=st.integers(0, 2), hand_back_now=st.booleans())
    def write_oldest(self, fail: bool, fail_after: int, hand_back_now: bool) -> None:
        snap, at_begin = self.in_flight.pop(0)
        self.store.fail_puts = 1 if fail else 0
        self.store.fail_after = fail_after
        try:
            # With fail_after >= the chunks this write puts, it succeeds anyway.
            handle = snap.write(self.store)
        except StoreWriteError:
            if hand_back_now:
                self.state.snapshot_failed(snap)
            else:
                self.failed_not_handed_back.append(snap)
            return
        finally:
            self.store.fail_puts = 0
            self.store.fail_after = 0
        self.latest = (handle, at_begin)
        # Every handle must restore the state as it was when its snapshot began.
        assert restored(self.store.inner, [handle]) == at_begin
        assert handle.metadata["delta_chunks"] < self.policy.every_deltas

    @precondition(lambda self: bool(self.failed_not_handed_back))
    @rule()
    def hand_back(self) -> None:
        for snap in self.failed_not_handed_back:
            self.state.snapshot_failed(snap)
        self.failed_not_handed_back = []

    @precondition(lambda self: self.latest is not None)
    @rule(fresh=st.booleans())
    def restore_latest(self, fresh: bool) -> None:
        assert self.latest is not None
        handle, at_begin = self.latest
        # The runtime finishes or drops the old generation's writes before restoring.
        self.in_flight = []
        self.failed_not_handed_back = []
        if fresh:
            self.state = KeyedState(compaction=self.policy)
        self.state.restore(self.store.inner, [handle])
        self.model = dict(at_begin)

    @invariant()
    def live_state_matches_model(self) -> None:
        assert dict(self.state.items()) == self.model
        assert len(self.state) == len(self.model)


KeyedStateMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestKeyedStateModel = KeyedStateMachine.TestCase
