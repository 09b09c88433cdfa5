"""A standby site's side of replication: checkpoints applied whole, fenced, durable.

The standby mirrors what the active site does to its own outputs, checkpoint by
checkpoint:

* the chunks of a checkpoint arrive first (each verified against its sha256, then put
  into this site's store); then `apply_epoch` with the manifest:
* it checks the fence (a site that took over, or saw a newer epoch, refuses an older
  one) and that it stands at the checkpoint the new one follows (`base`), rewinding
  what it applied after `base` if the active site restored from there;
* it stages each sink's rows (the segments the manifest names) as the active site
  pre-committed them, writes the bytes appended to side files since `base` (verified
  by CRC-32), and writes the manifest last: a manifest here always comes with its
  chunks, its rows and its side files;
* `commit` makes a checkpoint's rows visible once the active site committed it; a
  whole copy (`bootstrap`) replaces everything when the standby cannot catch up
  checkpoint by checkpoint.

Nothing received is unpickled: chunks are bytes, segments MessagePack of plain values,
manifests canonical JSON with their own checksum.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from checkpoint import (
    CheckpointError,
    CheckpointStore,
    ChunkRef,
    FencedOut,
    Manifest,
    SQLiteTwoPhaseSink,
    apply_retention,
    chunk_ref_of,
    plan_retention,
)
from resilience._errors import ReplicationError
from resilience._runtime._side_file import SIDE_FILES_KEY
from resilience._runtime._sink_operator import REPLICA_SEGMENTS_KEY, decode_segment

__all__ = ["Applier", "FileSegmentIn", "Refused", "StandbyStatus", "manifest_checksum",
           "side_file_marks"]

_KEEP = 3


class Refused(ReplicationError):
    """The standby refused an operation; `reason` starts with a kind: fenced, gap, corrupt,
    unknown."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[type[Refused], tuple[str]]:
        return (type(self), (self.reason,))


def manifest_checksum(manifest: Manifest) -> str:
    """What the checkpoint registry records for a manifest (its bytes' sha256)."""
    return chunk_ref_of(manifest.to_bytes()).digest


def side_file_marks(manifest: Manifest) -> dict[str, dict[str, int]]:
    """Every side file of a checkpoint with its mark (size and CRC-32), by name."""
    out: dict[str, dict[str, int]] = {}
    for task in manifest.tasks.values():
        files = task.metadata.get("op", {}).get(SIDE_FILES_KEY) or {}
        for name, mark in files.items():
            out[str(name)] = {"bytes": int(mark["bytes"]), "crc32": int(mark.get("crc32", 0))}
    return out


@dataclass(frozen=True)
class FileSegmentIn:
    """Bytes appended to side file `name` since the base checkpoint, held as blob `digest`."""

    name: str
    offset: int
    size: int
    digest: str
    crc32_after: int


@dataclass
class StandbyStatus:
    """What this standby holds (persisted in ``WORKDIR/.resilience/replica.json``)."""

    site: str
    applied_through: int = 0
    applied_epoch: int = 0  # the fencing epoch of the reign it came from
    applied_watermark: int = 0
    applied_at: float = 0.0
    fence: int = 0  # the newest fencing epoch seen
    committed_through: int = 0
    committed_checksum: str = ""
    bootstraps: int = 0
    applied: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class Applier:
    """Applies checkpoints shipped by the active site to this site's store, sinks and files.

    `sinks` maps the task id of each two-phase-commit task to its sink here. Thread safe:
    one operation at a time.
    """

    def __init__(self, *, job_id: str, site: str, workdir: Path, store: CheckpointStore,
                 sinks: Mapping[str, SQLiteTwoPhaseSink]) -> None:
        self.job_id = job_id
        self.site = site
        self.workdir = Path(workdir)
        self.store = store
        self.sinks = dict(sinks)
        self._lock = threading.RLock()
        self._state_path = self.workdir / ".resilience" / "replica.json"
        self.incoming = self.workdir / ".resilience" / "replica-incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        for stale in self.incoming.iterdir():  # blobs of a shipment that never applied
            with contextlib.suppress(OSError):
                stale.unlink()
        self.status = self._load()
        self._refresh_committed()
        # (task, checkpoint) -> digest of the segment staged for it: a snapshot names every
        # segment not committed yet, and one staged already need not be staged again.
        self._staged: dict[tuple[str, int], str] = {}

    # -- state --------------------------------------------------------------------------

    def _load(self) -> StandbyStatus:
        status = StandbyStatus(self.site)
        with contextlib.suppress(OSError, ValueError, TypeError):
            doc = json.loads(self._state_path.read_text())
            for key in ("applied_through", "applied_epoch", "applied_watermark", "fence",
                        "bootstraps"):
                setattr(status, key, int(doc.get(key, 0)))
            status.applied_at = float(doc.get("applied_at", 0.0))
        for sink in self.sinks.values():  # a sink's own record is the authority on epochs
            status.fence = max(status.fence, sink.fencing_epoch())
        return status

    def _save(self) -> None:
        doc = {k: v for k, v in asdict(self.status).items() if k not in ("refused",)}
        tmp = self._state_path.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_path)

    def _refresh_committed(self) -> None:
        committed = min((s.last_committed() for s in self.sinks.values()), default=0)
        checksum = ""
        if committed:
            with contextlib.suppress(CheckpointError):
                checksum = manifest_checksum(self.store.get_manifest(committed))
        self.status.committed_through = committed
        self.status.committed_checksum = checksum

    def view(self) -> StandbyStatus:
        with self._lock:
            self._refresh_committed()
            return StandbyStatus(**asdict(self.status))

    def _refuse(self, reason: str) -> Refused:
        kind = reason.split(":", 1)[0]
        self.status.refused[kind] = self.status.refused.get(kind, 0) + 1
        return Refused(reason)

    def _check_fence(self, epoch: int) -> None:
        if epoch < self.status.fence:
            raise self._refuse(f"fenced: epoch {epoch} is older than epoch {self.status.fence} "
                               f"seen at site {self.site}")
        if epoch > self.status.fence:
            self.status.fence = epoch
            self._save()

    def fence(self, epoch: int) -> None:
        """This site leads now under `epoch`: refuse anything an older reign ships."""
        with self._lock:
            if epoch > self.status.fence:
                self.status.fence = epoch
                self._save()

    # -- blobs --------------------------------------------------------------------------

    def missing(self, digests: Iterable[str], sizes: Mapping[str, int] | None = None
                ) -> list[str]:
        """The chunk digests this site's store lacks."""
        out = []
        for digest in digests:
            try:
                ref = ChunkRef(digest, int((sizes or {}).get(digest, 0)))
            except ValueError:
                out.append(digest)
                continue
            if not self.store.has_chunk(ref):
                out.append(digest)
        return out

    def put_blob(self, digest: str, size: int, data: bytes, *, transient: bool) -> None:
        """Store one received blob after checking it is what it claims; raises `Refused`."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if len(data) != size or actual != digest:
            raise self._refuse(f"corrupt: blob {digest[:19]}... arrived as {len(data)} bytes "
                               f"with digest {actual[:19]}...")
        if transient:
            path = self._blob_path(digest)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            self.store.put_chunk(data)

    def _blob_path(self, digest: str) -> Path:
        try:
            ref = ChunkRef(digest, 0)
        except ValueError:
            raise self._refuse(f"corrupt: {digest!r} is not a digest") from None
        return self.incoming / ref.hex

    def _take_blob(self, digest: str, size: int) -> bytes:
        path = self._blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise self._refuse(f"gap: blob {digest[:19]}... was not received") from None
        if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise self._refuse(f"corrupt: blob {digest[:19]}... changed on this site's disk")
        return data

    def _drop_blob(self, digest: str) -> None:
        with contextlib.suppress(OSError, Refused):
            self._blob_path(digest).unlink()

    # -- checkpoints --------------------------------------------------------------------

    def _manifest(self, data: bytes, checkpoint_id: int) -> Manifest:
        try:
            manifest = Manifest.from_bytes(data, source=f"shipment of checkpoint {checkpoint_id}",
                                           expected_job_id=self.job_id)
        except CheckpointError as e:
            raise self._refuse(f"corrupt: {e}") from e
        if manifest.checkpoint_id != checkpoint_id:
            raise self._refuse(f"corrupt: the manifest is of checkpoint "
                               f"{manifest.checkpoint_id}, not {checkpoint_id}")
        absent = [ref.digest for ref in manifest.chunk_refs() if not self.store.has_chunk(ref)]
        if absent:
            raise self._refuse(f"gap: {len(absent)} chunks of checkpoint {checkpoint_id} "
                               "were not received")
        return manifest

    def apply_epoch(self, *, epoch: int, checkpoint_id: int, base: int, manifest_bytes: bytes,
                    complete: bool, watermark: int, files: Sequence[FileSegmentIn]
                    ) -> StandbyStatus:
        """Apply checkpoint `checkpoint_id` whole on top of `base`; raises `Refused`."""
        with self._lock:
            self._check_fence(epoch)
            manifest = self._manifest(manifest_bytes, checkpoint_id)
            self._refresh_committed()
            committed = self.status.committed_through
            if base < committed:
                raise self._refuse(f"gap: checkpoint {checkpoint_id} follows {base}, but this "
                                   f"site already committed {committed}")
            base_marks: dict[str, dict[str, int]] = {}
            if base:
                try:
                    base_marks = side_file_marks(self.store.get_manifest(base))
                except CheckpointError:
                    raise self._refuse(f"gap: checkpoint {checkpoint_id} follows {base}, which "
                                       "this site does not hold") from None
            if self.status.applied_through != base or self.status.applied_epoch != epoch:
                # The active site restored from `base`, or a new reign begins there: what
                # this site holds after `base` (another reign's tail, its own included) goes.
                self._rewind(base, base_marks, epoch)
            marks = side_file_marks(manifest)
            blobs = self._check_files(files, base_marks, marks)
            self._stage_segments(manifest, epoch)
            self._write_files(files, blobs)
            self._settle_files(marks)
            self.store.put_manifest(manifest)
            if complete:
                self._commit_sinks(checkpoint_id, epoch, watermark)
            self.status.applied_through = checkpoint_id
            self.status.applied_epoch = epoch
            self.status.applied_watermark = watermark
            self.status.applied_at = time.time()
            self.status.applied += 1
            self._save()
            for segment in files:
                self._drop_blob(segment.digest)
            self._retain()
            self._refresh_committed()
            return StandbyStatus(**asdict(self.status))

    def _rewind(self, base: int, base_marks: Mapping[str, Mapping[str, int]], epoch: int) -> None:
        """Undo what was applied after `base` (the active site restored from there)."""
        self._staged = {k: v for k, v in self._staged.items() if k[1] <= base}
        for sink in self.sinks.values():
            try:
                sink.recover(base, epoch, self._watermark_of(base))
            except FencedOut as e:
                raise self._refuse(f"fenced: {e}") from e
        for name, mark in base_marks.items():
            path = self.workdir / name
            if path.exists():
                with open(path, "r+b") as f:
                    f.truncate(int(mark["bytes"]))
                    os.fsync(f.fileno())
        for checkpoint_id in self.store.list_checkpoints():
            if checkpoint_id > base:
                with contextlib.suppress(CheckpointError):
                    self.store.delete_manifest(checkpoint_id)
        self.status.applied_through = base

    def _watermark_of(self, checkpoint_id: int) -> int:
        if not checkpoint_id:
            return 0
        with contextlib.suppress(CheckpointError):
            manifest = self.store.get_manifest(checkpoint_id)
            for task in manifest.tasks.values():
                op = task.metadata.get("op", {})
                if "watermark" in op:
                    return int(op["watermark"])
        return 0

    def _check_files(self, files: Sequence[FileSegmentIn], base_marks: Mapping[str, Any],
                     marks: Mapping[str, Mapping[str, int]]) -> dict[str, bytes]:
        blobs = {}
        named = {f.name for f in files}
        for name, mark in marks.items():
            grew = mark["bytes"] != int(base_marks.get(name, {}).get("bytes", 0))
            if grew and name not in named:
                raise self._refuse(f"gap: side file {name} grew but its bytes were not sent")
        for segment in files:
            if segment.name not in marks:
                raise self._refuse(f"corrupt: side file {segment.name!r} is not in the manifest")
            if Path(segment.name).is_absolute() or ".." in Path(segment.name).parts:
                raise self._refuse(f"corrupt: side file name {segment.name!r}")
            start = int(base_marks.get(segment.name, {}).get("bytes", 0))
            crc = int(base_marks.get(segment.name, {}).get("crc32", 0))
            mark = marks[segment.name]
            if segment.offset != start or segment.offset + segment.size != mark["bytes"]:
                raise self._refuse(f"gap: side file {segment.name} bytes "
                                   f"[{segment.offset}, {segment.offset + segment.size}) do not "
                                   f"join [{start}, {mark['bytes']})")
            data = self._take_blob(segment.digest, segment.size)
            if zlib.crc32(data, crc) != mark["crc32"] or segment.crc32_after != mark["crc32"]:
                raise self._refuse(f"corrupt: side file {segment.name} does not match its "
                                   "CRC-32 at this checkpoint")
            blobs[segment.digest] = data
        return blobs

    def _write_files(self, files: Sequence[FileSegmentIn], blobs: Mapping[str, bytes]) -> None:
        for segment in files:
            path = self.workdir / segment.name
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "r+b" if path.exists() else "w+b") as f:
                f.truncate(segment.offset)
                f.seek(segment.offset)
                f.write(blobs[segment.digest])
                f.flush()
                os.fsync(f.fileno())

    def _settle_files(self, marks: Mapping[str, Mapping[str, int]]) -> None:
        """Every side file exactly as long as the checkpoint says (bytes past it belonged
        to a checkpoint that was never complete)."""
        for name, mark in marks.items():
            path = self.workdir / name
            size = path.stat().st_size if path.exists() else 0
            if size < mark["bytes"]:
                raise self._refuse(f"gap: side file {name} holds {size} bytes, the checkpoint "
                                   f"{mark['bytes']}")
            if size > mark["bytes"]:
                with open(path, "r+b") as f:
                    f.truncate(mark["bytes"])
                    os.fsync(f.fileno())

    def _stage_segments(self, manifest: Manifest, epoch: int) -> None:
        for task_id, task in manifest.tasks.items():
            declared = task.metadata.get("op", {}).get(REPLICA_SEGMENTS_KEY)
            if declared is None:
                continue
            sink = self.sinks.get(task_id)
            if sink is None:
                raise self._refuse(f"corrupt: task {task_id} has sink rows but no sink here")
            if len(declared) != len(task.chunks):
                raise self._refuse(f"corrupt: task {task_id} names {len(declared)} segments "
                                   f"and {len(task.chunks)} chunks")
            committed = sink.last_committed()
            for key in [k for k in self._staged if k[0] == task_id and k[1] <= committed]:
                del self._staged[key]
            for checkpoint_id, ref in zip(declared, task.chunks, strict=True):
                if int(checkpoint_id) <= committed or \
                        self._staged.get((task_id, int(checkpoint_id))) == ref.digest:
                    continue
                try:
                    found, rows = decode_segment(self.store.get_chunk(ref))
                except (CheckpointError, ValueError) as e:
                    raise self._refuse(f"corrupt: a segment of task {task_id}: {e}") from e
                if found != int(checkpoint_id):
                    raise self._refuse(f"corrupt: segment of checkpoint {found} listed as "
                                       f"{checkpoint_id}")
                try:
                    sink.stage_replica(found, rows, epoch)
                except FencedOut as e:
                    raise self._refuse(f"fenced: {e}") from e
                self._staged[(task_id, found)] = ref.digest

    def _commit_sinks(self, checkpoint_id: int, epoch: int, watermark: int) -> None:
        for sink in self.sinks.values():
            try:
                sink.commit(checkpoint_id, epoch, watermark)
            except FencedOut as e:
                raise self._refuse(f"fenced: {e}") from e

    def commit(self, *, epoch: int, checkpoint_id: int, watermark: int) -> StandbyStatus:
        """The active site committed `checkpoint_id`: make its rows visible here too."""
        with self._lock:
            self._check_fence(epoch)
            self._refresh_committed()
            if checkpoint_id <= self.status.committed_through:
                return StandbyStatus(**asdict(self.status))  # committed already
            if checkpoint_id > self.status.applied_through:
                raise self._refuse(f"gap: commit of checkpoint {checkpoint_id}, but this site "
                                   f"applied only up to {self.status.applied_through}")
            self._commit_sinks(checkpoint_id, epoch, watermark)
            self._retain()
            self._refresh_committed()
            return StandbyStatus(**asdict(self.status))

    def bootstrap(self, *, epoch: int, checkpoint_id: int, manifest_bytes: bytes, watermark: int,
                  sink_copies: Mapping[str, tuple[str, int]], files: Sequence[FileSegmentIn]
                  ) -> StandbyStatus:
        """Replace everything with a whole copy as of complete checkpoint `checkpoint_id`.

        `sink_copies` maps each sink's task id to the blob (digest, size) of its database.
        """
        with self._lock:
            self._check_fence(epoch)
            manifest = self._manifest(manifest_bytes, checkpoint_id)
            if set(sink_copies) != set(self.sinks):
                raise self._refuse(f"corrupt: copies of sinks {sorted(sink_copies)}, this site "
                                   f"has {sorted(self.sinks)}")
            marks = side_file_marks(manifest)
            blobs = self._check_files(files, {}, marks)
            copies = {}
            for task_id, (digest, size) in sink_copies.items():
                self._take_blob(digest, size)  # verified
                copies[task_id] = self._blob_path(digest)
            self._staged = {}
            for task_id, path in copies.items():
                try:
                    self.sinks[task_id].import_copy(path, epoch)
                except FencedOut as e:
                    raise self._refuse(f"fenced: {e}") from e
            self._write_files(files, blobs)
            self._settle_files(marks)
            for other in self.store.list_checkpoints():
                if other != checkpoint_id:
                    with contextlib.suppress(CheckpointError):
                        self.store.delete_manifest(other)
            with contextlib.suppress(CheckpointError):
                self.store.delete_manifest(checkpoint_id)  # another reign's, same id
            self.store.put_manifest(manifest)
            self.status.applied_through = checkpoint_id
            self.status.applied_epoch = epoch
            self.status.applied_watermark = watermark
            self.status.applied_at = time.time()
            self.status.bootstraps += 1
            self._save()
            for digest, _ in sink_copies.values():
                self._drop_blob(digest)
            for segment in files:
                self._drop_blob(segment.digest)
            self._refresh_committed()
            return StandbyStatus(**asdict(self.status))

    def _retain(self) -> None:
        """Keep the newest applied checkpoints and the one the sinks last committed."""
        try:
            ids = self.store.list_checkpoints()
            if len(ids) <= _KEEP:
                return
            manifests = []
            for checkpoint_id in ids:
                with contextlib.suppress(CheckpointError):
                    manifests.append(self.store.get_manifest(checkpoint_id))
            committed = min((s.last_committed() for s in self.sinks.values()), default=0)
            plan = plan_retention(manifests, _KEEP, pinned=[committed])
            apply_retention(self.store, plan)
        except (CheckpointError, OSError, ValueError):
            return  # retention is housekeeping: the next apply tries again
