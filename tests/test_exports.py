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
    "FileSystemStore", "GarbageReport", "IncompatibleState", "InputChanged",
    "InvalidStoreConfig", "JsonLinesSource", "KeyGroupRange", "KeyedState", "Manifest",
    "PendingCheckpoint",
    "RecordInFlight", "ResilienceError", "RetentionPlan", "RewindableSource",
    "SQLiteTwoPhaseSink", "SinkOwnedElsewhere", "SourcePosition", "StateHandle",
    "StateSnapshot", "Step",
    "StoreWriteError", "SupportsGarbageCollection", "TakeSnapshot", "TaskSnapshot",
    "TaskVerification", "TwoPhaseCommitSink", "VerifyReport", "apply_retention",
    "chunk_ref_of", "collect_garbage", "copy_checkpoint", "key_group_of", "partition_of",
    "plan_retention", "store_from_uri", "verify_checkpoint", "LogFollower", "WriteAheadLog",
    "read_log", "SinkProgress", "SinkCommit", "SinkFingerprint",
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
    "InfrastructureError", "InputChanged", "QuarantineBudget", "Deadlines",
    "CampaignTimeout", "CoordinationError", "EmbeddedEtcdError", "EtcdNotInstalled",
    "InvalidCoordinationArgument", "InvalidEndpoint", "JavaBuildError", "RayUnreachable",
    "WorkdirBusy", "CheckpointRecord", "CheckpointRegistry",
    "InvalidSites", "ReplicationError", "SwitchoverRefused",
    "InvalidModelConfig", "ModelError", "ModelRefused", "WeightsCorrupt",
}

MODELS = {
    "ALIASES", "MODELS_KEY", "BookConfig", "Learner", "ModelBook", "ModelCheckpoints",
    "AliasMove", "AliasRecord", "Decision", "GateConfig", "GateState",
    "ModelRegistry", "ModelVersion", "Outcome", "Verdict", "Window", "WindowAccumulator",
    "judge", "load_weights", "log_loss", "models_prefix", "weights_digest",
}

SERVING = {"AliasFollower", "Loaded", "ModelServer", "model_app"}

REPLICATION = {
    "Handover", "LinkSecurity", "ReplicationConfig", "ReplicationRegistry", "Site", "Sites",
    "make_pki",
}


PIPELINE = {
    "CheckpointConfig", "CheckpointStore", "CommitListener", "CompactionPolicy", "Deadlines",
    "IncompatibleState", "JobDefinition", "JobOptions", "JsonLinesSource", "KeyGroupRange",
    "KeyedState", "Operator", "OperatorContext", "PipelineRunner", "PipelineSpec",
    "QuarantineBudget", "SQLiteTwoPhaseSink", "SinkOperator", "SnapshotWriter",
    "SourceOperator", "SourcePosition", "StageSpec", "StateHandle", "TaskSnapshot",
    "TwoPhaseCommitSink", "Verdict", "WrittenSnapshot", "find_job", "known_jobs",
    "SIDE_FILES_KEY", "SideFile",
}

JAVA = {
    "COUNTER", "JavaActorClass", "JavaBuildError", "JavaCallError", "call", "code_search_path",
    "ensure_java_built", "java_actor", "java_actor_class", "java_cause",
    "java_code_search_path_if_available", "java_unavailable_reason", "pack", "pack_args",
    "pack_long_map", "unpack", "unpack_long_map",
}

CHAOS = {
    "FAULT_KINDS", "INVARIANTS", "ChaosProxy", "ExploreResult", "FaultStep", "FaultType",
    "InvalidScenario", "JobSpec", "RandomSchedule", "RunOptions", "Scenario", "code_version",
    "explore", "load_scenario", "parse_scenario", "run_scenario", "scenario_to_yaml",
    "schedules", "SITE_FAULTS", "DrillError", "DrillOptions", "LocalSites", "run_drill",
}

CHAOS_REPORT = {
    "FORMAT", "FORMAT_VERSION", "FaultRecord", "InvalidReport", "InvariantResult",
    "JournalEvent", "Phase", "Report", "Sample", "SteadyStateResult", "read_json",
    "render_html", "write_html", "write_json",
}

MODULES = {"checkpoint": CHECKPOINT, "resilience": RESILIENCE,
           "resilience.pipeline": PIPELINE, "resilience.java": JAVA, "chaos": CHAOS,
           "resilience.replication": REPLICATION, "resilience.models": MODELS,
           "resilience.serving": SERVING,
           "chaos.report": CHAOS_REPORT}


@pytest.mark.parametrize(("module", "expected"), sorted(MODULES.items()))
def test_exports_are_pinned(module: str, expected: set[str]) -> None:
    assert set(importlib.import_module(module).__all__) == expected


@pytest.mark.parametrize(("module", "name"), sorted(
    (module, name) for module, names in MODULES.items() for name in names))
def test_every_export_resolves(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None


def test_every_fault_point_name_is_declared_in_one_place() -> None:
    """The product passes fault point names only from resilience.faultpoints."""
    import ast
    from pathlib import Path

    from resilience import faultpoints

    names = {name.split(".")[-1] for name in faultpoints.POINTS}
    root = Path(__file__).resolve().parents[1]
    literals = []
    for package in ("resilience", "fusion_jobs", "chaos"):
        for path in (root / package).rglob("*.py"):
            if path.name == "faultpoints.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and node.value in {"before_commit", "before_precommit",
                                           "before_reply", "store.write"}):
                    literals.append(f"{path.relative_to(root)}:{node.lineno}")
    assert names >= {"write", "before_reply", "before_precommit", "before_commit", "{point}"}
    assert literals == []


def test_every_error_is_exported() -> None:
    """Each error class the layers define is reachable from the package's public names."""
    import resilience._errors

    for name in resilience._errors.__all__:
        assert getattr(resilience, name) is getattr(resilience._errors, name)


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
