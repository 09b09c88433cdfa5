"""The payments job: a fused streaming + online-learning + serving pipeline.

    source (JSON Lines, validation, duplicate ids, dead letters)
      -> model (scores every transfer with the current fraud model, then learns
                from labels revealed LABEL_DELAY events later)
      -> balances x P (per-account keyed state, hash partitioned)
      -> ledger (SQLite, two-phase commit)

Every stage is deterministic given its input order, so after a restore the
replay reproduces byte for byte the ledger of a crash-free run, scores included.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from checkpoint import (
    CheckpointConfig,
    CheckpointStore,
    CompactionPolicy,
    IncompatibleState,
    JsonLinesSource,
    KeyedState,
    KeyGroupRange,
    SourcePosition,
    SQLiteTwoPhaseSink,
    StateHandle,
    TaskSnapshot,
)
from resilience._runtime._operator import OperatorContext, SnapshotWriter, WrittenSnapshot
from resilience._runtime._sink_operator import SinkOperator
from resilience._runtime._spec import PipelineSpec, StageSpec
from resilience.jobs.payments.generator import FEATURE_BUCKETS, is_fraud

__all__ = [
    "LABEL_DELAY",
    "STATE_SCHEMA_VERSION",
    "Balances",
    "FraudModel",
    "LedgerSink",
    "PaymentsSource",
    "parse_transfer",
    "payments_pipeline",
]

STATE_SCHEMA_VERSION = 1
"""Version of the job's state layout; bump it when a stage's snapshot format changes."""

LABEL_DELAY = 500
"""Events between a transfer and the reveal of its fraud label (chargebacks come late)."""

_N_FEATURES = 2 + 2 * FEATURE_BUCKETS + 1
_LEARNING_RATE = 0.05


# -- validation -----------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_transfer(raw: bytes) -> tuple[str, str, str, int] | str:
    """(id, from, to, amount) of a valid line, or the reason it is rejected.

    Strict JSON: UTF-8 only (no BOM), no NaN/Infinity anywhere in the line.
    """
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        return f"not UTF-8: {e.reason} at byte {e.start}"
    except ValueError as e:
        return f"not valid JSON: {e}"
    if not isinstance(doc, dict):
        return f"not a JSON object but {type(doc).__name__}"
    fields = []
    for name in ("id", "from", "to"):
        if name not in doc:
            return f"missing field {name!r}"
        value = doc[name]
        if not isinstance(value, str) or not value:
            return f"field {name!r} must be a non-empty string, got {value!r}"
        fields.append(value)
    if "amount" not in doc:
        return "missing field 'amount'"
    amount = doc["amount"]
    if type(amount) is not int:
        return f"amount must be an integer number of cents, got {amount!r}"
    if amount <= 0:
        return f"amount must be > 0, got {amount}"
    return fields[0], fields[1], fields[2], amount


# -- source ---------------------------------------------------------------------------


class PaymentsSource:
    """Reads transfers; rejects malformed lines and replayed ids to the dead-letter file.

    State: the read position, the size of the dead-letter file (truncated back
    to it on restore, so no dead letter is ever written twice) and the set of
    ids seen so far (incremental keyed state: it grows with the input).
    """

    def __init__(self, input_path: str) -> None:
        self.input_path = Path(input_path)
        self._source: JsonLinesSource | None = None
        self._dead: BinaryIO | None = None
        self.seen = KeyedState(compaction=CompactionPolicy(every_deltas=20))
        self.dead_letters = 0

    def open(self, ctx: OperatorContext) -> None:
        self._source = JsonLinesSource(self.input_path)
        path = ctx.workdir / "dead_letter.jsonl"
        self._dead = open(path, "ab")  # noqa: SIM115 - lives as long as the task

    @property
    def source(self) -> JsonLinesSource:
        assert self._source is not None
        return self._source

    @property
    def dead(self) -> BinaryIO:
        assert self._dead is not None
        return self._dead

    def poll(self, max_records: int) -> tuple[list[Any], bool]:
        lines = self.source.read_batch(max_records)
        out: list[Any] = []
        seen = self.seen
        for line_no, raw in lines:
            parsed = parse_transfer(raw)
            if isinstance(parsed, str):
                self._dead_letter(line_no, parsed, raw)
                continue
            tx_id = parsed[0]
            first = seen.get(tx_id)
            if first is not None:
                self._dead_letter(line_no, f"duplicate id {tx_id!r} (first seen on line {first})",
                                  raw)
                continue
            seen.put(tx_id, line_no)
            out.append((line_no, *parsed))
        return out, self.source.exhausted

    def _dead_letter(self, line_no: int, reason: str, raw: bytes) -> None:
        entry = {"line": line_no, "reason": reason, "raw": raw.decode("utf-8", "replace")}
        self.dead.write(json.dumps(entry).encode() + b"\n")
        self.dead_letters += 1

    def watermark(self) -> int:
        return self.source.position().next_line

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        self.dead.flush()
        os.fsync(self.dead.fileno())
        position = self.source.position()
        dead_bytes = self.dead.tell()
        delta = self.seen.begin_snapshot(checkpoint_id)

        def write(store: CheckpointStore) -> WrittenSnapshot:
            handle = delta.write(store)
            return WrittenSnapshot(
                handle.chunks,
                {
                    "position": position.to_json(),
                    "watermark": position.next_line,
                    "dead_letter_bytes": dead_bytes,
                    "seen_ids": dict(handle.metadata),
                    "schema": STATE_SCHEMA_VERSION,
                },
            )

        return SnapshotWriter(write, failed=lambda: self.seen.snapshot_failed(delta))

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        snapshot = _single(snapshots)
        if snapshot is None:
            self.seen.reset()
            position, dead_bytes = SourcePosition(), 0
        else:
            meta = snapshot.metadata
            _check_schema(meta, snapshot.task_id)
            self.seen.restore(store, [StateHandle(snapshot.chunks, meta["seen_ids"])])
            position = SourcePosition.from_json(meta["position"])
            dead_bytes = int(meta["dead_letter_bytes"])
        self.source.seek(position)
        self.dead.flush()
        self.dead.truncate(dead_bytes)
        self.dead.seek(dead_bytes)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
        if self._dead is not None:
            self._dead.close()


def _single(snapshots: Sequence[TaskSnapshot]) -> TaskSnapshot | None:
    if len(snapshots) > 1:
        raise IncompatibleState("a stage of parallelism 1 restored from several tasks",
                                len(snapshots), 1)
    return snapshots[0] if snapshots else None


def _check_schema(meta: Any, task_id: str) -> None:
    found = int(meta.get("schema", STATE_SCHEMA_VERSION))
    if found != STATE_SCHEMA_VERSION:
        raise IncompatibleState(f"state of task {task_id}", found, STATE_SCHEMA_VERSION)


# -- model ------------------------------------------------------------------------------


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class FraudModel:
    """Online logistic regression: score every transfer, learn from delayed labels.

    Serving and training are fused in one task and share the weights: the score
    of a transfer is computed by the model as trained on every label revealed
    before it. State: weights and the queue of transfers awaiting their label.
    """

    def __init__(self, label_delay: int = LABEL_DELAY, learning_rate: float = _LEARNING_RATE):
        self.label_delay = label_delay
        self.learning_rate = learning_rate
        self.weights = [0.0] * _N_FEATURES
        self.pending: deque[tuple[int, int, float, int, int]] = deque()
        self.trained = 0

    def open(self, ctx: OperatorContext) -> None:
        pass

    def process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        w = self.weights
        out: list[Any] = []
        pending = self.pending
        base_to = 2 + FEATURE_BUCKETS
        last = _N_FEATURES - 1
        for line_no, tx_id, src, dst, amount in records:
            b_from = 2 + zlib.crc32(src.encode()) % FEATURE_BUCKETS
            b_to = base_to + zlib.crc32(dst.encode()) % FEATURE_BUCKETS
            x_amount = math.log1p(amount) / 10.0
            whole = 1 if amount % 100 == 0 else 0
            score = _sigmoid(w[0] + w[1] * x_amount + w[b_from] + w[b_to] + w[last] * whole)
            out.append((line_no, tx_id, src, -amount, score))
            out.append((line_no, tx_id, dst, amount, score))
            pending.append((b_from, b_to, x_amount, whole, int(is_fraud(src, dst, amount))))
            if len(pending) > self.label_delay:
                self._learn(*pending.popleft())
        return out

    def _learn(self, b_from: int, b_to: int, x_amount: float, whole: int, label: int) -> None:
        w = self.weights
        last = _N_FEATURES - 1
        p = _sigmoid(w[0] + w[1] * x_amount + w[b_from] + w[b_to] + w[last] * whole)
        g = self.learning_rate * (label - p)
        w[0] += g
        w[1] += g * x_amount
        w[b_from] += g
        w[b_to] += g
        w[last] += g * whole
        self.trained += 1

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        data = msgpack.packb(
            {"w": self.weights, "pending": list(self.pending), "trained": self.trained},
            use_bin_type=True,
        )

        def write(store: CheckpointStore) -> WrittenSnapshot:
            return WrittenSnapshot((store.put_chunk(data),),
                                   {"schema": STATE_SCHEMA_VERSION, "trained": self.trained})

        return SnapshotWriter(write)

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        snapshot = _single(snapshots)
        if snapshot is None:
            self.weights = [0.0] * _N_FEATURES
            self.pending = deque()
            self.trained = 0
            return
        _check_schema(snapshot.metadata, snapshot.task_id)
        doc = msgpack.unpackb(store.get_chunk(snapshot.chunks[0]), raw=False)
        self.weights = [float(x) for x in doc["w"]]
        self.pending = deque(tuple(p) for p in doc["pending"])
        self.trained = int(doc["trained"])

    def end_of_input(self) -> list[Any]:
        return []


# -- balances ------------------------------------------------------------------------------


class Balances:
    """Per-account balances: keyed state partitioned by account key group."""

    def __init__(self) -> None:
        self.state = KeyedState()

    def open(self, ctx: OperatorContext) -> None:
        self.state = KeyedState(KeyGroupRange.for_task(ctx.index, ctx.parallelism))

    def process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        state = self.state
        get = state.get
        put = state.put
        out = []
        for line_no, tx_id, account, delta, score in records:
            balance = get(account, 0) + delta
            put(account, balance)
            out.append((line_no, tx_id, account, delta, balance, score))
        return out

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        delta = self.state.begin_snapshot(checkpoint_id)

        def write(store: CheckpointStore) -> WrittenSnapshot:
            handle = delta.write(store)
            return WrittenSnapshot(handle.chunks, {**handle.metadata,
                                                   "schema": STATE_SCHEMA_VERSION})

        return SnapshotWriter(write, failed=lambda: self.state.snapshot_failed(delta))

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        if not snapshots:
            self.state.reset()
            return
        for snapshot in snapshots:
            _check_schema(snapshot.metadata, snapshot.task_id)
        self.state.restore(store, [StateHandle(s.chunks, s.metadata) for s in snapshots])

    def end_of_input(self) -> list[Any]:
        return []


# -- ledger ---------------------------------------------------------------------------------

LEDGER_COLUMNS = (
    ("event_id", "TEXT"),
    ("account", "TEXT"),
    ("delta", "INTEGER"),
    ("balance_after", "INTEGER"),
    ("score", "REAL"),
)

_BALANCES_DDL = "CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, balance INTEGER)"
# The last balance_after of each account in the committed range; SQLite returns the
# bare column of the row holding max(seq).
_BALANCES_UPSERT = (
    "INSERT INTO balances (account, balance) "
    "SELECT account, balance_after FROM ("
    "  SELECT account, balance_after, max(seq) FROM {staging} "
    "  WHERE ckpt > :lo AND ckpt <= :hi GROUP BY account"
    ") WHERE true "
    "ON CONFLICT(account) DO UPDATE SET balance = excluded.balance"
)


def open_ledger(ctx: OperatorContext) -> SQLiteTwoPhaseSink:
    """The payments ledger: postings and balances become visible together, per checkpoint."""
    sink = SQLiteTwoPhaseSink(
        ctx.workdir / "ledger.sqlite",
        table="postings",
        columns=LEDGER_COLUMNS,
        sink_id=ctx.job_id,
        on_commit=[_BALANCES_UPSERT],
        extra_ddl=[_BALANCES_DDL],
    )
    sink.open()
    return sink


def LedgerSink() -> SinkOperator:  # noqa: N802 - a stage factory, named like the stage
    """The ledger stage (fault points ``ledger.before_precommit`` / ``ledger.before_commit``)."""
    return SinkOperator(open_ledger, name="ledger", metadata={"schema": STATE_SCHEMA_VERSION})


# -- topology ---------------------------------------------------------------------------------


def leg_account(record: Any) -> str:
    """Routing key of a leg (line, id, account, delta, score) into the balances stage."""
    return str(record[2])


@dataclass(frozen=True)
class PaymentsOptions:
    """What `resilience run payments` accepts."""

    input_path: Path
    workdir: Path
    parallelism: int = 2
    checkpoint_interval_s: float | None = 1.0
    job_id: str = "payments"
    batch_size: int = 2000
    label_delay: int = LABEL_DELAY
    code_version: str = "0"
    savepoint_dir: Path | None = None
    from_savepoint: Path | None = None  # a savepoint's own directory
    run_id: str = ""
    alignment_timeout_s: float | None = 2.0
    balances_resources: dict[str, float] | None = None  # pin the stage (node-loss drills)
    balances_stage: str = "python"  # or "java": the same stage as a Java actor
    java_standby: bool = True  # java: a warm spare JVM per task, promoted on a JVM crash

    def __post_init__(self) -> None:
        if self.balances_stage not in BALANCES_STAGES:
            raise ValueError(f"balances_stage must be one of {', '.join(BALANCES_STAGES)}, "
                             f"got {self.balances_stage!r}")


BALANCES_STAGES = ("python", "java")


def _balances_factory(kind: str, java_standby: bool) -> Any:
    if kind == "java":
        from resilience.jobs.payments.java_balances import JavaBalances

        return partial(JavaBalances, standby=java_standby)
    return Balances


def payments_pipeline(opts: PaymentsOptions) -> PipelineSpec:
    """The job's topology and settings."""
    workdir = opts.workdir.resolve()
    checkpoint = (
        None if opts.checkpoint_interval_s is None
        else CheckpointConfig(interval_s=opts.checkpoint_interval_s, timeout_s=30.0)
    )
    return PipelineSpec(
        job_id=opts.job_id,
        workdir=workdir,
        store_uri=str(workdir / "checkpoints"),
        checkpoint=checkpoint,
        code_version=opts.code_version,
        schema_version=STATE_SCHEMA_VERSION,
        batch_size=opts.batch_size,
        savepoint_dir=opts.savepoint_dir,
        initial_savepoint=opts.from_savepoint,
        alignment_timeout_s=opts.alignment_timeout_s,
        run_id=opts.run_id or uuid.uuid4().hex,
        stages=[
            StageSpec("source", partial(PaymentsSource, str(opts.input_path.resolve())),
                      is_source=True),
            StageSpec("model", partial(FraudModel, opts.label_delay), upstream=["source"]),
            StageSpec("balances", _balances_factory(opts.balances_stage, opts.java_standby),
                      parallelism=opts.parallelism, upstream=["model"], key=leg_account,
                      resources=opts.balances_resources or {}),
            StageSpec("ledger", LedgerSink, upstream=["balances"], commits=True),
        ],
    )
