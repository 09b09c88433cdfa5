"""Keyed state that checkpoints incrementally.

State is partitioned into *key groups* (as in Flink): a key belongs to key group
``crc32(key) % max_parallelism`` and a task owns a contiguous range of key groups.
The key group, not the task, is the unit that moves when a job is rescaled from a
savepoint, so restoring with another parallelism only means reading other ranges.

A snapshot has two halves:

* `KeyedState.begin_snapshot` runs on the processing thread at the barrier. It
  costs O(keys changed since the last snapshot): it moves the dirty set out and
  copies the changed values. Values must therefore be immutable (int, str, bytes,
  tuples of those): the copy is shallow.
* `StateSnapshot.write` runs on a background thread and does the serialization
  and the storage I/O. Each call writes one *delta* chunk; every
  `CompactionPolicy.every_deltas` deltas it folds base and deltas into a new
  *base* (one chunk per key group), from the stored chunks, without touching the
  live state. Checkpoint cost therefore follows the change rate, not the state
  size, and the restore chain stays bounded.

A delta that fails to write is handed back with `KeyedState.snapshot_failed`, so
its keys are written again by the next snapshot: the chain never has a hole.
Snapshots begun before the failure was handed back (a timed-out checkpoint and
the next one in flight together) carry the failed delta's keys too: the writer
keeps them until a delta holding them is written.

Chunks are MessagePack (language neutral: the Java runtime reads the same bytes).
"""

from __future__ import annotations

import gc
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

from checkpoint._errors import CheckpointCorrupt, IncompatibleState
from checkpoint._manifest import ChunkRef

__all__ = [
    "DEFAULT_MAX_PARALLELISM",
    "CompactionPolicy",
    "KeyGroupRange",
    "KeyedState",
    "StateHandle",
    "StateSnapshot",
    "key_group_of",
    "partition_of",
]

DEFAULT_MAX_PARALLELISM = 128
_CHUNK_FORMAT = 1
_MISSING: Any = object()


class _ChunkStore(Protocol):
    """The part of `CheckpointStore` the state backend needs."""

    def put_chunk(self, data: bytes) -> ChunkRef: ...

    def get_chunk(self, ref: ChunkRef) -> bytes: ...


def key_group_of(key: str, max_parallelism: int = DEFAULT_MAX_PARALLELISM) -> int:
    """Key group of `key`: stable across processes and languages (CRC-32 of UTF-8)."""
    return zlib.crc32(key.encode()) % max_parallelism


def partition_of(
    key: str, parallelism: int, max_parallelism: int = DEFAULT_MAX_PARALLELISM
) -> int:
    """Index of the task (out of `parallelism`) that owns `key`."""
    return key_group_of(key, max_parallelism) * parallelism // max_parallelism


@dataclass(frozen=True)
class KeyGroupRange:
    """Half-open range ``[start, end)`` of key groups owned by one task."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"invalid key group range [{self.start}, {self.end})")

    @classmethod
    def for_task(
        cls, index: int, parallelism: int, max_parallelism: int = DEFAULT_MAX_PARALLELISM
    ) -> KeyGroupRange:
        """The range task `index` of `parallelism` owns; consistent with `partition_of`."""
        if not 0 <= index < parallelism <= max_parallelism:
            raise ValueError(
                f"task index {index} / parallelism {parallelism} / "
                f"max parallelism {max_parallelism} are inconsistent"
            )
        # Smallest kg with kg * p // maxp >= index, i.e. ceil(index * maxp / p).
        start = -(-index * max_parallelism // parallelism)
        end = -(-(index + 1) * max_parallelism // parallelism)
        return cls(start, end)

    def __contains__(self, key_group: object) -> bool:
        return isinstance(key_group, int) and self.start <= key_group < self.end

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))


@dataclass(frozen=True)
class CompactionPolicy:
    """When to fold the delta chain into a new base.

    `every_deltas`: at most this many deltas follow a base. `max_delta_ratio`:
    compact early once the deltas together are this many times larger than the
    base (a hot state that rewrites most keys gains nothing from deltas).
    """

    every_deltas: int = 10
    max_delta_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.every_deltas < 1:
            raise ValueError(f"every_deltas must be >= 1, got {self.every_deltas}")
        if self.max_delta_ratio <= 0:
            raise ValueError(f"max_delta_ratio must be > 0, got {self.max_delta_ratio}")

    def should_compact(self, n_deltas: int, delta_bytes: int, base_bytes: int) -> bool:
        """Pure decision: compact now?"""
        if n_deltas == 0:
            return False
        if n_deltas >= self.every_deltas:
            return True
        return base_bytes > 0 and delta_bytes > self.max_delta_ratio * base_bytes


@dataclass(frozen=True)
class StateHandle:
    """What a manifest records for one task's keyed state: chunks plus metadata.

    `chunks` lists the base chunks (one per non-empty key group) then the deltas
    in the order they apply.
    """

    chunks: tuple[ChunkRef, ...]
    metadata: Mapping[str, Any]

    @property
    def base_count(self) -> int:
        return int(self.metadata.get("base_chunks", 0))


@dataclass
class _Chain:
    """The chunks that make up the latest written state (owned by the writer thread)."""

    base: list[ChunkRef] = field(default_factory=list)
    deltas: list[ChunkRef] = field(default_factory=list)

    @property
    def base_bytes(self) -> int:
        return sum(r.size for r in self.base)

    @property
    def delta_bytes(self) -> int:
        return sum(r.size for r in self.deltas)


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _unpack(data: bytes, what: str) -> Any:
    # Unpacking millions of small objects triggers the cyclic GC over and over;
    # nothing here can form a cycle, so pause it.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise CheckpointCorrupt(what, f"state chunk does not decode: {e}") from e
    finally:
        if enabled:
            gc.enable()


def _check_header(doc: Any, what: str, expected_type: str) -> None:
    if not isinstance(doc, dict) or doc.get("t") != expected_type:
        raise CheckpointCorrupt(what, f"not a {expected_type!r} state chunk")
    if doc.get("v") != _CHUNK_FORMAT:
        raise IncompatibleState(what, int(doc.get("v", -1)), _CHUNK_FORMAT)


class StateSnapshot:
    """The background half of a snapshot: serialize and write one delta.

    Instances are produced by `KeyedState.begin_snapshot` and must be written in
    the order they were produced (one writer thread per task).
    """

    def __init__(
        self,
        owner: KeyedState,
        checkpoint_id: int,
        changed: dict[str, Any],
        deleted: set[str],
        total_keys: int,
    ) -> None:
        self._owner = owner
        self.checkpoint_id = checkpoint_id
        self.changed = changed
        self.deleted = deleted
        self.total_keys = total_keys

    @property
    def changed_keys(self) -> int:
        return len(self.changed) + len(self.deleted)

    def write(self, store: _ChunkStore) -> StateHandle:
        """Write the delta (and maybe a compacted base); return the handle for the manifest.

        Raises whatever the store raises (`StoreWriteError` ...): the caller must
        then call `KeyedState.snapshot_failed(self)`.
        """
        return self._owner._write(self, store)


class KeyedState:
    """A key -> value map owned by one task, with incremental snapshots.

    Not thread safe for mutation: the task's processing thread owns it. Only
    `StateSnapshot.write` runs elsewhere, and it touches the chain, never the map.
    """

    def __init__(
        self,
        key_groups: KeyGroupRange | None = None,
        *,
        max_parallelism: int = DEFAULT_MAX_PARALLELISM,
        compaction: CompactionPolicy | None = None,
    ) -> None:
        self.max_parallelism = max_parallelism
        self.key_groups = key_groups or KeyGroupRange(0, max_parallelism)
        self.compaction = compaction or CompactionPolicy()
        self._values: dict[str, Any] = {}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._chain = _Chain()
        self._chain_lock = threading.Lock()
        self._force_base = False
        # (changed, deleted) of deltas that failed to write, carried into the next
        # written delta; guarded by _chain_lock.
        self._unwritten: tuple[dict[str, Any], set[str]] | None = None

    # -- map operations (hot path: keep them tiny) ---------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self._values[key] = value
        self._dirty.add(key)

    def delete(self, key: str) -> None:
        if self._values.pop(key, _MISSING) is not _MISSING:
            self._dirty.discard(key)
            self._deleted.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def items(self) -> Iterable[tuple[str, Any]]:
        return self._values.items()

    def owns(self, key: str) -> bool:
        """Whether `key` falls in this task's key groups (a routing sanity check)."""
        return key_group_of(key, self.max_parallelism) in self.key_groups

    # -- snapshots ------------------------------------------------------------------

    def begin_snapshot(self, checkpoint_id: int) -> StateSnapshot:
        """Synchronous half of a snapshot, O(changed keys). See the module docstring."""
        values = self._values
        changed = {k: values[k] for k in self._dirty}
        # A key deleted then put again in this interval is in both sets; it is not deleted.
        deleted = {k for k in self._deleted if k not in values}
        self._dirty = set()
        self._deleted = set()
        return StateSnapshot(self, checkpoint_id, changed, deleted, len(values))

    def begin_detached_snapshot(
        self,
        checkpoint_id: int,
        changed: Mapping[str, Any],
        deleted: Iterable[str],
        total_keys: int,
    ) -> StateSnapshot:
        """`begin_snapshot` for state held elsewhere (a Java actor, an external store).

        The caller tracks what changed since its previous snapshot and gives it here;
        the chain, compaction and chunk format are the same as for in-process state,
        so either side can read the checkpoint. A failed write needs no
        `snapshot_failed`: the next write carries the lost delta.
        """
        return StateSnapshot(self, checkpoint_id, dict(changed), set(deleted), total_keys)

    def restore_detached(
        self, store: _ChunkStore, handles: Sequence[StateHandle]
    ) -> tuple[dict[str, Any], bool]:
        """`restore` for state held elsewhere: returns ``(values, needs_full)``.

        The values are handed to the caller (who loads them where the state lives) and
        not kept here. ``needs_full`` is True when the restore starts a new chain (other
        key groups, several handles): the caller's next detached snapshot must then give
        every key as changed, not only those changed since.
        """
        self.restore(store, handles)
        values, self._values = self._values, {}
        needs_full = bool(self._dirty)
        self._dirty = set()
        return values, needs_full

    def snapshot_failed(self, snap: StateSnapshot) -> None:
        """Give the keys of a delta that was not written back to the next snapshot."""
        for key in snap.changed:
            if key in self._values:
                self._dirty.add(key)
            else:
                self._deleted.add(key)
        for key in snap.deleted:
            if key in self._values:
                self._dirty.add(key)
            else:
                self._deleted.add(key)

    def _write(self, snap: StateSnapshot, store: _ChunkStore) -> StateHandle:
        with self._chain_lock:
            changed, deleted = snap.changed, snap.deleted
            if self._unwritten is not None:
                # An earlier delta failed; this snapshot may have begun before its keys
                # were handed back. Its own entries are newer and win.
                lost_changed, lost_deleted = self._unwritten
                changed = {
                    **{k: v for k, v in lost_changed.items() if k not in snap.deleted},
                    **snap.changed,
                }
                deleted = (lost_deleted - snap.changed.keys()) | snap.deleted
            try:
                # Encoding belongs inside: a value that does not encode (an int past
                # 64 bits) fails this delta like a full disk does, and its keys must
                # reach the next one, not vanish from the chain.
                delta = _pack(
                    {
                        "t": "delta",
                        "v": _CHUNK_FORMAT,
                        "ckpt": snap.checkpoint_id,
                        "set": changed,
                        "del": sorted(deleted),
                    }
                )
                ref = store.put_chunk(delta)
                chain = self._chain
                new_deltas = [*chain.deltas, ref]
                compact = self._force_base or self.compaction.should_compact(
                    len(new_deltas), chain.delta_bytes + ref.size, chain.base_bytes
                )
                if compact:
                    base = self._compact(store, chain.base, new_deltas)
            except BaseException:
                self._unwritten = (changed, deleted)
                raise
            self._unwritten = None
            if compact:
                self._chain = _Chain(base=base, deltas=[])
                self._force_base = False
            else:
                self._chain = _Chain(base=list(chain.base), deltas=new_deltas)
            return self._handle(snap.total_keys, snap.checkpoint_id)

    def _handle(self, total_keys: int, checkpoint_id: int) -> StateHandle:
        chain = self._chain
        return StateHandle(
            chunks=(*chain.base, *chain.deltas),
            metadata={
                "kind": "keyed",
                "format": _CHUNK_FORMAT,
                "key_groups": [self.key_groups.start, self.key_groups.end],
                "max_parallelism": self.max_parallelism,
                "base_chunks": len(chain.base),
                "delta_chunks": len(chain.deltas),
                "keys": total_keys,
                "checkpoint_id": checkpoint_id,
            },
        )

    def _compact(
        self, store: _ChunkStore, base: Sequence[ChunkRef], deltas: Sequence[ChunkRef]
    ) -> list[ChunkRef]:
        """Fold base + deltas (read back from the store) into one chunk per key group."""
        by_group: dict[int, dict[str, Any]] = {}
        for ref in base:
            doc = _unpack(store.get_chunk(ref), ref.digest)
            _check_header(doc, ref.digest, "base")
            by_group[int(doc["kg"])] = doc["entries"]
        maxp = self.max_parallelism
        for ref in deltas:
            doc = _unpack(store.get_chunk(ref), ref.digest)
            _check_header(doc, ref.digest, "delta")
            for key, value in doc["set"].items():
                by_group.setdefault(key_group_of(key, maxp), {})[key] = value
            for key in doc["del"]:
                by_group.get(key_group_of(key, maxp), {}).pop(key, None)
        refs = []
        for kg in sorted(by_group):
            entries = by_group[kg]
            if entries:
                refs.append(
                    store.put_chunk(_pack({"t": "base", "v": _CHUNK_FORMAT, "kg": kg,
                                           "entries": entries}))
                )
        return refs

    # -- restore --------------------------------------------------------------------

    def restore(self, store: _ChunkStore, handles: Sequence[StateHandle]) -> None:
        """Replace the contents with the state recorded in `handles`.

        Several handles (from tasks of an older, different parallelism) may be
        given: only the keys of this task's key groups are kept. Restoring from
        exactly one handle of the same range continues its delta chain; any other
        restore writes a fresh base at the next snapshot.
        Raises `CheckpointCorrupt` when a chunk does not verify or decode.
        """
        values: dict[str, Any] = {}
        maxp = self.max_parallelism
        mine = self.key_groups
        for handle in handles:
            handle_maxp = int(handle.metadata.get("max_parallelism", maxp))
            if handle_maxp != maxp:
                raise IncompatibleState("keyed state max_parallelism", handle_maxp, maxp)
            nbase = handle.base_count
            for i, ref in enumerate(handle.chunks):
                doc = _unpack(store.get_chunk(ref), ref.digest)
                if i < nbase:
                    _check_header(doc, ref.digest, "base")
                    if int(doc["kg"]) in mine:
                        values.update(doc["entries"])
                else:
                    _check_header(doc, ref.digest, "delta")
                    for key, value in doc["set"].items():
                        if key_group_of(key, maxp) in mine:
                            values[key] = value
                    for key in doc["del"]:
                        values.pop(key, None)
        self._values = values
        self._dirty = set()
        self._deleted = set()
        same_range = len(handles) == 1 and list(handles[0].metadata.get("key_groups", [])) == [
            mine.start,
            mine.end,
        ]
        with self._chain_lock:
            self._unwritten = None
            if same_range:
                h = handles[0]
                self._chain = _Chain(
                    base=list(h.chunks[: h.base_count]), deltas=list(h.chunks[h.base_count :])
                )
                self._force_base = False
            else:
                self._chain = _Chain()
                self._force_base = True
                # Every key must reach the new base: mark all of them dirty.
                self._dirty = set(values)

    def reset(self) -> None:
        """Empty state, empty chain (a task started without a checkpoint)."""
        self._values = {}
        self._dirty = set()
        self._deleted = set()
        with self._chain_lock:
            self._chain = _Chain()
            self._force_base = False
            self._unwritten = None
