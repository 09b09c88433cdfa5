"""Java against Python, side by side: stage throughput and actor recovery.

    .venv/bin/python bench/java_stage.py [--events N] [--repeat R] [--kills K]

1. The payments job with its balance stage in Python and in Java (--balances-stage),
   same input, runs interleaved (py, java, py, java ...), checkpoint every 1 s, P=2.
   Reported: events/s of each (median) and the ratio java / python.
2. Java actor recovery, SIGKILL of the JVM to the next successful call, for a Java
   Counter under `java_actor` with `restart()` (a cold restart: new twin, new JVM,
   snapshot + log replayed) and with `standby(1)` (a warm twin with its own JVM that
   follows the log is promoted).
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from pathlib import Path

from _common import machine, median, runtime
from payments_throughput import run_once

from resilience import java_actor, resilient
from resilience.java import COUNTER, java_unavailable_reason

from fusion_jobs.payments.generator import generate
from resilience.policies import every, restart, standby


def throughput(etcd: str, scratch: Path, events: int, repeat: int) -> None:
    src = scratch / "payments.jsonl"
    generate(src, events=events, accounts=10_000, seed=42)
    results: dict[str, list[float]] = {"python": [], "java": []}
    for r in range(repeat):
        for stage in ("python", "java"):
            res = run_once(src, scratch / f"{stage}-{r}", etcd, 2, 1.0,
                           f"java-bench-{stage}", balances_stage=stage)
            results[stage].append(res["events_per_s"])
            print(f"  run {r + 1} {stage:6}: {res['events_per_s']:,.0f} events/s "
                  f"(start-up {res['startup_s']:.1f}s)", flush=True)
    py, jv = median(results["python"]), median(results["java"])
    print(f"\nbalance stage throughput, payments job, {events:,} events, P=2, checkpoint "
          f"every 1 s, median of {repeat}, {machine()}")
    print(f"  python {py:,.0f} events/s, java {jv:,.0f} events/s, java / python = {jv / py:.2f}")


def recovery(kills: int) -> None:
    store = tempfile.mkdtemp(prefix="bench-java-recovery-")
    cold = java_actor(COUNTER, store=store, failover=restart(max=100),
                      checkpoint=every(calls=1000)).options(name="java-cold").remote()
    warm = java_actor(COUNTER, store=store, failover=standby(1) | restart(max=100),
                      checkpoint=every(calls=1000)).options(name="java-warm").remote()
    results: dict[str, list[float]] = {}

    def once(handle: object) -> float:
        resilient.get([handle.apply.remote("add", 1) for _ in range(200)])  # type: ignore[attr-defined]
        time.sleep(0.5)  # a replaced replica finishes starting: kill a steady state
        jvm = handle.jvm_pid.call()  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        os.kill(jvm, signal.SIGKILL)
        handle.apply.call("add", 1)  # type: ignore[attr-defined]
        return time.perf_counter() - t0

    setups = {"java_actor restart()": cold, "java_actor standby(1)": warm}
    for k in range(kills):
        for name, handle in setups.items():
            results.setdefault(name, []).append(once(handle))
        print(f"  kill {k + 1}: " + ", ".join(f"{n} {v[-1]:.3f}s" for n, v in results.items()),
              flush=True)
        time.sleep(2.0)  # killed replicas come back (as standbys) before the next kill
    print(f"\nSIGKILL of the JVM to the next successful call, {kills} kills each, {machine()}")
    for name, values in results.items():
        print(f"  {name:24} median {median(values):.3f}s  max {max(values):.3f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--kills", type=int, default=5)
    args = ap.parse_args()
    reason = java_unavailable_reason()
    if reason is not None:
        raise SystemExit(f"java_stage: {reason}")
    with runtime() as (etcd, scratch):
        if args.kills:
            recovery(args.kills)
        throughput(etcd, scratch, args.events, args.repeat)


if __name__ == "__main__":
    main()
