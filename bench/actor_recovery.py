"""Recovery time of a `@resilient` actor: SIGKILL to the next successful call.

    .venv/bin/python bench/actor_recovery.py [--kills K]

Three setups, each killed K times: plain Ray (max_restarts, max_task_retries; state
lost, shown for scale), `@resilient` with `restart()` (a cold restart: a new
process, state restored from snapshot + log), and `@resilient` with `standby(1)`
(a warm replica following the log is promoted). The clock starts at os.kill and
stops when a call issued right after the kill returns. Goal: standby < 0.3 s median.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time

import ray
from _common import machine, median

from resilience import ray_session
from resilience import resilient
from resilience.policies import every, restart, standby


class Counter:
    def __init__(self) -> None:
        self.total = 0

    def add(self, x: int) -> int:
        self.total += x
        return self.total

    def pid(self) -> int:
        return os.getpid()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=7)
    args = ap.parse_args()
    store = tempfile.mkdtemp(prefix="bench-actor-recovery-")
    results: dict[str, list[float]] = {}
    with ray_session():
        plain = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Counter).remote()
        cold = resilient(store=store, failover=restart(max=100), checkpoint=every(calls=1000))(
            type("Cold", (Counter,), {})).remote()
        warm = resilient(store=store, failover=standby(1) | restart(max=100),
                         checkpoint=every(calls=1000))(type("Warm", (Counter,), {})).remote()

        def plain_once() -> float:
            ray.get([plain.add.remote(1) for _ in range(200)])
            pid = ray.get(plain.pid.remote())
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            ray.get(plain.add.remote(1))
            return time.perf_counter() - t0

        def resilient_once(handle: object) -> float:
            resilient.get([handle.add.remote(1) for _ in range(200)])  # type: ignore[attr-defined]
            time.sleep(0.3)  # let a restarted replica finish starting: kill a steady state
            pid = resilient.ping(handle)["pid"]  # type: ignore[arg-type]
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            handle.add.call(1)  # type: ignore[attr-defined]
            return time.perf_counter() - t0

        setups = {"plain Ray restart (state lost)": plain_once,
                  "@resilient restart()": lambda: resilient_once(cold),
                  "@resilient standby(1)": lambda: resilient_once(warm)}
        for k in range(args.kills):
            for name, once in setups.items():
                results.setdefault(name, []).append(once())
            print(f"  kill {k + 1}: " + ", ".join(f"{n} {v[-1]:.3f}s"
                                                  for n, v in results.items()), flush=True)
            time.sleep(1.5)  # killed replicas come back (as standbys) before the next kill
        print(f"\nSIGKILL to the next successful call, {args.kills} kills each, {machine()}")
        for name, values in results.items():
            print(f"  {name:32} median {median(values):.3f}s  max {max(values):.3f}s")


if __name__ == "__main__":
    main()
