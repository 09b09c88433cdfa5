"""The payments job: a fused streaming + online-learning + serving pipeline.

    source (JSON Lines, validation, duplicate ids, dead letters; the fraud labels, a
            second stream joined by id and released once the transfers reach their time)
      -> model (scores every transfer with the serving version of the fraud model, learns
                from the labels, publishes versions and rolls a bad one back)
      -> balances x P (per-account keyed state, hash partitioned)
      -> ledger (SQLite, two-phase commit)

Every stage is deterministic given its input order, so after a restore the
replay reproduces byte for byte the ledger of a crash-free run, scores and model versions
included.
"""

from __future__ import annotations

import math
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fusion_jobs.payments.contract import (
    BALANCE_MAX,
    BALANCE_MIN,
    apply_to_balances,
    dead_letter_entry,
    parse_label,
    parse_transfer,
    transfer_ts,
)
from fusion_jobs.payments.generator import FEATURE_BUCKETS, labels_path_for
from fusion_jobs.payments.schema import STATE_SCHEMA_VERSION, check_schema, single_snapshot
from resilience import UserError
from resilience.java import java_unavailable_reason
from resilience.models import BookConfig, ModelBook, ModelCheckpoints
from resilience.pipeline import (
    SIDE_FILES_KEY,
    CheckpointConfig,
    CheckpointStore,
    CompactionPolicy,
    JobDefinition,
    JobOptions,
    JsonLinesSource,
    KeyedState,
    KeyGroupRange,
    OperatorContext,
    PipelineSpec,
    QuarantineBudget,
    SideFile,
    SinkOperator,
    SnapshotWriter,
    SourcePosition,
    SQLiteTwoPhaseSink,
    StageSpec,
    StateHandle,
    TaskSnapshot,
    WrittenSnapshot,
)

__all__ = [
    "FRAUD",
    "JOB",
    "STATE_SCHEMA_VERSION",
    "Balances",
    "FraudLearner",
    "FraudModel",
    "PaymentsSource",
    "fraud_features",
    "ledger_sink",
    "parse_transfer",
    "payments_pipeline",
    "pipeline",
    "score_transfer",
]

_N_FEATURES = 2 + 2 * FEATURE_BUCKETS + 1
_LEARNING_RATE = 0.05


# -- source ---------------------------------------------------------------------------


class PaymentsSource:
    """Reads transfers; sends every line the input contract refuses to the dead-letter file.

    State: the read position, the size of the dead-letter file (truncated back
    to it on restore, so no dead letter is ever written twice), the line on which
    each id was first seen, and every account's balance (rule 9 refuses a transfer
    that would take one out of the 64-bit range before any stage applies half of
    it). Both maps are incremental keyed state.
    """

    def __init__(self, input_path: str, labels_path: str | None = None) -> None:
        self.input_path = Path(input_path)
        self.labels_path = None if labels_path is None else Path(labels_path)
        self._source: JsonLinesSource | None = None
        self._labels: JsonLinesSource | None = None
        self.dead = SideFile("dead_letter.jsonl")
        self.label_dead = SideFile("labels_dead_letter.jsonl")
        self.seen = KeyedState(compaction=CompactionPolicy(every_deltas=20))
        self.balances = KeyedState(compaction=CompactionPolicy(every_deltas=20))
        self.labelled = KeyedState(compaction=CompactionPolicy(every_deltas=20))
        self.dead_letters = 0
        # The next label, read but not yet due, and the labels position before it.
        self._next_label: tuple[int, str, bool, int, bytes] | None = None
        self._before_next: SourcePosition = SourcePosition()
        self._clock = -1  # the latest event time of a transfer read: labels up to it are due

    def open(self, ctx: OperatorContext) -> None:
        self._source = JsonLinesSource(self.input_path)
        self.dead.open(ctx.workdir)
        if self.labels_path is not None:
            self._labels = JsonLinesSource(self.labels_path)
            self.label_dead.open(ctx.workdir)

    @property
    def source(self) -> JsonLinesSource:
        assert self._source is not None
        return self._source

    def poll(self, max_records: int) -> tuple[list[Any], bool]:
        lines = self.source.read_batch(max_records)
        out: list[Any] = []
        seen = self.seen
        balances = self.balances
        balance_of = partial(balances.get, default=0)
        labels = self._labels is not None
        for line_no, raw in lines:
            parsed = parse_transfer(raw)
            if isinstance(parsed, str):
                self._dead_letter(line_no, parsed, raw)
                continue
            tx_id, src, dst, amount = parsed
            first = seen.get(tx_id)
            if first is not None:
                self._dead_letter(line_no, f"duplicate id {tx_id!r} (first seen on line {first})",
                                  raw)
                continue
            seen.put(tx_id, line_no)
            applied = apply_to_balances(balance_of, src, dst, amount)
            if isinstance(applied, str):
                self._dead_letter(line_no, applied, raw)
                continue
            balances.put(src, applied[0])
            balances.put(dst, applied[1])
            out.append((line_no, *parsed))
            if labels:
                ts = transfer_ts(raw)
                if ts is not None and ts > self._clock:
                    self._clock = ts
                    self._release_labels(out, ts)
        exhausted = self.source.exhausted
        if labels and exhausted:
            self._release_labels(out, None)  # the transfers ended: every label is due
        return out, exhausted and (not labels or self._labels_done())

    def _labels_done(self) -> bool:
        assert self._labels is not None
        return self._next_label is None and self._labels.exhausted

    def _release_labels(self, out: list[Any], until: int | None) -> None:
        """Append, in file order, every label due by event time `until` (None: all).

        Labels are released right after the transfer that moved the clock, never at a
        batch's end, so the interleaving is the same whatever the batches were (a replay
        after a restore starts its batches elsewhere)."""
        while True:
            label = self._peek_label()
            if label is None or (until is not None and label[3] > until):
                return
            self._next_label = None
            labels_line, tx_id, fraud, _ts, raw = label
            first = self.seen.get(tx_id)
            if first is None:
                self._label_dead_letter(labels_line, f"label for an unknown id {tx_id!r}", raw)
                continue
            earlier = self.labelled.get(tx_id)
            if earlier is not None:
                self._label_dead_letter(labels_line, f"second label for id {tx_id!r} (first "
                                        f"on labels line {earlier})", raw)
                continue
            self.labelled.put(tx_id, labels_line)
            out.append(("label", tx_id, fraud, labels_line))

    def _peek_label(self) -> tuple[int, str, bool, int, bytes] | None:
        """The next well-formed label, read ahead once; malformed lines are dead-lettered."""
        if self._next_label is not None:
            return self._next_label
        labels = self._labels
        assert labels is not None
        while True:
            before = labels.position()
            batch = labels.read_batch(1)
            if not batch:
                return None
            line_no, raw = batch[0]
            parsed = parse_label(raw)
            if isinstance(parsed, str):
                self._label_dead_letter(line_no, parsed, raw)
                continue
            self._before_next = before
            self._next_label = (line_no, *parsed, raw)
            return self._next_label

    def _label_dead_letter(self, line_no: int, reason: str, raw: bytes) -> None:
        self.label_dead.write(dead_letter_entry(line_no, reason, raw))

    def _dead_letter(self, line_no: int, reason: str, raw: bytes) -> None:
        self.dead.write(dead_letter_entry(line_no, reason, raw))
        self.dead_letters += 1

    def watermark(self) -> int:
        return self.source.position().next_line

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        dead = self.dead.mark()
        position = self.source.position()
        seen_delta = self.seen.begin_snapshot(checkpoint_id)
        balances_delta = self.balances.begin_snapshot(checkpoint_id)
        labels: dict[str, Any] | None = None
        labelled_delta = None
        if self._labels is not None:
            labelled_delta = self.labelled.begin_snapshot(checkpoint_id)
            at = self._before_next if self._next_label is not None else self._labels.position()
            labels = {"input": str(self.labels_path), "position": at.to_json(),
                      "clock": self._clock}
        label_dead = self.label_dead.mark() if self._labels is not None else None

        def write(store: CheckpointStore) -> WrittenSnapshot:
            seen = seen_delta.write(store)
            balances = balances_delta.write(store)
            meta: dict[str, Any] = {
                "input": str(self.input_path),
                "position": position.to_json(),
                "watermark": position.next_line,
                SIDE_FILES_KEY: {self.dead.name: dead},
                "seen_ids": dict(seen.metadata),
                "seen_chunks": len(seen.chunks),
                "balances": dict(balances.metadata),
                "schema": STATE_SCHEMA_VERSION,
            }
            chunks = (*seen.chunks, *balances.chunks)
            if labelled_delta is not None and labels is not None:
                labelled = labelled_delta.write(store)
                meta["balances_chunks"] = len(balances.chunks)
                meta["labels"] = {**labels, "labelled": dict(labelled.metadata)}
                meta[SIDE_FILES_KEY][self.label_dead.name] = label_dead
                chunks = (*chunks, *labelled.chunks)
            return WrittenSnapshot(chunks, meta)

        def failed() -> None:
            self.seen.snapshot_failed(seen_delta)
            self.balances.snapshot_failed(balances_delta)
            if labelled_delta is not None:
                self.labelled.snapshot_failed(labelled_delta)

        return SnapshotWriter(write, failed=failed)

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        snapshot = single_snapshot(snapshots)
        self._next_label = None
        if snapshot is None:
            self.seen.reset()
            self.balances.reset()
            self.labelled.reset()
            position, dead = SourcePosition(), None
            labels_at, label_dead, self._clock = SourcePosition(), None, -1
        else:
            meta = snapshot.metadata
            check_schema(meta, snapshot.task_id)
            n_seen = int(meta["seen_chunks"])
            n_balances = int(meta.get("balances_chunks", len(snapshot.chunks) - n_seen))
            self.seen.restore(store, [StateHandle(snapshot.chunks[:n_seen], meta["seen_ids"])])
            self.balances.restore(store, [StateHandle(
                snapshot.chunks[n_seen:n_seen + n_balances], meta["balances"])])
            position = SourcePosition.from_json(meta["position"])
            # Checkpoints written before side files recorded only the size.
            dead = (meta[SIDE_FILES_KEY][self.dead.name] if SIDE_FILES_KEY in meta
                    else {"bytes": int(meta["dead_letter_bytes"])})
            labels = meta.get("labels")
            if labels is not None and self._labels is not None:
                self.labelled.restore(store, [StateHandle(
                    snapshot.chunks[n_seen + n_balances:], labels["labelled"])])
                labels_at = SourcePosition.from_json(labels["position"])
                label_dead = meta[SIDE_FILES_KEY].get(self.label_dead.name)
                self._clock = int(labels["clock"])
            elif self._labels is not None:
                # A checkpoint of a run without labels: the labels start from the top.
                self.labelled.reset()
                labels_at, label_dead, self._clock = SourcePosition(), None, -1
            else:
                labels_at, label_dead = SourcePosition(), None
        self.source.seek(position)
        self.dead.restore(dead)
        if self._labels is not None:
            self._labels.seek(labels_at)
            self.label_dead.restore(label_dead)

    def close(self) -> None:
        if self._source is not None:
            self._source.close()
        if self._labels is not None:
            self._labels.close()
            self.label_dead.close()
        self.dead.close()


# -- model ------------------------------------------------------------------------------


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


_FROM_BASE = 2
_TO_BASE = 2 + FEATURE_BUCKETS


def fraud_features(src: str, dst: str, amount: int) -> tuple[int, int, float, int]:
    """The fraud model's features of a transfer: the sender's and the receiver's bucket,
    the log amount and whether it is a whole number of dollars."""
    return (_FROM_BASE + zlib.crc32(src.encode()) % FEATURE_BUCKETS,
            _TO_BASE + zlib.crc32(dst.encode()) % FEATURE_BUCKETS,
            math.log1p(amount) / 10.0, 1 if amount % 100 == 0 else 0)


class FraudLearner:
    """Online logistic regression over `fraud_features` (SGD, one label at a time)."""

    def __init__(self, learning_rate: float = _LEARNING_RATE) -> None:
        self.learning_rate = learning_rate

    def initial(self) -> list[float]:
        return [0.0] * _N_FEATURES

    def score(self, w: Sequence[float], f: Any) -> float:
        b_from, b_to, x_amount, whole = f
        return _sigmoid(w[0] + w[1] * x_amount + w[b_from] + w[b_to] + w[-1] * whole)

    def learn(self, w: list[float], f: Any, label: bool) -> None:
        b_from, b_to, x_amount, whole = f
        g = self.learning_rate * (label - self.score(w, f))
        w[0] += g
        w[1] += g * x_amount
        w[b_from] += g
        w[b_to] += g
        w[-1] += g * whole


FRAUD = "fraud"
"""The model's name in the registry."""


class FraudModel:
    """Scores every transfer with the serving version of the fraud model, and learns from
    the delayed labels the source releases (``("label", id, fraud, labels line)`` records).

    The versions, the gate and the rollbacks are a `ModelBook`; every leg carries the score
    and the version that gave it. Each checkpoint carries the book whole and what the
    registry must hold (`ModelCheckpoints`; the runtime publishes it in the checkpoint's
    own etcd transaction). Labels a rollback rewound are appended to
    ``models_quarantine.jsonl``, and every publication and alias move (with the input line
    it happened at) to ``models_history.jsonl``, exactly once like every side file: the
    checker holds the ledger's model versions against that history.
    """

    def __init__(self, config: BookConfig | None = None,
                 learning_rate: float = _LEARNING_RATE) -> None:
        self.book = ModelBook(FRAUD, FraudLearner(learning_rate), config)
        self.books = ModelCheckpoints([self.book])
        self.quarantine = SideFile("models_quarantine.jsonl")
        self.history = SideFile("models_history.jsonl")

    def open(self, ctx: OperatorContext) -> None:
        self.quarantine.open(ctx.workdir)
        self.history.open(ctx.workdir)

    def process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        book = self.book
        score = book.score
        label = book.label
        out: list[Any] = []
        append = out.append
        for record in records:
            if record[0] == "label":
                _, tx_id, fraud, labels_line = record
                label(tx_id, fraud, labels_line)
                continue
            line_no, tx_id, src, dst, amount = record
            book.position = line_no
            p, version = score(tx_id, fraud_features(src, dst, amount))
            append((line_no, tx_id, src, -amount, p, version))
            append((line_no, tx_id, dst, amount, p, version))
        return out

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        taken, quarantined, history = self.books.take(checkpoint_id)
        for line in ModelCheckpoints.json_lines(quarantined):
            self.quarantine.write(line)
        for line in ModelCheckpoints.json_lines(history):
            self.history.write(line)
        marks = {f.name: f.mark() for f in (self.quarantine, self.history)}
        trained = self.book.learned

        def write(store: CheckpointStore) -> WrittenSnapshot:
            chunks, meta = ModelCheckpoints.write(store, taken)
            return WrittenSnapshot(tuple(chunks), {
                **meta, "schema": STATE_SCHEMA_VERSION, "trained": trained,
                SIDE_FILES_KEY: marks})

        return SnapshotWriter(write)

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        snapshot = single_snapshot(snapshots)
        if snapshot is None:
            self.books.reset()
            self.quarantine.restore(None)
            self.history.restore(None)
            return
        check_schema(snapshot.metadata, snapshot.task_id)
        # A checkpoint of the model before versions has no MODELS_KEY: a fresh book.
        self.books.restore(store, snapshot.chunks, snapshot.metadata)
        marks = snapshot.metadata.get(SIDE_FILES_KEY, {})
        self.quarantine.restore(marks.get(self.quarantine.name))
        self.history.restore(marks.get(self.history.name))

    def checkpoint_completed(self, checkpoint_id: int) -> None:
        self.books.checkpoint_completed(checkpoint_id)

    def end_of_input(self) -> list[Any]:
        return []

    def close(self) -> None:
        self.quarantine.close()
        self.history.close()


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
        for line_no, tx_id, account, delta, score, version in records:
            balance = get(account, 0) + delta
            if not BALANCE_MIN <= balance <= BALANCE_MAX:
                # The source refuses such transfers (rule 9): reaching this is a bug, and
                # the framework quarantines the record rather than store a wrong balance.
                raise OverflowError(f"balance of {account!r} would leave the 64-bit range")
            put(account, balance)
            out.append((line_no, tx_id, account, delta, balance, score, version))
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
            check_schema(snapshot.metadata, snapshot.task_id)
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
    ("model_version", "INTEGER"),  # the fraud model's version that gave the score
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


def ledger_sink() -> SinkOperator:
    """The ledger stage (fault points ``ledger.before_precommit`` / ``ledger.before_commit``)."""
    return SinkOperator(open_ledger, name="ledger", metadata={"schema": STATE_SCHEMA_VERSION})


# -- topology ---------------------------------------------------------------------------------


def leg_account(record: Any) -> str:
    """Routing key of a leg (line, id, account, delta, score, version) into the balances
    stage."""
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
    labels_path: Path | None = None  # the fraud labels (None: next to the input, if there)
    models: BookConfig | None = None  # how the fraud model's versions are made and judged
    code_version: str = "0"
    savepoint_dir: Path | None = None
    from_savepoint: Path | None = None  # a savepoint's own directory
    run_id: str = ""
    alignment_timeout_s: float | None = 2.0
    balances_resources: dict[str, float] | None = None  # pin the stage (node-loss drills)
    balances_stage: str = "python"  # or "java": the same stage as a Java actor
    java_standby: bool = True  # java: a warm spare JVM per task, promoted on a JVM crash
    max_quarantined: int | None = 100  # poison records a run may quarantine (None: no limit)

    def __post_init__(self) -> None:
        if self.balances_stage not in BALANCES_STAGES:
            raise ValueError(f"balances_stage must be one of {', '.join(BALANCES_STAGES)}, "
                             f"got {self.balances_stage!r}")


BALANCES_STAGES = ("python", "java")


def _balances_factory(kind: str, java_standby: bool) -> Any:
    if kind == "java":
        from fusion_jobs.payments.java_balances import JavaBalances

        return partial(JavaBalances, standby=java_standby)
    return Balances


def _labels_for(opts: PaymentsOptions) -> str | None:
    """The labels file the job reads: the one named, else ``<input>.labels.jsonl`` when it
    exists (without labels the model scores but never learns)."""
    if opts.labels_path is not None:
        return str(opts.labels_path.resolve())
    beside = labels_path_for(opts.input_path.resolve())
    return str(beside) if beside.is_file() else None


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
        quarantine=QuarantineBudget(max_records=opts.max_quarantined),
        stages=[
            StageSpec("source", partial(PaymentsSource, str(opts.input_path.resolve()),
                                        _labels_for(opts)), is_source=True),
            StageSpec("model", partial(FraudModel, opts.models), upstream=["source"]),
            StageSpec("balances", _balances_factory(opts.balances_stage, opts.java_standby),
                      parallelism=opts.parallelism, upstream=["model"], key=leg_account,
                      resources=opts.balances_resources or {}),
            StageSpec("ledger", ledger_sink, upstream=["balances"], commits=True),
        ],
    )


# -- the job, as `resilience run payments` finds it ----------------------------------------


def pipeline(options: JobOptions) -> PipelineSpec:
    """`JobDefinition.pipeline`: the common options, plus `balances_stage` and
    `java_standby` from the settings."""
    settings = options.settings
    stage = settings.get("balances_stage", "python")
    if stage not in BALANCES_STAGES:
        raise UserError(f"balances_stage must be one of {', '.join(BALANCES_STAGES)}, "
                        f"got {stage!r}")
    if stage == "java":
        reason = java_unavailable_reason()
        if reason is not None:
            raise UserError(f"balances_stage java: {reason}")
    if options.input_path is None:
        raise UserError("the payments job needs --input")
    return payments_pipeline(PaymentsOptions(
        input_path=options.input_path,
        workdir=options.workdir,
        parallelism=options.parallelism,
        checkpoint_interval_s=options.checkpoint_interval_s,
        job_id=options.job_id,
        batch_size=options.batch_size,
        savepoint_dir=options.savepoint_dir,
        from_savepoint=options.from_savepoint,
        run_id=options.run_id,
        balances_stage=stage,
        java_standby=settings.get("java_standby", "yes") not in ("no", "false", "0"),
        max_quarantined=options.max_quarantined,
    ))


def _verify(input_path: Path, workdir: Path, reference: Path | None = None) -> Any:
    from fusion_jobs.payments.checker import CheckerInputError, verify

    try:
        return verify(input_path, workdir, reference_ledger=reference)
    except CheckerInputError as e:
        raise UserError(str(e)) from e


def _generate(path: Path, events: int, seed: int) -> str:
    from fusion_jobs.payments.generator import generate, generate_labels

    stats = generate(path, events=events, accounts=10_000, seed=seed)
    labels = generate_labels(path, seed=seed)
    return (f"{stats.valid:,} valid, {stats.invalid:,} malformed and {stats.duplicates:,} "
            f"replayed ids (these must end in the dead-letter file); {labels.labels:,} fraud "
            "labels arriving 5-7 s after their transfers")


JOB = JobDefinition(
    name="payments",
    pipeline=pipeline,
    description="money transfers scored by an online fraud model and applied exactly once "
                "to a SQLite ledger",
    schema_version=STATE_SCHEMA_VERSION,
    settings={
        "balances_stage": "python (default) or java: the per-account balance stage",
        "java_standby": "yes (default) or no: a warm spare JVM per Java balances task",
    },
    verify=_verify,
    count_input=JsonLinesSource.count_lines,
    generate=_generate,
)


def score_transfer(weights: list[float], payload: Any) -> float:
    """The fraud model's score of ``{"from", "to", "amount"}`` (what the serving replicas
    answer ``POST /fraud/score`` with); ValueError for a payload that is no transfer."""
    src, dst, amount = payload.get("from"), payload.get("to"), payload.get("amount")
    if not isinstance(src, str) or not src or not isinstance(dst, str) or not dst:
        raise ValueError("'from' and 'to' must be non-empty strings")
    if type(amount) is not int or amount < 1:
        raise ValueError("'amount' must be a positive integer (cents)")
    return FraudLearner().score(weights, fraud_features(src, dst, amount))
