"""Recovery time: from a SIGKILL of a stateful worker to the first new ledger commit.

    .venv/bin/python bench/recovery_time.py [--kills K] [--events N]

The clock starts at os.kill and stops when the ledger itself shows new rows
committed after the restore (SQLite polled every 5 ms, independent of the
job's own status). Kills rotate over the stateful tasks; the median and
the worst case are reported, and the phases (failure detection + restore, and
the wait for the next checkpoint to complete) from the coordinator's status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from _common import machine, median, runtime

from resilience._runtime._driver import PipelineRunner
from resilience.jobs.payments.generator import generate
from resilience.jobs.payments.job import PaymentsOptions, payments_pipeline

TARGETS = ["balances-0", "model-0", "ledger-0", "source-0", "balances-1"]


def committed_rows(path: Path) -> int:
    """Rows visible in the ledger (rowids grow with every commit)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT max(rowid) FROM postings").fetchone()
            return int(row[0] or 0)
    except sqlite3.Error:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    with runtime() as (etcd, scratch):
        src = scratch / "payments.jsonl"
        generate(src, events=args.events, accounts=10_000, seed=7)
        workdir = scratch / "job"
        spec = payments_pipeline(PaymentsOptions(src, workdir, parallelism=2,
                                                 checkpoint_interval_s=args.interval,
                                                 job_id=f"recovery-{time.time_ns()}"))
        ledger = workdir / "ledger.sqlite"
        samples: list[dict[str, Any]] = []
        with PipelineRunner(spec, etcd) as runner:
            def chaos() -> None:
                for i in range(args.kills):
                    while True:
                        st = runner.status() or {}
                        if st.get("finished"):
                            return
                        steady = (st.get("state") == "running"
                                  and st.get("checkpoints_completed", 0) >= 2
                                  and len(st["restores"]) == i + 1)
                        if steady:
                            break
                        time.sleep(0.01)
                    time.sleep(1.5)  # steady state between kills
                    target = TARGETS[i % len(TARGETS)]
                    pid = runner.pids()[target]
                    t_kill = time.time()
                    os.kill(pid, signal.SIGKILL)
                    # Rows visible at the kill; the first commit after the restore adds
                    # rows (a commit that raced the kill may add some first: wait for the
                    # restore, then for rows beyond what was visible then).
                    while len((runner.status() or {}).get("restores", [])) < i + 2:
                        time.sleep(0.005)
                    floor = committed_rows(ledger)
                    while committed_rows(ledger) <= floor:
                        time.sleep(0.005)
                    t_commit = time.time()
                    restore = (runner.status() or {})["restores"][-1]
                    samples.append({"target": target, "total_s": t_commit - t_kill,
                                    "restore_started_after_s": restore["started_at"] - t_kill,
                                    "restore_s": restore["duration_s"]})
                    print(f"  kill {i + 1} {target}: {t_commit - t_kill:.2f}s to the next commit "
                          f"(restore began {restore['started_at'] - t_kill:.2f}s after the kill, "
                          f"took {restore['duration_s']:.2f}s)", flush=True)

            t = threading.Thread(target=chaos, daemon=True)
            t.start()
            runner.wait(timeout_s=3600)
            t.join(timeout=60)
        totals = [s["total_s"] for s in samples]
        print(f"\nrecovery from SIGKILL to the next ledger commit, checkpoint every "
              f"{args.interval:g}s, payments P=2, {machine()}")
        print(f"  kills: {len(samples)}; median {median(totals):.2f}s, max {max(totals):.2f}s")
        print(f"  median detection (kill -> restore start): "
              f"{median([s['restore_started_after_s'] for s in samples]):.2f}s; "
              f"median restore: {median([s['restore_s'] for s in samples]):.2f}s")


if __name__ == "__main__":
    main()
