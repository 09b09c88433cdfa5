"""Checkpoint mechanism: stores, manifests, keyed state, barriers, two-phase-commit sinks.

This package imports nothing else of the project (see tests/test_layering.py).
"""

from checkpoint._barrier import (
    BarrierAligner,
    BarrierProtocolError,
    CompleteSnapshot,
    Deliver,
    EndOfInput,
    RecordInFlight,
    Step,
    TakeSnapshot,
)
from checkpoint._coordinator import (
    CheckpointAborted,
    CheckpointCompleted,
    CheckpointConfig,
    CoordinatorCore,
    PendingCheckpoint,
)
from checkpoint._errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointNotFound,
    FencedOut,
    IncompatibleState,
    InputChanged,
    InvalidStoreConfig,
    ResilienceError,
    SinkOwnedElsewhere,
    StoreWriteError,
)
from checkpoint._manifest import ChunkRef, Manifest, TaskSnapshot, chunk_ref_of
from checkpoint._retention import (
    GarbageReport,
    RetentionPlan,
    apply_retention,
    collect_garbage,
    plan_retention,
)
from checkpoint._savepoint import TaskVerification, VerifyReport, copy_checkpoint, verify_checkpoint
from checkpoint._sink import (
    SinkCommit,
    SinkFingerprint,
    SinkProgress,
    SQLiteTwoPhaseSink,
    TwoPhaseCommitSink,
)
from checkpoint._source import JsonLinesSource, RewindableSource, SourcePosition
from checkpoint._state import (
    DEFAULT_MAX_PARALLELISM,
    CompactionPolicy,
    KeyedState,
    KeyGroupRange,
    StateHandle,
    StateSnapshot,
    key_group_of,
    partition_of,
)
from checkpoint._store import (
    CheckpointStore,
    FaultHook,
    FileSystemStore,
    SupportsGarbageCollection,
    store_from_uri,
)
from checkpoint._wal import LogFollower, WriteAheadLog, read_log

__all__ = [
    "DEFAULT_MAX_PARALLELISM",
    "BarrierAligner",
    "BarrierProtocolError",
    "CheckpointAborted",
    "CheckpointCompleted",
    "CheckpointConfig",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointNotFound",
    "CheckpointStore",
    "ChunkRef",
    "CompactionPolicy",
    "CompleteSnapshot",
    "CoordinatorCore",
    "Deliver",
    "EndOfInput",
    "FaultHook",
    "FencedOut",
    "FileSystemStore",
    "GarbageReport",
    "IncompatibleState",
    "InputChanged",
    "InvalidStoreConfig",
    "JsonLinesSource",
    "KeyGroupRange",
    "KeyedState",
    "LogFollower",
    "Manifest",
    "PendingCheckpoint",
    "RecordInFlight",
    "ResilienceError",
    "RetentionPlan",
    "RewindableSource",
    "SQLiteTwoPhaseSink",
    "SinkCommit",
    "SinkFingerprint",
    "SinkOwnedElsewhere",
    "SinkProgress",
    "SourcePosition",
    "StateHandle",
    "StateSnapshot",
    "Step",
    "StoreWriteError",
    "SupportsGarbageCollection",
    "TakeSnapshot",
    "TaskSnapshot",
    "TaskVerification",
    "TwoPhaseCommitSink",
    "VerifyReport",
    "WriteAheadLog",
    "apply_retention",
    "chunk_ref_of",
    "collect_garbage",
    "copy_checkpoint",
    "key_group_of",
    "partition_of",
    "plan_retention",
    "read_log",
    "store_from_uri",
    "verify_checkpoint",
]
