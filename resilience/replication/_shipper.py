"""The active site's end of the replication link: ships every checkpoint to the standby.

The job's coordinator owns a `Shipper` (a thread of its process) and tells it what
happens: a checkpoint completed (`completed`), committed (`committed`), the job
restored (`restored`), retention ran (`forget`). The shipper keeps the standby a
faithful copy, one checkpoint epoch at a time:

1. on (re)connecting it asks the standby what it holds (`Handshake`) and decides with
   `plan_catch_up`: checkpoint by checkpoint from there, or a whole copy (`Bootstrap`:
   the sinks' databases, the newest checkpoint they committed, the side files);
2. for each checkpoint: the chunks the standby lacks (`HasChunks`, then `PutChunks` in
   frames, each blob verified there and sent again if refused), the bytes appended to
   side files since the previous checkpoint (checked against their CRC-32 here first),
   then `ApplyEpoch` with the manifest; the standby answers once it is durable;
3. `Commit` once the checkpoint committed here, so the standby's rows become visible.

The coordinator learns of every acknowledgement (`on_ack`) and, in sync mode, commits a
checkpoint only after it. The link never blocks the coordinator: everything here runs
on the shipper's thread, and a standby that does not answer is retried with backoff.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from checkpoint import CheckpointError, CheckpointStore, ChunkRef, Manifest
from resilience.replication import replica_link_pb2 as pb
from resilience.replication import replica_link_pb2_grpc as pb_grpc
from resilience.replication._applier import manifest_checksum, side_file_marks
from resilience.replication._config import ReplicationConfig
from resilience.replication._policy import (
    Bootstrap,
    ChainEntry,
    Incremental,
    StandbyView,
    plan_catch_up,
)
from resilience.replication._receiver import GRPC_OPTIONS
from resilience.replication._tls import channel_credentials

__all__ = ["FRAME_BYTES", "Shipment", "Shipper"]

log = logging.getLogger(__name__)

FRAME_BYTES = 1 << 20
_SEND_ATTEMPTS = 3
_CALL_TIMEOUT_S = 30.0
_CONNECT_TIMEOUT_S = 2.0
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class Shipment:
    """One checkpoint to ship: its manifest, the checkpoint it follows, whether complete."""

    checkpoint_id: int
    manifest: Manifest
    watermark: int
    base: int
    complete: bool
    created_at: float


@dataclass
class _Link:
    channel: grpc.Channel
    stub: Any
    standby: StandbyView
    at: int  # the checkpoint the standby stands at, in this site's chain
    committed_sent: int = 0


@dataclass
class ShipperStatus:
    connected: bool = False
    standby_applied: int = 0
    standby_committed: int = 0
    acked_through: int = 0
    last_error: str | None = None
    down_since: float | None = None
    bootstraps: int = 0
    shipped: int = 0
    bytes_sent: int = 0
    refused_blobs: int = 0
    last_ack_at: float | None = None
    last_ship_s: dict[str, float] = field(default_factory=dict)  # chunks, files, apply
    events: list[dict[str, Any]] = field(default_factory=list)


class Shipper:
    """Ships the checkpoints of this (active) site to its standby. See the module doc.

    `export_copies(directory)` asks the job's sinks for whole copies of their databases
    (for a bootstrap) and returns ``{task_id: path}``; `on_ack(checkpoint_id)` is called
    on this shipper's thread whenever the standby holds every checkpoint up to it.
    """

    def __init__(self, *, config: ReplicationConfig, job_id: str, epoch: int,
                 store: CheckpointStore, workdir: Path,
                 export_copies: Callable[[Path], Mapping[str, Path]],
                 on_ack: Callable[[int], None],
                 on_event: Callable[[str, str], None] = lambda kind, message: None,
                 chain: list[tuple[Manifest, int]] | None = None, chain_starts_the_job: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.job_id = job_id
        self.epoch = epoch
        self.store = store
        self.workdir = Path(workdir)
        self.export_copies = export_copies
        self.on_ack = on_ack
        self.on_event = on_event
        self.clock = clock
        self.status = ShipperStatus()
        self._cond = threading.Condition()
        self._stop = False
        # Complete checkpoints still in the store, oldest first: (manifest, watermark).
        self._chain: list[tuple[Manifest, int]] = list(chain or [])
        self._chain_starts_the_job = chain_starts_the_job
        self._pending: list[Shipment] = []  # completed, not committed yet (sync mode)
        self._committed: int = self._chain[-1][0].checkpoint_id if self._chain else 0
        self._committed_watermark: int = self._chain[-1][1] if self._chain else 0
        self._tip = self._committed  # what the next completed checkpoint follows
        self._acked_watermark = 0  # the watermark of the newest checkpoint acknowledged
        self._bootstrapping = False
        self._link: _Link | None = None
        self._token = config.security.token()
        self._thread = threading.Thread(target=self._run, name="replication-shipper",
                                        daemon=True)
        self._thread.start()

    # -- told by the coordinator (any thread) -------------------------------------------

    def completed(self, checkpoint_id: int, manifest: Manifest, watermark: int) -> None:
        """Checkpoint `checkpoint_id` completed here (sync: not committed yet)."""
        with self._cond:
            self._pending.append(Shipment(checkpoint_id, manifest, watermark, self._tip,
                                          False, time.time()))
            self._tip = checkpoint_id
            self._cond.notify_all()

    def committed(self, checkpoint_id: int, manifest: Manifest, watermark: int) -> None:
        """Checkpoint `checkpoint_id` is complete and committed here."""
        with self._cond:
            self._pending = [p for p in self._pending if p.checkpoint_id > checkpoint_id]
            if not self._chain or self._chain[-1][0].checkpoint_id < checkpoint_id:
                self._chain.append((manifest, watermark))
            self._committed = max(self._committed, checkpoint_id)
            self._committed_watermark = max(self._committed_watermark, watermark)
            self._tip = max(self._tip, checkpoint_id)
            self._cond.notify_all()

    def restored(self, checkpoint_id: int) -> None:
        """The job restored from complete checkpoint `checkpoint_id`: what was completed
        but not committed since will never commit."""
        with self._cond:
            self._pending = []
            self._tip = max(checkpoint_id, self._committed)
            self._cond.notify_all()

    def forget(self, deleted: set[int]) -> None:
        """Retention deleted these checkpoints from the store."""
        with self._cond:
            self._chain = [(m, w) for m, w in self._chain if m.checkpoint_id not in deleted]
            self._chain_starts_the_job = self._chain_starts_the_job and not deleted

    def pinned(self) -> set[int]:
        """Checkpoints retention must keep: those the standby still needs (at most
        `max_backlog`; a standby further behind gets a whole copy)."""
        with self._cond:
            if self._bootstrapping:
                return {m.checkpoint_id for m, _ in self._chain}
            link = self._link
            standby = link.at if link is not None else self.status.standby_committed
            needed = [m.checkpoint_id for m, _ in self._chain if m.checkpoint_id >= standby]
            return set(needed[-self.config.max_backlog:])

    def lag(self) -> dict[str, Any]:
        """How far the standby is behind what committed here (the live RPO): checkpoints,
        input lines, and the age of the oldest committed checkpoint it lacks. None until
        the standby has answered in this reign (its position is unknown)."""
        with self._cond:
            if self.status.last_ack_at is None:
                return {"checkpoints": None, "events": None, "seconds": None}
            acked = self.status.acked_through
            behind = [(m, w) for m, w in self._chain if m.checkpoint_id > acked]
            oldest = behind[0][0].created_at if behind else None
            acked_watermark = next((w for m, w in reversed(self._chain)
                                    if m.checkpoint_id <= acked), self._acked_watermark)
            return {
                "checkpoints": len(behind),
                "events": max(self._committed_watermark - acked_watermark, 0),
                "seconds": round(time.time() - oldest, 3) if oldest else 0.0,
            }

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        self._close_link()

    # -- the shipper's thread -------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.2
        while True:
            with self._cond:
                if self._stop:
                    return
            try:
                if self._link is None:
                    self._connect()
                    backoff = 0.2
                if not self._step():
                    with self._cond:
                        if not self._stop:
                            self._cond.wait(0.5)
            except _Retry as e:
                self._lost(str(e))
                self._sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except grpc.RpcError as e:
                self._lost(_rpc_text(e))
                self._sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as e:
                log.exception("replication shipper failed")
                self._lost(f"{type(e).__name__}: {e}")
                self._sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            if not self._stop:
                self._cond.wait(seconds)

    def _lost(self, why: str) -> None:
        was_connected = self.status.connected
        self._close_link()
        self.status.connected = False
        self.status.last_error = why
        if self.status.down_since is None:
            self.status.down_since = time.time()
        if was_connected:
            self.on_event("standby_lost", f"standby {self.config.peer} unreachable: {why}")

    def _close_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(Exception):
                link.channel.close()

    def _sender(self) -> pb.Sender:
        return pb.Sender(job_id=self.job_id, site=self.config.site, fencing_epoch=self.epoch)

    def _connect(self) -> None:
        creds = grpc.composite_channel_credentials(
            channel_credentials(self.config.security),
            grpc.access_token_call_credentials(self._token))
        channel = grpc.secure_channel(self.config.peer_address, creds, options=[
            *GRPC_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500)])
        stub = pb_grpc.ReplicaLinkStub(channel)  # type: ignore[no-untyped-call]
        try:
            state = stub.Handshake(pb.HandshakeRequest(sender=self._sender(),
                                                       standby_site=self.config.peer),
                                   timeout=_CONNECT_TIMEOUT_S)
        except grpc.RpcError:
            channel.close()
            raise
        view = StandbyView(state.committed_through, state.committed_checksum,
                           state.applied_through)
        self._link = _Link(channel, stub, view, at=-1)
        self.status.connected = True
        self.status.down_since = None
        self.status.last_error = None
        self.status.standby_applied = state.applied_through
        self.status.standby_committed = state.committed_through
        self.on_event("standby_connected", f"standby {self.config.peer} connected: committed "
                      f"{state.committed_through}, applied {state.applied_through}")

    def _step(self) -> bool:
        """Ship the next thing the standby needs; False when there is nothing to do."""
        link = self._link
        assert link is not None
        if link.at < 0:
            with self._cond:
                chain = [ChainEntry(m.checkpoint_id, manifest_checksum(m)) for m, _ in self._chain]
                starts = self._chain_starts_the_job
            plan = plan_catch_up(link.standby, chain, chain_starts_the_job=starts)
            if isinstance(plan, Bootstrap):
                self.on_event("bootstrap", f"standby {self.config.peer} gets a whole copy: "
                              f"{plan.why}")
                self._bootstrap(link)
            else:
                assert isinstance(plan, Incremental)
                link.at = plan.base
            return True
        with self._cond:
            shipment = self._next_after(link.at)
            committed, committed_watermark = self._committed, self._committed_watermark
        # Commits first: a standby kept busy with new checkpoints must still make the
        # committed ones visible (and keep its staging small).
        if committed > link.committed_sent and link.at >= committed:
            ack = link.stub.Commit(pb.CommitRequest(sender=self._sender(),
                                                    checkpoint_id=committed,
                                                    watermark=committed_watermark),
                                   timeout=_CALL_TIMEOUT_S)
            link.committed_sent = committed
            self.status.standby_committed = ack.committed_through
            return True
        if shipment is not None:
            self._ship(link, shipment)
            return True
        return False

    def _next_after(self, at: int) -> Shipment | None:
        """The first checkpoint after `at`: complete ones first, then pending ones."""
        previous = at
        for manifest, watermark in self._chain:
            if manifest.checkpoint_id > at:
                return Shipment(manifest.checkpoint_id, manifest, watermark, previous, True,
                                manifest.created_at)
        for pending in self._pending:
            if pending.checkpoint_id > at:
                return Shipment(pending.checkpoint_id, pending.manifest, pending.watermark,
                                pending.base if pending.base >= at else at, False,
                                pending.created_at)
        return None

    def _ship(self, link: _Link, shipment: Shipment) -> None:
        manifest = shipment.manifest
        t0 = time.monotonic()
        self._send_chunks(link, manifest)
        t1 = time.monotonic()
        files = self._side_file_segments(link, shipment)
        request = pb.EpochRequest(
            sender=self._sender(), checkpoint_id=shipment.checkpoint_id, base=shipment.base,
            manifest=manifest.to_bytes(), complete=shipment.complete,
            watermark=shipment.watermark, files=files, created_at=shipment.created_at)
        t2 = time.monotonic()
        try:
            ack = link.stub.ApplyEpoch(request, timeout=_CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION and _rpc_text(e).startswith("gap"):
                link.at = -1  # ask again where the standby stands
                link.standby = StandbyView(link.standby.committed_through,
                                           link.standby.committed_checksum, -1)
                raise _Retry(f"the standby is not where it was: {_rpc_text(e)}") from e
            raise
        t3 = time.monotonic()
        self.status.last_ship_s = {"chunks": round(t1 - t0, 4), "files": round(t2 - t1, 4),
                                   "apply": round(t3 - t2, 4)}
        link.at = shipment.checkpoint_id
        if shipment.complete:
            link.committed_sent = max(link.committed_sent, shipment.checkpoint_id)
        self.status.shipped += 1
        self.status.standby_applied = ack.state.applied_through
        self.status.standby_committed = ack.state.committed_through
        self.status.acked_through = shipment.checkpoint_id
        self.status.last_ack_at = time.time()
        self._acked_watermark = max(self._acked_watermark, shipment.watermark)
        self.on_ack(shipment.checkpoint_id)

    # -- blobs ------------------------------------------------------------------------------

    def _send_chunks(self, link: _Link, manifest: Manifest) -> None:
        refs = {ref.digest: ref for ref in manifest.chunk_refs()}
        if not refs:
            return
        reply = link.stub.HasChunks(pb.HasChunksRequest(sender=self._sender(),
                                                        digests=sorted(refs)),
                                    timeout=_CALL_TIMEOUT_S)
        blobs: dict[str, bytes] = {}
        for digest in reply.missing:
            ref = refs.get(digest)
            if ref is None:
                continue
            try:
                blobs[digest] = self.store.get_chunk(ref)
            except CheckpointError as e:
                raise _Retry(f"chunk {digest[:19]}... of checkpoint {manifest.checkpoint_id} "
                             f"cannot be read here: {e}") from e
        self._send_blobs(link, blobs, transient=False)

    def _send_blobs(self, link: _Link, blobs: Mapping[str, bytes], *, transient: bool) -> None:
        left = dict(blobs)
        for _attempt in range(_SEND_ATTEMPTS):
            if not left:
                return
            ack = link.stub.PutChunks(self._frames(left, transient), timeout=_CALL_TIMEOUT_S)
            for verdict in ack.verdicts:
                if verdict.stored:
                    self.status.bytes_sent += len(left.pop(verdict.digest, b""))
                else:
                    self.status.refused_blobs += 1
                    self.on_event("blob_refused", f"the standby refused blob "
                                  f"{verdict.digest[:19]}...: {verdict.refused}; sending again")
        if left:
            raise _Retry(f"{len(left)} blobs refused {_SEND_ATTEMPTS} times by the standby")

    def _frames(self, blobs: Mapping[str, bytes], transient: bool) -> Iterator[pb.ChunkFrame]:
        sender = self._sender()
        for digest, data in blobs.items():
            for frame in self.frames_of(digest, data):
                frame.sender.CopyFrom(sender)
                frame.transient = transient
                yield frame

    def frames_of(self, digest: str, data: bytes) -> Iterator[pb.ChunkFrame]:
        """The frames one blob travels in (at most `FRAME_BYTES` of data each)."""
        offset = 0
        while True:
            part = data[offset:offset + FRAME_BYTES]
            last = offset + len(part) >= len(data)
            yield pb.ChunkFrame(digest=digest, size=len(data), offset=offset, data=part,
                                last=last)
            offset += len(part)
            if last:
                return

    def _side_file_segments(self, link: _Link, shipment: Shipment) -> list[pb.FileSegment]:
        marks = side_file_marks(shipment.manifest)
        if not marks:
            return []
        base_marks: dict[str, dict[str, int]] = {}
        if shipment.base:
            try:
                base_marks = side_file_marks(self.store.get_manifest(shipment.base))
            except CheckpointError as e:
                raise _Retry(f"checkpoint {shipment.base} is gone here: {e}") from e
        segments, blobs = [], {}
        for name, mark in sorted(marks.items()):
            start = base_marks.get(name, {"bytes": 0, "crc32": 0})
            size = mark["bytes"] - start["bytes"]
            if size == 0:
                continue
            data = _read_range(self.workdir / name, start["bytes"], size)
            if len(data) != size or zlib.crc32(data, start["crc32"]) != mark["crc32"]:
                # A restore is rewriting the file: ship this checkpoint again later.
                raise _Retry(f"side file {name} does not match checkpoint "
                             f"{shipment.checkpoint_id} here (being rewritten?)")
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            blobs[digest] = data
            segments.append(pb.FileSegment(name=name, offset=start["bytes"], size=size,
                                           digest=digest, crc32_after=mark["crc32"]))
        self._send_blobs(link, blobs, transient=True)
        return segments

    # -- whole copies ------------------------------------------------------------------------

    def _bootstrap(self, link: _Link) -> None:
        with self._cond:
            self._bootstrapping = True
        try:
            directory = self.workdir / ".resilience" / "replica-outgoing"
            copies = self.export_copies(directory)
            progress = [_read_progress(path) for path in copies.values()]
            checkpoint_id = min(p[0] for p in progress)
            watermark = min(p[1] for p in progress)
            try:
                manifest = self.store.get_manifest(checkpoint_id)
            except CheckpointError as e:
                raise _Retry(f"checkpoint {checkpoint_id}, which the sinks last committed, "
                             f"is not in the store: {e}") from e
            self._send_chunks(link, manifest)
            blobs, sinks = {}, []
            for task_id, path in copies.items():
                data = path.read_bytes()
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                blobs[digest] = data
                sinks.append(pb.SinkCopy(sink=task_id, digest=digest, size=len(data)))
            files = []
            for name, mark in sorted(side_file_marks(manifest).items()):
                if mark["bytes"] == 0:
                    continue
                data = _read_range(self.workdir / name, 0, mark["bytes"])
                if zlib.crc32(data) != mark["crc32"]:
                    raise _Retry(f"side file {name} does not match checkpoint {checkpoint_id}")
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                blobs[digest] = data
                files.append(pb.FileSegment(name=name, offset=0, size=len(data), digest=digest,
                                            crc32_after=mark["crc32"]))
            self._send_blobs(link, blobs, transient=True)
            ack = link.stub.Bootstrap(pb.BootstrapRequest(
                sender=self._sender(), checkpoint_id=checkpoint_id,
                manifest=manifest.to_bytes(), watermark=watermark, sinks=sinks, files=files),
                timeout=_CALL_TIMEOUT_S * 4)
            for path in copies.values():
                with contextlib.suppress(OSError):
                    path.unlink()
            link.at = checkpoint_id
            link.committed_sent = checkpoint_id
            self.status.bootstraps += 1
            self.status.standby_applied = ack.state.applied_through
            self.status.standby_committed = ack.state.committed_through
            self.status.acked_through = checkpoint_id
            self.status.last_ack_at = time.time()
            self._acked_watermark = max(self._acked_watermark, watermark)
            self.on_event("bootstrapped", f"standby {self.config.peer} holds a whole copy as of "
                          f"checkpoint {checkpoint_id}")
            self.on_ack(checkpoint_id)
        finally:
            with self._cond:
                self._bootstrapping = False


class _Retry(Exception):
    """Something the next attempt may cure: reconnect, ask the standby again, resend."""


def _rpc_text(error: grpc.RpcError) -> str:
    details = error.details() if callable(getattr(error, "details", None)) else ""
    code = error.code() if callable(getattr(error, "code", None)) else None
    first = (details or "").splitlines()[0][:300] if details else ""
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return first
    return f"{getattr(code, 'name', code)}: {first}" if first else str(getattr(code, "name", code))


def _read_range(path: Path, offset: int, size: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    except OSError:
        return b""


def _read_progress(path: Path) -> tuple[int, int]:
    from checkpoint import SQLiteTwoPhaseSink

    progress = SQLiteTwoPhaseSink.read_progress(path)
    return progress.last_committed, progress.watermark


# Used by tests to reach the chunk type without importing the checkpoint package.
_ = ChunkRef
