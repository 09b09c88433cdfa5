"""The model registry on a real etcd and a real store: publication, fenced alias moves,
their history, and the refusals that move nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoint import FencedOut, FileSystemStore
from resilience import EtcdClient, LeaderElection, Leadership, ModelRefused, WeightsCorrupt
from resilience.models import (
    AliasMove,
    ModelRegistry,
    ModelVersion,
    load_weights,
    weights_digest,
)

pytestmark = pytest.mark.etcd


@pytest.fixture
def job(etcd_client: EtcdClient) -> Iterator[str]:
    job_id = f"models-{uuid.uuid4().hex[:10]}"
    yield job_id
    etcd_client.delete_prefix(f"/resilience/jobs/{job_id}/")


def _lead(client: EtcdClient, job: str, holder: str = "a") -> Leadership:
    return LeaderElection(client, f"jobs/{job}", holder, ttl_s=5).campaign(timeout_s=10)


def _publish(registry: ModelRegistry, leadership: Leadership, store: FileSystemStore,
             model: str, version: int, weights: bytes, parent: int | None = None) -> ModelVersion:
    chunk = store.put_chunk(weights)
    v = ModelVersion(model=model, version=version, parent=parent, checkpoint_id=version,
                     position={"line": 1000 * version}, created_at=float(version),
                     digest=weights_digest(weights),
                     chunk={"digest": chunk.digest, "size": chunk.size},
                     trained_labels=100 * version, epoch=leadership.epoch)
    leadership.fenced_txn(puts=registry.publication_puts([v]))
    return v


def _move(model: str, alias: str, frm: int | None, to: int, n: int, epoch: int) -> AliasMove:
    return AliasMove(move_id=f"j-{n:08d}", model=model, alias=alias, from_version=frm,
                     to_version=to, at=100.0 + n, by="job", why=f"move {n}", epoch=epoch,
                     checkpoint_id=n, evidence={"window": n})


def test_versions_and_moves_make_a_history_that_answers_what_served_when(
        etcd_client: EtcdClient, job: str, tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "store", job_id=job)
    registry = ModelRegistry(etcd_client, job)
    with _lead(etcd_client, job) as leadership:
        for v in (1, 2, 3):
            _publish(registry, leadership, store, "fraud", v, f"w{v}".encode(),
                     parent=v - 1 or None)
        assert registry.apply_move(leadership, _move("fraud", "serving", None, 1, 1,
                                                     leadership.epoch), store=store)
        assert registry.apply_move(leadership, _move("fraud", "serving", 1, 2, 2,
                                                     leadership.epoch), store=store)
        assert registry.apply_move(leadership, _move("fraud", "serving", 2, 3, 3,
                                                     leadership.epoch), store=store)
        # A replay after a restore decides move 3 again: applied once.
        assert not registry.apply_move(leadership, _move("fraud", "serving", 2, 3, 3,
                                                         leadership.epoch), store=store)
        rollback = _move("fraud", "serving", 3, 2, 4, leadership.epoch)
        assert registry.apply_move(leadership, rollback, store=store,
                                   mark_bad={3: {"why": "log-loss regression"}})
    assert [v.version for v in registry.versions("fraud")] == [1, 2, 3]
    assert registry.aliases("fraud")["serving"].version == 2
    assert registry.bad("fraud")[3]["why"] == "log-loss regression"
    history = registry.history("fraud")
    assert [(m.from_version, m.to_version) for m in history] == [(None, 1), (1, 2), (2, 3),
                                                                 (3, 2)]
    assert registry.serving_at("fraud", 99.0) is None
    assert registry.serving_at("fraud", 102.5) == 2
    assert registry.serving_at("fraud", 103.5) == 3
    assert registry.serving_at("fraud", 1e12) == 2
    assert registry.models() == ["fraud"]


def test_a_deposed_leader_moves_nothing_and_publishes_nothing(
        etcd_client: EtcdClient, job: str, tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "store", job_id=job)
    registry = ModelRegistry(etcd_client, job)
    old = _lead(etcd_client, job, "a")
    _publish(registry, old, store, "fraud", 1, b"w1")
    old_epoch = old.epoch
    # Site b (or a restarted coordinator) takes over: the lease of the old reign is gone.
    etcd_client.revoke_lease(old.lease_id)
    with _lead(etcd_client, job, "b") as new:
        assert new.epoch > old_epoch
        with pytest.raises(FencedOut):
            registry.apply_move(old, _move("fraud", "serving", None, 1, 1, old_epoch))
        with pytest.raises(FencedOut):
            _publish(registry, old, store, "fraud", 2, b"w2")
        assert registry.aliases("fraud") == {}
        assert [v.version for v in registry.versions("fraud")] == [1]
        assert registry.apply_move(new, _move("fraud", "serving", None, 1, 1, new.epoch))
    assert registry.history("fraud")[0].epoch > old_epoch


def test_an_operator_rollback_is_refused_with_one_line_when_it_cannot_serve(
        etcd_client: EtcdClient, job: str, tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "store", job_id=job)
    registry = ModelRegistry(etcd_client, job)
    with _lead(etcd_client, job) as leadership:
        _publish(registry, leadership, store, "fraud", 1, b"fraud-1")
        _publish(registry, leadership, store, "fraud", 2, b"fraud-2", parent=1)
        _publish(registry, leadership, store, "limits", 7, b"limits-7")
        registry.apply_move(leadership, _move("fraud", "serving", None, 2, 1, leadership.epoch))
        registry.apply_move(leadership, _move("fraud", "last_good", None, 1, 2,
                                              leadership.epoch))
        registry.apply_move(leadership, _move("fraud", "serving", 2, 1, 3, leadership.epoch),
                            mark_bad={2: {"why": "rolled back"}})
    before = (registry.aliases("fraud"), registry.history("fraud"))

    def refused(version: int) -> str:
        with pytest.raises(ModelRefused) as info:
            registry.operator_move("fraud", "serving", version, why="test", by="operator:t",
                                   store=store)
        text = str(info.value)
        assert "\n" not in text
        assert "nothing was moved" in text
        return text

    assert "has no version 9" in refused(9)
    assert "version 7 exists for limits" in refused(7)
    assert "marked bad" in refused(2)
    assert "positive integer" in refused(0)
    assert (registry.aliases("fraud"), registry.history("fraud")) == before

    # Weights that no longer match their digest never serve either.
    v1 = registry.version("fraud", 1)
    assert v1 is not None
    chunk_path = next(p for p in (tmp_path / "store").rglob("*") if p.is_file()
                      and p.read_bytes() == b"fraud-1")
    chunk_path.chmod(0o644)
    chunk_path.write_bytes(b"fraud-X")
    with pytest.raises(WeightsCorrupt):
        load_weights(store, v1)
    with pytest.raises(ModelRefused, match="its weights"):
        registry.operator_move("fraud", "last_good", 1, why="test", by="operator:t",
                               store=store)
    assert (registry.aliases("fraud"), registry.history("fraud")) == before


def test_an_operator_move_carries_the_current_epoch_and_the_job_does_not_undo_it(
        etcd_client: EtcdClient, job: str, tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "store", job_id=job)
    registry = ModelRegistry(etcd_client, job)
    with _lead(etcd_client, job) as leadership:
        _publish(registry, leadership, store, "fraud", 1, b"w1")
        _publish(registry, leadership, store, "fraud", 2, b"w2", parent=1)
        registry.apply_move(leadership, _move("fraud", "serving", None, 2, 1, leadership.epoch))
        move = registry.operator_move("fraud", "serving", 1, why="bad scores seen by ops",
                                      by="operator:alice", store=store)
        assert move.epoch == leadership.epoch
        assert move.from_version == 2
        # The job, unaware, still believes serving names 2 and decides 2 -> 3: the alias no
        # longer names 2, so its move is not applied and the operator's stands.
        _publish(registry, leadership, store, "fraud", 3, b"w3", parent=2)
        assert not registry.apply_move(leadership, _move("fraud", "serving", 2, 3, 2,
                                                         leadership.epoch))
    assert registry.aliases("fraud")["serving"].version == 1
    assert [m.by for m in registry.history("fraud")] == ["job", "operator:alice"]


def test_publishing_a_version_again_keeps_the_first_record(
        etcd_client: EtcdClient, job: str, tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "store", job_id=job)
    registry = ModelRegistry(etcd_client, job)
    with _lead(etcd_client, job) as leadership:
        first = _publish(registry, leadership, store, "fraud", 1, b"w1")
        again = ModelVersion(**{**first.__dict__, "created_at": 99.0})
        assert registry.publication_puts([again]) == {}
    assert registry.version("fraud", 1) == first
