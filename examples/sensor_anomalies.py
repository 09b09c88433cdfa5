"""A user's own fused job, written against the public API only: anomaly scores per sensor.

    readings.jsonl -> source -> detector xP -> SQLite (two-phase commit)
                      (rewindable)  (keyed state: an online model per sensor)

Each line is ``{"sensor": str, "t": int, "value": float}``. The detector keeps, per
sensor, a running mean and variance (Welford's online algorithm: the model learns from
every reading) and scores each reading by its z-score against what it had learned
before it: serving and training fused, as in the payments job, but nothing of it is
shared. Output table ``readings(line, sensor, t, value, z, n)``.

Run it like any job (no registration needed for a file)::

    .venv/bin/python examples/sensor_anomalies.py generate readings.jsonl 200000
    resilience run examples/sensor_anomalies.py:JOB --input readings.jsonl --workdir w
    resilience verify --job examples/sensor_anomalies.py:JOB --input readings.jsonl --workdir w

`verify` recomputes every score from the input on its own and checks each line was
applied exactly once; tests/runtime/test_example_job.py runs it under SIGKILLs.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from resilience.pipeline import (
    CheckpointConfig,
    CheckpointStore,
    JobDefinition,
    JobOptions,
    JsonLinesSource,
    KeyedState,
    KeyGroupRange,
    OperatorContext,
    PipelineSpec,
    SinkOperator,
    SnapshotWriter,
    SourcePosition,
    SQLiteTwoPhaseSink,
    StageSpec,
    StateHandle,
    TaskSnapshot,
    WrittenSnapshot,
)

__all__ = ["JOB", "generate", "verify"]


def parse(raw: bytes) -> tuple[str, int, float] | None:
    """(sensor, t, value) of a valid line, else None (skipped, by the job and the check)."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    sensor, t, value = doc.get("sensor"), doc.get("t"), doc.get("value")
    if not isinstance(sensor, str) or not sensor or len(sensor) > 64:
        return None
    if type(t) is not int or type(value) not in (int, float) or not math.isfinite(value):
        return None
    return sensor, t, float(value)


class Readings:
    """The source: lines of the input file, rewindable by position."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._source: JsonLinesSource | None = None

    @property
    def source(self) -> JsonLinesSource:
        assert self._source is not None
        return self._source

    def open(self, ctx: OperatorContext) -> None:
        self._source = JsonLinesSource(self.path)

    def poll(self, max_records: int) -> tuple[list[Any], bool]:
        out = []
        for line_no, raw in self.source.read_batch(max_records):
            parsed = parse(raw)
            if parsed is not None:
                out.append((line_no, *parsed))
        return out, self.source.exhausted

    def watermark(self) -> int:
        return self.source.position().next_line

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        position = self.source.position()
        return SnapshotWriter(lambda store: WrittenSnapshot(
            (), {"position": position.to_json(), "watermark": position.next_line}))

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        meta = snapshots[0].metadata if snapshots else None
        self.source.seek(SourcePosition.from_json(meta["position"]) if meta else SourcePosition())

    def close(self) -> None:
        if self._source is not None:
            self._source.close()


def score(model: Sequence[float] | None, value: float) -> tuple[float, tuple[float, float, float]]:
    """The reading's z-score under `model` (count, mean, M2), and the model after learning it."""
    n, mean, m2 = model if model is not None else (0.0, 0.0, 0.0)
    std = math.sqrt(m2 / (n - 1)) if n >= 2 else 0.0
    z = (value - mean) / std if std > 0 else 0.0
    n += 1
    delta = value - mean
    mean += delta / n
    m2 += delta * (value - mean)
    return z, (n, mean, m2)


class Detector:
    """Per-sensor online model (keyed state): score each reading, then learn from it."""

    def __init__(self) -> None:
        self.models = KeyedState()

    def open(self, ctx: OperatorContext) -> None:
        self.models = KeyedState(KeyGroupRange.for_task(ctx.index, ctx.parallelism))

    def process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        out = []
        models = self.models
        for line_no, sensor, t, value in records:
            z, model = score(models.get(sensor), value)
            models.put(sensor, model)
            out.append((line_no, sensor, t, value, z, int(model[0])))
        return out

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        delta = self.models.begin_snapshot(checkpoint_id)

        def write(store: CheckpointStore) -> WrittenSnapshot:
            handle = delta.write(store)
            return WrittenSnapshot(handle.chunks, dict(handle.metadata))

        return SnapshotWriter(write, failed=lambda: self.models.snapshot_failed(delta))

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        if snapshots:
            self.models.restore(store, [StateHandle(s.chunks, s.metadata) for s in snapshots])
        else:
            self.models.reset()

    def end_of_input(self) -> list[Any]:
        return []


_COLUMNS = (("line", "INTEGER"), ("sensor", "TEXT"), ("t", "INTEGER"), ("value", "REAL"),
            ("z", "REAL"), ("n", "INTEGER"))


def _open_sink(ctx: OperatorContext) -> SQLiteTwoPhaseSink:
    sink = SQLiteTwoPhaseSink(ctx.workdir / "readings.sqlite", table="readings",
                              columns=_COLUMNS, sink_id=ctx.job_id)
    sink.open()
    return sink


def _row(record: Any) -> Any:
    return (record[0], *record)  # the input line is the replay ordinal


def results_sink() -> SinkOperator:
    return SinkOperator(_open_sink, name="readings", row=_row)


def _by_sensor(record: Any) -> str:
    return str(record[1])


def pipeline(options: JobOptions) -> PipelineSpec:
    assert options.input_path is not None
    workdir = options.workdir.resolve()
    interval = options.checkpoint_interval_s
    return PipelineSpec(
        job_id=options.job_id,
        workdir=workdir,
        store_uri=str(workdir / "checkpoints"),
        checkpoint=None if interval is None else CheckpointConfig(interval_s=interval),
        batch_size=options.batch_size,
        run_id=options.run_id,
        stages=[
            StageSpec("source", partial(Readings, str(options.input_path.resolve())),
                      is_source=True),
            StageSpec("detector", Detector, parallelism=options.parallelism,
                      upstream=["source"], key=_by_sensor),
            StageSpec("sink", results_sink, upstream=["detector"], commits=True),
        ],
    )


# -- the check: recompute everything from the input, compare row by row ---------------------


@dataclass
class Verdict:
    lines: int = 0
    expected: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (f"exactly-once check: {'OK' if self.ok else 'FAIL'}: {self.expected:,} of "
                f"{self.lines:,} lines valid, {self.rows:,} rows")
        return "\n".join([head, *(f"  {p}" for p in self.problems[:10])])

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "lines": self.lines, "expected": self.expected,
                "rows": self.rows, "problems": self.problems[:100]}


def verify(input_path: Path, workdir: Path) -> Verdict:
    """Each valid line applied exactly once, with the score a crash-free run gives it."""
    verdict = Verdict()
    models: dict[str, Any] = {}
    expected: dict[int, tuple[str, int, float, float, int]] = {}
    with open(input_path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            verdict.lines = line_no
            parsed = parse(raw.rstrip(b"\r\n"))
            if parsed is None:
                continue
            sensor, t, value = parsed
            z, models[sensor] = score(models.get(sensor), value)
            expected[line_no] = (sensor, t, value, z, int(models[sensor][0]))
    verdict.expected = len(expected)
    with sqlite3.connect(f"file:{workdir / 'readings.sqlite'}?mode=ro", uri=True) as db:
        seen: set[int] = set()
        for line, sensor, t, value, z, n in db.execute(
                "SELECT line, sensor, t, value, z, n FROM readings"):
            verdict.rows += 1
            want = expected.get(line)
            if line in seen:
                verdict.problems.append(f"line {line} applied twice")
            elif want is None:
                verdict.problems.append(f"line {line} is not a valid reading")
            elif (sensor, t, n) != (want[0], want[1], want[4]) or abs(value - want[2]) > 1e-9 \
                    or abs(z - want[3]) > 1e-6:
                verdict.problems.append(f"line {line}: {(sensor, t, value, z, n)} != {want}")
            seen.add(line)
    missing = sorted(set(expected) - seen)
    if missing:
        verdict.problems.append(f"{len(missing)} lines never applied, e.g. {missing[:5]}")
    return verdict


def generate(path: Path, readings: int, seed: int, sensors: int = 200) -> str:
    """Write `readings` lines (a few malformed, a few spikes); the same seed, the same file."""
    rng = random.Random(seed)
    base = {f"s{i:04d}": rng.uniform(10, 100) for i in range(sensors)}
    names = list(base)
    with open(path, "w", encoding="utf-8") as f:
        for t in range(readings):
            if rng.random() < 0.001:
                f.write('{"sensor": "broken", "value": }\n')
                continue
            sensor = rng.choice(names)
            value = base[sensor] + rng.gauss(0, 1) + (25.0 if rng.random() < 0.002 else 0.0)
            f.write(json.dumps({"sensor": sensor, "t": t, "value": round(value, 6)}) + "\n")
    return f"{readings:,} readings of {sensors} sensors"


JOB = JobDefinition(
    name="sensor-anomalies",
    pipeline=pipeline,
    description="anomaly scores per sensor from an online model in keyed state",
    verify=verify,
    count_input=JsonLinesSource.count_lines,
    generate=generate,
)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "generate":
        sys.exit("usage: sensor_anomalies.py generate OUT READINGS")
    print(generate(Path(sys.argv[2]), int(sys.argv[3]), seed=1))
