"""The replication link on real gRPC with mutual TLS, between an active site's `Shipper`
and a standby's receiver (`Applier` behind the `ReplicaLink` servicer), in one process.

The active side runs the product's own pieces by hand: a replicated `SinkOperator`
(its row segments), a `SideFile` (dead letters), a real store. The standby must end
with the same ledger rows, the same side file and the same fingerprints, whatever the
link does: refused blobs are sent again, a deposed site is fenced, a diverged standby
gets a whole copy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from checkpoint import FileSystemStore, Manifest, SQLiteTwoPhaseSink, TaskSnapshot
from resilience.pipeline import OperatorContext, SideFile, SinkOperator
from resilience.replication import LinkSecurity, ReplicationConfig, make_pki
from resilience.replication import replica_link_pb2 as pb
from resilience.replication import replica_link_pb2_grpc as pb_grpc
from resilience.replication._applier import Applier
from resilience.replication._receiver import GRPC_OPTIONS, _Servicer
from resilience.replication._shipper import Shipper
from resilience.replication._tls import TokenCheck, server_credentials
from resilience.testing import wait_until

JOB = "link-test"
COLUMNS = (("event", "TEXT"), ("account", "TEXT"), ("delta", "INTEGER"))


def make_sink(ctx: OperatorContext) -> SQLiteTwoPhaseSink:
    sink = SQLiteTwoPhaseSink(ctx.workdir / "ledger.sqlite", table="postings", columns=COLUMNS,
                              sink_id="ledger")
    sink.open()
    return sink


def sink_operator(workdir: Path) -> SinkOperator:
    op = SinkOperator(make_sink, name="ledger")
    op.open(OperatorContext(JOB, "sink-0", 0, 1, workdir, replicated=True))
    return op


@dataclass
class Active:
    """The active site's external effects, driven by hand as the runtime would."""

    workdir: Path
    epoch: int = 1
    store: FileSystemStore = field(init=False)
    sink: SinkOperator = field(init=False)
    dead: SideFile = field(init=False)
    next_ordinal: int = 1
    marks: dict[int, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store = FileSystemStore(self.workdir / "checkpoints", job_id=JOB)
        self.sink = sink_operator(self.workdir)
        self.dead = SideFile("dead_letter.jsonl")
        self.dead.open(self.workdir)

    def feed(self, n: int) -> None:
        rows = []
        for _ in range(n):
            o = self.next_ordinal
            self.next_ordinal += 1
            rows.append((o, f"tx-{o}", f"acc-{o % 7}", o % 13 - 6))
            if o % 5 == 0:
                self.dead.write(f'{{"line": {o}, "reason": "bad"}}\n'.encode())
        self.sink.process(0, rows)

    def checkpoint(self, checkpoint_id: int) -> Manifest:
        mark = self.dead.mark()
        self.marks[checkpoint_id] = mark
        written = self.sink.snapshot(checkpoint_id).write(self.store)
        manifest = Manifest(
            job_id=JOB, checkpoint_id=checkpoint_id, fencing_epoch=self.epoch, code_version="0",
            schema_version=1, created_at=time.time(), duration_s=0.01, tasks={
                "source-0": TaskSnapshot("source-0", "source", (), {"op": {
                    "watermark": self.next_ordinal, "side_files": {self.dead.name: mark}}}),
                "sink-0": TaskSnapshot("sink-0", "ledger", written.chunks,
                                       {"op": written.metadata}),
            })
        self.store.put_manifest(manifest)
        return manifest

    def commit(self, manifest: Manifest, shipper: Shipper) -> None:
        self.sink.checkpoint_complete(manifest.checkpoint_id, self.epoch, self.next_ordinal)
        shipper.committed(manifest.checkpoint_id, manifest, self.next_ordinal)

    def export_copies(self, directory: Path) -> dict[str, Path]:
        path = directory / "sink-0.sqlite"
        self.sink.export_copy(path)
        return {"sink-0": path}


@dataclass
class Standby:
    workdir: Path
    applier: Applier
    server: grpc.Server
    port: int
    sink: SinkOperator


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, LinkSecurity]:
    return make_pki(tmp_path / "pki", ["a", "b"])


def start_standby(workdir: Path, security: LinkSecurity) -> Standby:
    workdir.mkdir(parents=True, exist_ok=True)
    sink = sink_operator(workdir)
    applier = Applier(job_id=JOB, site="b", workdir=workdir,
                      store=FileSystemStore(workdir / "checkpoints", job_id=JOB),
                      sinks={"sink-0": sink.sink})  # type: ignore[dict-item]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         interceptors=[TokenCheck(security.token())], options=GRPC_OPTIONS)
    pb_grpc.add_ReplicaLinkServicer_to_server(_Servicer(applier, JOB, "b"), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(security))
    server.start()
    return Standby(workdir, applier, server, port, sink)


@pytest.fixture
def standby(tmp_path: Path, pki: dict[str, LinkSecurity]) -> Iterator[Standby]:
    b = start_standby(tmp_path / "b", pki["b"])
    yield b
    b.server.stop(0)


def shipper_for(active: Active, standby: Standby, security: LinkSecurity,
                cls: type[Shipper] = Shipper, **kwargs: Any) -> tuple[Shipper, list[int]]:
    acks: list[int] = []
    config = ReplicationConfig(site="a", peer="b", listen="127.0.0.1:1",
                               peer_address=f"127.0.0.1:{standby.port}", security=security)
    shipper = cls(config=config, job_id=JOB, epoch=active.epoch, store=active.store,
                  workdir=active.workdir, export_copies=active.export_copies,
                  on_ack=acks.append, chain_starts_the_job=kwargs.pop("starts", True),
                  **kwargs)
    return shipper, acks


def rows(path: Path) -> list[tuple[Any, ...]]:
    return list(SQLiteTwoPhaseSink(path, table="postings", columns=COLUMNS,
                                   sink_id="ledger").rows())


def assert_same(active: Active, standby: Standby) -> None:
    assert rows(active.workdir / "ledger.sqlite") == rows(standby.workdir / "ledger.sqlite")
    assert SQLiteTwoPhaseSink.fingerprint(active.workdir / "ledger.sqlite") == \
        SQLiteTwoPhaseSink.fingerprint(standby.workdir / "ledger.sqlite")
    assert (active.workdir / "dead_letter.jsonl").read_bytes() == \
        (standby.workdir / "dead_letter.jsonl").read_bytes()


def run_sync(active: Active, shipper: Shipper, acks: list[int], ids: range,
             *, never_complete: frozenset[int] = frozenset()) -> None:
    """Checkpoints in sync mode: each commits once the standby acknowledged it; those in
    `never_complete` are pre-committed and never complete (a later one commits them)."""
    for checkpoint_id in ids:
        active.feed(37)
        manifest = active.checkpoint(checkpoint_id)
        if checkpoint_id in never_complete:
            continue
        shipper.completed(checkpoint_id, manifest, active.next_ordinal)
        wait_until(lambda c=checkpoint_id: c in acks, timeout_s=30)  # type: ignore[misc]
        active.commit(manifest, shipper)


def test_checkpoints_cross_whole_and_the_standby_holds_the_same_output(
    tmp_path: Path, pki: dict[str, LinkSecurity], standby: Standby,
) -> None:
    active = Active(tmp_path / "a")
    shipper, acks = shipper_for(active, standby, pki["a"])
    try:
        run_sync(active, shipper, acks, range(1, 9), never_complete=frozenset({3, 6}))
        wait_until(lambda: standby.applier.view().committed_through == 8, timeout_s=30)
    finally:
        shipper.stop()
    assert_same(active, standby)
    # Checkpoints 3 and 6 never completed: their rows committed with 4 and 7, and the
    # standby staged them from the segments 4 and 7 named.
    assert len(rows(standby.workdir / "ledger.sqlite")) == 8 * 37
    assert standby.applier.store.list_checkpoints()[-1] == 8
    assert shipper.status.bytes_sent > 0
    assert shipper.status.refused_blobs == 0


def test_a_restore_on_the_active_site_rewinds_what_the_standby_applied_after_it(
    tmp_path: Path, pki: dict[str, LinkSecurity], standby: Standby,
) -> None:
    active = Active(tmp_path / "a")
    shipper, acks = shipper_for(active, standby, pki["a"])
    try:
        run_sync(active, shipper, acks, range(1, 4))
        active.feed(50)
        orphan = active.checkpoint(4)  # acknowledged by the standby, never complete here
        shipper.completed(4, orphan, active.next_ordinal)
        wait_until(lambda: 4 in acks, timeout_s=30)
        # The active site restores from checkpoint 3: rows after it are discarded, the
        # dead letters cut back, and the input replayed (here: other rows).
        active.sink.recover(3, active.epoch, 0)
        active.dead.restore(active.marks[3])
        active.next_ordinal = 3 * 37 + 1
        shipper.restored(3)
        run_sync(active, shipper, acks, range(5, 7))
        wait_until(lambda: standby.applier.view().committed_through == 6, timeout_s=30)
    finally:
        shipper.stop()
    assert_same(active, standby)
    assert 4 not in standby.applier.store.list_checkpoints()


class CorruptingShipper(Shipper):
    """Test-only: flips one byte of the first frame it sends, once (a corruption in
    flight that TLS would not see, as if the sender's memory were damaged)."""

    corrupted = 0

    def frames_of(self, digest: str, data: bytes) -> Iterator[pb.ChunkFrame]:
        for frame in super().frames_of(digest, data):
            if not self.corrupted and frame.data:
                self.corrupted += 1
                damaged = bytearray(frame.data)
                damaged[len(damaged) // 2] ^= 0x40
                frame.data = bytes(damaged)
            yield frame


def test_a_corrupted_chunk_is_refused_on_arrival_and_sent_again(
    tmp_path: Path, pki: dict[str, LinkSecurity], standby: Standby,
) -> None:
    active = Active(tmp_path / "a")
    shipper, acks = shipper_for(active, standby, pki["a"], cls=CorruptingShipper)
    try:
        run_sync(active, shipper, acks, range(1, 4))
        wait_until(lambda: standby.applier.view().committed_through == 3, timeout_s=30)
    finally:
        shipper.stop()
    assert shipper.corrupted == 1  # type: ignore[attr-defined]
    assert shipper.status.refused_blobs == 1
    assert standby.applier.view().refused == {"corrupt": 1}
    assert_same(active, standby)


def test_frames_out_of_order_are_refused(pki: dict[str, LinkSecurity],
                                         standby: Standby) -> None:
    data = b"x" * 1000
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    sender = pb.Sender(job_id=JOB, site="a", fencing_epoch=1)
    frames = [pb.ChunkFrame(sender=sender, digest=digest, size=1000, offset=600,
                            data=data[600:], last=False),
              pb.ChunkFrame(sender=sender, digest=digest, size=1000, offset=0,
                            data=data[:600], last=True)]
    with secure_channel(standby, pki["a"], token=pki["a"].token()) as channel:
        ack = pb_grpc.ReplicaLinkStub(channel).PutChunks(iter(frames), timeout=10)
    assert [v.stored for v in ack.verdicts] == [False]
    assert "out of order" in ack.verdicts[0].refused


def secure_channel(standby: Standby, security: LinkSecurity | None, *,
                   token: str | None, ca: Path | None = None) -> grpc.Channel:
    target = f"127.0.0.1:{standby.port}"
    if security is None:
        creds = grpc.ssl_channel_credentials((ca or Path()).read_bytes())
    else:
        creds = grpc.ssl_channel_credentials(security.ca.read_bytes(), security.key.read_bytes(),
                                             security.cert.read_bytes())
    if token is not None:
        creds = grpc.composite_channel_credentials(
            creds, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(target, creds)


def handshake(channel: grpc.Channel) -> pb.StandbyState:
    return pb_grpc.ReplicaLinkStub(channel).Handshake(
        pb.HandshakeRequest(sender=pb.Sender(job_id=JOB, site="a", fencing_epoch=1)), timeout=5)


def test_clients_without_the_deployments_certificate_or_token_are_refused(
    tmp_path: Path, pki: dict[str, LinkSecurity], standby: Standby,
) -> None:
    other = make_pki(tmp_path / "other-pki", ["a"])["a"]
    token = pki["a"].token()
    cases = {
        "no client certificate": (secure_channel(standby, None, token=token, ca=pki["a"].ca),
                                  grpc.StatusCode.UNAVAILABLE),
        "a certificate of another CA": (secure_channel(standby, other, token=token,
                                                       ca=pki["a"].ca),
                                        grpc.StatusCode.UNAVAILABLE),
        "no token": (secure_channel(standby, pki["a"], token=None),
                     grpc.StatusCode.UNAUTHENTICATED),
        "a wrong token": (secure_channel(standby, pki["a"], token="not-the-token"),
                          grpc.StatusCode.UNAUTHENTICATED),
        "plain text": (grpc.insecure_channel(f"127.0.0.1:{standby.port}"),
                       grpc.StatusCode.UNAVAILABLE),
    }
    for what, (channel, code) in cases.items():
        with channel, pytest.raises(grpc.RpcError) as refused:
            handshake(channel)
        assert refused.value.code() == code, what
    with secure_channel(standby, pki["a"], token=token) as channel:
        assert handshake(channel).site == "b"


def test_a_standby_fenced_by_a_newer_epoch_refuses_the_deposed_site(
    tmp_path: Path, pki: dict[str, LinkSecurity], standby: Standby,
) -> None:
    active = Active(tmp_path / "a")
    shipper, acks = shipper_for(active, standby, pki["a"])
    try:
        run_sync(active, shipper, acks, range(1, 3))
        standby.applier.fence(2)  # site b took over under epoch 2
        before = rows(standby.workdir / "ledger.sqlite")
        active.feed(10)
        manifest = active.checkpoint(3)
        shipper.completed(3, manifest, active.next_ordinal)
        wait_until(lambda: "fenced" in (shipper.status.last_error or ""), timeout_s=30)
    finally:
        shipper.stop()
    assert 3 not in acks
    assert rows(standby.workdir / "ledger.sqlite") == before
    assert 3 not in standby.applier.store.list_checkpoints()


def test_a_standby_that_committed_a_reign_of_its_own_gets_a_whole_copy(
    tmp_path: Path, pki: dict[str, LinkSecurity], standby: Standby,
) -> None:
    # The standby led once (async, say) and committed rows the active site never had.
    standby.sink.process(0, [(1, "tx-own", "acc-own", 99)])
    standby.sink.snapshot(1).write(standby.applier.store)
    standby.sink.checkpoint_complete(1, 1, 2)
    active = Active(tmp_path / "a", epoch=2)
    run_alone = []  # the active site's own checkpoints, committed while b was away
    for checkpoint_id in (1, 2):
        active.feed(20)
        run_alone.append(active.checkpoint(checkpoint_id))
        active.sink.checkpoint_complete(checkpoint_id, active.epoch, active.next_ordinal)
    shipper, acks = shipper_for(active, standby, pki["a"], starts=False,
                                chain=[(m, active.next_ordinal) for m in run_alone])
    try:
        wait_until(lambda: shipper.status.bootstraps == 1, timeout_s=30)
        run_sync(active, shipper, acks, range(3, 5))
        wait_until(lambda: standby.applier.view().committed_through == 4, timeout_s=30)
    finally:
        shipper.stop()
    assert_same(active, standby)
    assert ("tx-own",) not in {r[:1] for r in rows(standby.workdir / "ledger.sqlite")}
    assert standby.applier.view().bootstraps == 1
