"""The public surface, pinned: adding or removing a public name is a deliberate act."""

from __future__ import annotations

import importlib

import pytest

import checkpoint
import resilience

CHECKPOINT = {
    "BarrierAligner", "BarrierProtocolError", "CheckpointAborted", "CheckpointCompleted",
    "CheckpointConfig", "CheckpointCorrupt", "CheckpointError", "CheckpointNotFound",
    "CheckpointStore", "ChunkRef", "CompactionPolicy", "CompleteSnapshot", "CoordinatorCore",
    "DEFAULT_MAX_PARALLELISM", "Deliver", "EndOfInput", "FaultHook", "FencedOut",
    "FileSystemStore", "GarbageReport", "IncompatibleState", "InvalidStoreConfig",
    "JsonLinesSource", "KeyGroupRange", "KeyedState", "Manifest", "PendingCheckpoint",
    "RecordInFlight", "ResilienceError", "RetentionPlan", "RewindableSource",
    "SQLiteTwoPhaseSink", "SinkOwnedElsewhere", "SourcePosition", "StateHandle",
    "StateSnapshot", "Step",
    "StoreWriteError", "SupportsGarbageCollection", "TakeSnapshot", "TaskSnapshot",
    "TaskVerification", "TwoPhaseCommitSink", "VerifyReport", "apply_retention",
    "chunk_ref_of", "collect_garbage", "copy_checkpoint", "key_group_of", "partition_of",
    "plan_retention", "store_from_uri", "verify_checkpoint",
}

RESILIENCE = {
    "CheckpointCorrupt", "CheckpointError", "CheckpointNotFound", "EmbeddedEtcd",
    "EmbeddedEtcdCluster", "EtcdClient", "EtcdError", "EtcdUnavailable", "FailoverExhausted",
    "FencedOut", "IncompatibleState", "JobFailed", "LeaderElection", "Leadership",
    "PipelineRunner", "PipelineSpec", "RaySession", "ResilienceError", "StageSpec",
    "StoreWriteError", "UserError", "etcd_endpoint", "ray_session",
    "ActorPolicy", "ResilientActorClass", "ResilientHandle", "StateNotSerializable", "resilient",
    "Job", "current_job", "escalate", "every", "missed_heartbeats", "no_progress", "restart",
    "standby", "JavaCallError", "java_actor", "CallFailed",
}


@pytest.mark.parametrize(("module", "expected"), [(checkpoint, CHECKPOINT),
                                                  (resilience, RESILIENCE)])
def test_exports_are_pinned(module: object, expected: set[str]) -> None:
    assert set(module.__all__) == expected  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(CHECKPOINT))
def test_every_checkpoint_export_resolves(name: str) -> None:
    assert getattr(checkpoint, name) is not None


@pytest.mark.parametrize("name", sorted(RESILIENCE))
def test_every_resilience_export_resolves(name: str) -> None:
    assert getattr(importlib.import_module("resilience"), name) is not None


def test_one_root_error() -> None:
    for name in ("CheckpointCorrupt", "FencedOut", "FailoverExhausted", "EtcdUnavailable",
                 "JobFailed", "UserError", "IncompatibleState", "StoreWriteError",
                 "StateNotSerializable", "CallFailed", "JavaCallError"):
        assert issubclass(getattr(resilience, name), resilience.ResilienceError), name


def test_errors_survive_pickling() -> None:
    import pickle

    errors = [
        resilience.CheckpointCorrupt("chunk sha256:ab", "checksum mismatch"),
        resilience.FencedOut("jobs/x", 3, 4),
        resilience.FailoverExhausted("payments", 20, "task model-0 failed"),
        resilience.IncompatibleState("savepoint s", 2, 1),
        resilience.EtcdUnavailable("127.0.0.1:1", "connection refused"),
        resilience.StateNotSerializable("Counter", "lock", "cannot pickle '_thread.lock'"),
        resilience.CallFailed("InsufficientFunds", "account a-1 is short by 120 cents"),
        checkpoint.SinkOwnedElsewhere("table postings of w/ledger.sqlite", "payments", "other"),
    ]
    for e in errors:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e)
        assert str(back) == str(e)
