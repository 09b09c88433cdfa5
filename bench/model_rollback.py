"""Automatic model rollback: how soon poisoned labels are undone, and how often a healthy
model is rolled back for nothing.

    .venv/bin/python bench/model_rollback.py [--events N] [--healthy-events N] [--seeds K]

1. **Poisoned labels, on the real job** (Ray, embedded etcd): the payments job over N
   generated transfers whose labels are flipped with probability SHARE from 40 % to 60 %
   of the input, for several shares. From the job's own model history
   (``models_history.jsonl``) and ledger: the first rollback's input line, hence the
   poisoned transfers until the decision, in event time and in wall time at the run's own
   throughput; the postings the bad versions scored; labels quarantined.
2. **Healthy noise, the model stage alone** (in this process, no Ray: the gate's verdicts
   depend only on the input): K seeds of unpoisoned traffic, every gate window counted,
   and the rollbacks among them (the goal is none).

Labels arrive 5 to 7 s of event time after their transfer (gen-payments' defaults), so no
gate can decide sooner than that after the poison starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from _common import ROOT, machine, runtime

from fusion_jobs.payments.generator import LabelPoison, generate, generate_labels
from fusion_jobs.payments.job import FraudModel, PaymentsOptions, PaymentsSource, payments_pipeline
from resilience.pipeline import PipelineRunner

_TS = re.compile(rb'"ts":(\d+)')


def _ts_of_lines(path: Path) -> dict[int, int]:
    out = {}
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            m = _TS.search(raw)
            if m:
                out[number] = int(m.group(1))
    return out


def poisoned_run(root: Path, etcd: str, events: int, share: float, seed: int
                 ) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "payments.jsonl"
    generate(path, events=events, accounts=10_000, seed=seed)
    poison = LabelPoison(0.4, 0.6, share)
    labels = generate_labels(path, seed=seed, poison=poison)
    workdir = root / "work"
    spec = payments_pipeline(PaymentsOptions(
        path, workdir, parallelism=2, checkpoint_interval_s=1.0,
        job_id=f"bench-rollback-{os.getpid()}-{time.time_ns()}"))
    t0 = time.monotonic()
    with PipelineRunner(spec, etcd) as runner:
        status = runner.wait(timeout_s=1800)
    wall = time.monotonic() - t0
    start = status["restores"][0].get("started_at")
    processing = (status["last_checkpoint"]["at"] - start) if start else wall
    rate = events / processing
    history = [json.loads(line) for line in
               (workdir / "models_history.jsonl").read_text().splitlines()]
    rollbacks = [e for e in history if e["kind"] == "move" and e["alias"] == "serving"
                 and e["evidence"].get("marked_bad")]
    bad = sorted({v for e in rollbacks for v in e["evidence"]["marked_bad"]})
    with sqlite3.connect(f"file:{workdir / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        served_bad = db.execute(
            f"SELECT count(DISTINCT event_id) FROM postings WHERE model_version IN "
            f"({','.join('?' * len(bad)) or 'NULL'})", bad).fetchone()[0]
        scored = db.execute("SELECT count(DISTINCT event_id) FROM postings").fetchone()[0]
    first_bad = labels.first_poisoned_line
    out: dict[str, Any] = {
        "events": events, "share": share, "poisoned_labels": labels.poisoned,
        "poison_lines": [first_bad, labels.last_poisoned_line],
        "lines_per_s": round(rate, 1), "rollbacks": len(rollbacks), "marked_bad": bad,
        "events_scored_by_bad_versions": served_bad, "events_scored": scored,
        "quarantined_labels": len((workdir / "models_quarantine.jsonl").read_text()
                                  .splitlines()),
        "restores": len(status["restores"]) - 1,
    }
    if rollbacks and first_bad is not None:
        at = rollbacks[0]["evidence"]["position"]
        ts = _ts_of_lines(path)
        out.update(
            detected_at_line=at, poisoned_lines_to_decision=at - first_bad,
            event_time_to_decision_s=round((ts[at] - ts[first_bad]) / 1000, 2),
            wall_time_to_decision_s=round((at - first_bad) / rate, 2))
    return out


def healthy(events: int, seed: int, scratch: Path) -> dict[str, Any]:
    root = scratch / f"healthy-{seed}"
    root.mkdir(parents=True, exist_ok=True)
    path = root / "payments.jsonl"
    generate(path, events=events, accounts=10_000, seed=seed)
    generate_labels(path, seed=seed)
    ctx = SimpleNamespace(workdir=root, task_id="source-0", index=0, parallelism=1,
                          job_id="bench")
    source = PaymentsSource(str(path), str(root / "payments.labels.jsonl"))
    source.open(ctx)  # type: ignore[arg-type]
    model = FraudModel()
    done = False
    while not done:
        records, done = source.poll(2000)
        model.process(0, records)
    st = model.book.status()
    source.close()
    return {"seed": seed, "events": events, "windows": st["windows"],
            "rollbacks": st["rollbacks"], "published": st["published"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--shares", default="0.3,0.1")
    ap.add_argument("--healthy-events", type=int, default=200_000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    results: dict[str, Any] = {"machine": machine(), "poisoned": [], "healthy": []}
    with runtime() as (etcd, scratch):
        for i, share in enumerate(float(s) for s in args.shares.split(",")):
            r = poisoned_run(scratch / f"poisoned-{i}", etcd, args.events, share, seed=41 + i)
            results["poisoned"].append(r)
            print(json.dumps(r), flush=True)
        for seed in range(1, args.seeds + 1):
            r = healthy(args.healthy_events, seed, scratch)
            results["healthy"].append(r)
            print(json.dumps(r), flush=True)
    windows = sum(r["windows"] for r in results["healthy"])
    false = sum(r["rollbacks"] for r in results["healthy"])
    results["false_rollbacks_per_1000_windows"] = round(1000 * false / max(windows, 1), 3)
    print()
    for r in results["poisoned"]:
        if "detected_at_line" in r:
            print(f"poison share {r['share']:.0%}: rolled back {r['poisoned_lines_to_decision']:,} "
                  f"poisoned transfers after the poison began = {r['event_time_to_decision_s']} s "
                  f"of event time, {r['wall_time_to_decision_s']} s of traffic at "
                  f"{r['lines_per_s']:,.0f} lines/s; {r['rollbacks']} rollbacks in all; "
                  f"{r['events_scored_by_bad_versions']:,} of {r['events_scored']:,} transfers "
                  f"scored by a bad version; {r['quarantined_labels']:,} labels quarantined")
        else:
            print(f"poison share {r['share']:.0%}: NOT rolled back ({r})")
    print(f"healthy: {false} rollbacks in {windows:,} gate windows over {len(results['healthy'])} "
          f"seeds = {results['false_rollbacks_per_1000_windows']} per 1,000 windows")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
