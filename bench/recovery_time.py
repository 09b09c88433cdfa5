"""Recovery time: from a SIGKILL of a stateful worker to the first new ledger commit.

    .venv/bin/python bench/recovery_time.py [--kills K] [--events N] [--jvm]

With --jvm the balance stage runs in Java and the kills hit its JVMs (not the Python
tasks hosting them).

A thread polls the ledger itself (SQLite, every 5 ms, read-only) and records when
each checkpoint id becomes committed there. For every kill, the clock starts at
os.kill and stops when the ledger shows the first commit of a checkpoint taken
after the restore (the first checkpoint of the restore's generation). Kills rotate
over the stateful tasks; the median and the worst case are reported, with the
phases from the coordinator: detection (kill to restore start) and the restore.
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

from resilience.pipeline import PipelineRunner
from fusion_jobs.payments.generator import generate
from fusion_jobs.payments.job import PaymentsOptions, payments_pipeline

TARGETS = ["balances-0", "model-0", "ledger-0", "source-0", "balances-1"]
JVM_TARGETS = ["balances-0", "balances-1"]


def last_committed(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            row = db.execute("SELECT max(last_committed) FROM _resilience_sinks").fetchone()
            return int(row[0] or 0)
    except sqlite3.Error:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--events", type=int, default=600_000)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--jvm", action="store_true",
                    help="Java balance stage; SIGKILL its JVMs")
    ap.add_argument("--no-standby", action="store_true",
                    help="with --jvm: no warm spare JVM (Ray restarts the dead one)")
    args = ap.parse_args()
    with runtime() as (etcd, scratch):
        src = scratch / "payments.jsonl"
        generate(src, events=args.events, accounts=10_000, seed=7)
        workdir = scratch / "job"
        spec = payments_pipeline(PaymentsOptions(src, workdir, parallelism=2,
                                                 checkpoint_interval_s=args.interval,
                                                 job_id=f"recovery-{time.time_ns()}",
                                                 balances_stage="java" if args.jvm
                                                 else "python",
                                                 java_standby=not args.no_standby))
        ledger = workdir / "ledger.sqlite"
        seen: dict[int, float] = {}  # checkpoint id -> when the ledger showed it committed
        kills: list[tuple[str, float]] = []
        done = threading.Event()

        def poll() -> None:
            last = 0
            while not done.is_set():
                now = last_committed(ledger)
                if now > last:
                    seen.setdefault(now, time.time())
                    last = now
                time.sleep(0.005)

        with PipelineRunner(spec, etcd) as runner:
            def chaos() -> None:
                for i in range(args.kills):
                    while True:  # steady state: running, restored from the last kill
                        st = runner.status() or {}
                        if st.get("finished"):
                            return
                        if (st.get("state") == "running" and len(st["restores"]) == i + 1
                                and st.get("checkpoints_completed", 0) >= 2 * (i + 1)):
                            break
                        time.sleep(0.01)
                    time.sleep(1.0)
                    if args.jvm:
                        target = JVM_TARGETS[i % len(JVM_TARGETS)]
                        pid = runner.helper_pids()[target]["java"]
                        target = f"java:{target}"
                    else:
                        target = TARGETS[i % len(TARGETS)]
                        pid = runner.pids()[target]
                    kills.append((target, time.time()))
                    os.kill(pid, signal.SIGKILL)

            threads = [threading.Thread(target=poll, daemon=True),
                       threading.Thread(target=chaos, daemon=True)]
            for t in threads:
                t.start()
            status = runner.wait(timeout_s=3600)
            done.set()
            for t in threads:
                t.join(timeout=60)
        samples: list[dict[str, Any]] = []
        restores = status["restores"][1:]
        for (target, t_kill), restore in zip(kills, restores, strict=False):
            first = min((h["checkpoint_id"] for h in status["checkpoint_history"]
                         if h["generation"] == restore["generation"]), default=None)
            committed = [t for cid, t in seen.items() if first is not None and cid >= first]
            if not committed:
                continue
            total = min(committed) - t_kill
            samples.append({"target": target, "total_s": total,
                            "detect_s": restore["started_at"] - t_kill,
                            "restore_s": restore["duration_s"]})
            print(f"  kill {len(samples)} {target}: {total:.2f}s to the first new commit "
                  f"(detected after {restore['started_at'] - t_kill:.2f}s, restore "
                  f"{restore['duration_s']:.2f}s)", flush=True)
        totals = [s["total_s"] for s in samples]
        what = (" of a JVM" + (" (no standby)" if args.no_standby else " (standby JVM)")
                if args.jvm else "")
        print(f"\nrecovery from SIGKILL{what} to the next ledger "
              f"commit, checkpoint every "
              f"{args.interval:g}s, payments P=2, {args.events:,} events, {machine()}")
        print(f"  kills: {len(samples)}; median {median(totals):.2f}s, "
              f"max {max(totals, default=float('nan')):.2f}s")
        print(f"  median detection (kill -> restore start): "
              f"{median([s['detect_s'] for s in samples]):.2f}s; "
              f"median restore (includes Ray restarting the process): "
              f"{median([s['restore_s'] for s in samples]):.2f}s")


if __name__ == "__main__":
    main()
