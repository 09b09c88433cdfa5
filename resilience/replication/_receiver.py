"""The standby's end of the replication link: a gRPC server in front of the `Applier`.

(The servicer's methods carry the names of the service's RPCs, as gRPC requires.)

`ReplicaReceiver` is a Ray actor of each site of a multi-site job (created by the
driver next to the pipeline, named ``<job>/replica``). It serves the `ReplicaLink`
service on the site's `listen` address with mutual TLS and the deployment token, and
answers the site's own coordinator over Ray: `fence(epoch)` when the site takes over
(a deposed site's late shipment is refused from then on), `status()` for the standby's
progress.

Chunks arrive as frames; a blob whose frames come out of order, or whose bytes do not
match their digest, is refused (the sender sends it again). Errors of the applier go
back as ``FAILED_PRECONDITION`` with the refusal's reason.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import asdict
from typing import Any

import grpc

from checkpoint import store_from_uri
from resilience._errors import UserError
from resilience._runtime._operator import OperatorContext
from resilience._runtime._spec import PipelineSpec
from resilience.replication import replica_link_pb2 as pb
from resilience.replication import replica_link_pb2_grpc as pb_grpc
from resilience.replication._applier import Applier, FileSegmentIn, Refused, StandbyStatus
from resilience.replication._tls import TokenCheck, server_credentials

__all__ = ["MAX_MESSAGE", "ReplicaReceiver", "open_replica_sinks", "state_message"]

log = logging.getLogger(__name__)

MAX_MESSAGE = 8 * 1024 * 1024
GRPC_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE)]


def state_message(status: StandbyStatus) -> pb.StandbyState:
    return pb.StandbyState(
        site=status.site, applied_through=status.applied_through,
        committed_through=status.committed_through,
        committed_checksum=status.committed_checksum, highest_epoch_seen=status.fence,
        applied_at=status.applied_at, applied_watermark=status.applied_watermark,
        bootstraps=status.bootstraps)


def open_replica_sinks(spec: PipelineSpec) -> dict[str, Any]:
    """The sink of every two-phase-commit task of `spec`, opened on this site's workdir
    the way the task itself opens it (the stage's own factory)."""
    sinks = {}
    for task in spec.task_specs():
        if not task.commits:
            continue
        operator = task.factory()
        operator.open(OperatorContext(job_id=spec.job_id, task_id=task.task_id,
                                      index=task.index, parallelism=task.parallelism,
                                      workdir=spec.workdir, replicated=True))
        sink = getattr(operator, "sink", None)
        if sink is None:
            raise UserError(f"stage {task.stage}: a replicated job's committing stages must "
                            "be SinkOperators")
        sinks[task.task_id] = sink
    return sinks


class _Servicer(pb_grpc.ReplicaLinkServicer):
    def __init__(self, applier: Applier, job_id: str, site: str) -> None:
        self.applier = applier
        self.job_id = job_id
        self.site = site

    def _check(self, sender: pb.Sender, context: grpc.ServicerContext) -> None:
        if sender.job_id != self.job_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"this receiver replicates job {self.job_id}, not {sender.job_id!r}")

    def _refused(self, context: grpc.ServicerContext, error: Refused) -> Any:
        log.warning("site %s refused: %s", self.site, error.reason)
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, error.reason)

    def Handshake(  # noqa: N802 - the RPC's name
        self, request: pb.HandshakeRequest, context: grpc.ServicerContext) -> Any:
        self._check(request.sender, context)
        if request.standby_site and request.standby_site != self.site:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"this is site {self.site}, not {request.standby_site}")
        return state_message(self.applier.view())

    def Status(  # noqa: N802 - the RPC's name
        self, request: pb.StatusRequest, context: grpc.ServicerContext) -> Any:
        self._check(request.sender, context)
        return state_message(self.applier.view())

    def HasChunks(  # noqa: N802 - the RPC's name
        self, request: pb.HasChunksRequest, context: grpc.ServicerContext) -> Any:
        self._check(request.sender, context)
        return pb.HasChunksReply(missing=self.applier.missing(request.digests))

    def PutChunks(  # noqa: N802 - the RPC's name
        self, frames: Iterator[pb.ChunkFrame], context: grpc.ServicerContext) -> Any:
        verdicts = []
        current: pb.ChunkFrame | None = None
        parts: list[bytes] = []
        received = 0
        broken = ""
        for frame in frames:
            self._check(frame.sender, context)
            if current is None or frame.digest != current.digest:
                if current is not None:  # the previous blob ended without its last frame
                    verdicts.append(pb.ChunkVerdict(digest=current.digest, stored=False,
                                                    refused="corrupt: truncated"))
                current, parts, received, broken = frame, [], 0, ""
            if frame.offset != received and not broken:
                broken = (f"corrupt: frame at offset {frame.offset}, expected {received} "
                          "(out of order)")
            parts.append(frame.data)
            received += len(frame.data)
            if frame.last:
                verdict = pb.ChunkVerdict(digest=frame.digest, stored=False, refused=broken)
                if not broken:
                    try:
                        self.applier.put_blob(frame.digest, frame.size, b"".join(parts),
                                              transient=frame.transient)
                        verdict.stored = True
                    except Refused as e:
                        verdict.refused = e.reason
                if verdict.refused:
                    log.warning("site %s refused a blob: %s", self.site, verdict.refused)
                verdicts.append(verdict)
                current, parts, received, broken = None, [], 0, ""
        if current is not None:
            verdicts.append(pb.ChunkVerdict(digest=current.digest, stored=False,
                                            refused="corrupt: truncated"))
        return pb.ChunksAck(verdicts=verdicts)

    def ApplyEpoch(  # noqa: N802 - the RPC's name
        self, request: pb.EpochRequest, context: grpc.ServicerContext) -> Any:
        self._check(request.sender, context)
        files = [FileSegmentIn(f.name, f.offset, f.size, f.digest, f.crc32_after)
                 for f in request.files]
        try:
            status = self.applier.apply_epoch(
                epoch=request.sender.fencing_epoch, checkpoint_id=request.checkpoint_id,
                base=request.base, manifest_bytes=request.manifest, complete=request.complete,
                watermark=request.watermark, files=files)
        except Refused as e:
            return self._refused(context, e)
        return pb.EpochAck(checkpoint_id=request.checkpoint_id, applied=True,
                           state=state_message(status))

    def Commit(  # noqa: N802 - the RPC's name
        self, request: pb.CommitRequest, context: grpc.ServicerContext) -> Any:
        self._check(request.sender, context)
        try:
            status = self.applier.commit(epoch=request.sender.fencing_epoch,
                                         checkpoint_id=request.checkpoint_id,
                                         watermark=request.watermark)
        except Refused as e:
            return self._refused(context, e)
        return pb.CommitAck(committed_through=status.committed_through)

    def Bootstrap(  # noqa: N802 - the RPC's name
        self, request: pb.BootstrapRequest, context: grpc.ServicerContext) -> Any:
        self._check(request.sender, context)
        files = [FileSegmentIn(f.name, f.offset, f.size, f.digest, f.crc32_after)
                 for f in request.files]
        try:
            status = self.applier.bootstrap(
                epoch=request.sender.fencing_epoch, checkpoint_id=request.checkpoint_id,
                manifest_bytes=request.manifest, watermark=request.watermark,
                sink_copies={c.sink: (c.digest, c.size) for c in request.sinks}, files=files)
        except Refused as e:
            return self._refused(context, e)
        return pb.EpochAck(checkpoint_id=request.checkpoint_id, applied=True,
                           state=state_message(status))


class ReplicaReceiver:
    """Ray actor (threaded, `max_restarts=-1`): this site's receiver. See the module doc."""

    def __init__(self, spec: PipelineSpec) -> None:
        config = spec.replication
        if config is None:
            raise UserError("a replica receiver needs a replicated PipelineSpec")
        self.spec = spec
        self.config = config
        store = store_from_uri(spec.store_uri, job_id=spec.job_id)
        self.applier = Applier(job_id=spec.job_id, site=config.site, workdir=spec.workdir,
                               store=store, sinks=open_replica_sinks(spec))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8,
                                                             thread_name_prefix="replica"),
                                  interceptors=[TokenCheck(config.security.token())],
                                  options=GRPC_OPTIONS)
        pb_grpc.add_ReplicaLinkServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self.applier, spec.job_id, config.site), self.server)
        self.port = self.server.add_secure_port(config.listen,
                                                server_credentials(config.security))
        if self.port == 0:
            raise UserError(f"site {config.site}: cannot listen on {config.listen} for "
                            "replication (address in use?)")
        self.server.start()
        self._stopped = threading.Event()

    def ready(self) -> int:
        return int(self.port)

    def fence(self, epoch: int) -> dict[str, Any]:
        """This site leads the job under `epoch` now: refuse every older reign's shipment."""
        self.applier.fence(epoch)
        return asdict(self.applier.view())

    def status(self) -> dict[str, Any]:
        return asdict(self.applier.view())

    def stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self.server.stop(grace=1.0).wait(5)
