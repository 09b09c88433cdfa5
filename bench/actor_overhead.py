"""Call overhead of `@resilient` on a small actor method, against plain Ray, in one run.

    .venv/bin/python bench/actor_overhead.py [--calls N] [--rounds R]

Four actors with the same class and method (add an int to a counter): plain Ray,
`@resilient(log=False)` (snapshots only), `@resilient` (write-ahead log, fsync
group commit) and `@resilient(format="msgpack")` (the same, MessagePack instead of
pickle for the log and snapshots). Each round measures, for each actor, N calls
submitted in windows of 100 concurrent calls (throughput) and 300 sequential calls
(latency); rounds are interleaved and medians reported. The fsync batch size is calls per flush.
Targets: log off <= 1.10x plain Ray, log on <= 2x.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import ray
from _common import machine, median

from resilience import ray_session
from resilience import resilient
from resilience.policies import every, restart


class Counter:
    def __init__(self) -> None:
        self.total = 0

    def add(self, x: int) -> int:
        self.total += x
        return self.total


def timed(submit, n: int, window: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for i in range(0, n, window):
        ray.get([submit() for _ in range(min(window, n - i))])
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=5_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    store = tempfile.mkdtemp(prefix="bench-actors-")
    with ray_session():
        plain = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Counter).remote()
        policy = {"checkpoint": every(seconds=1) | every(calls=10_000),
                  "failover": restart(max=10), "store": store}
        no_log = resilient(log=False, **policy)(type("NoLog", (Counter,), {})).remote()
        logged = resilient(**policy)(type("Logged", (Counter,), {})).remote()
        packed = resilient(format="msgpack", **policy)(type("Packed", (Counter,), {})).remote()
        subjects = {
            "plain Ray": lambda: plain.add.remote(1),
            "resilient, log off": lambda: no_log.add.remote(1),
            "resilient, log on": lambda: logged.add.remote(1),
            "log on, msgpack": lambda: packed.add.remote(1),
        }
        for s in subjects.values():  # warm up
            timed(s, 500, 100)
        thr: dict[str, list[float]] = {k: [] for k in subjects}
        lat: dict[str, list[float]] = {k: [] for k in subjects}
        flushes_before = resilient.ping(logged)["flushes"]
        calls_before = resilient.ping(logged)["completed"]
        for r in range(args.rounds):
            for name, submit in subjects.items():
                thr[name].append(timed(submit, args.calls, 100))
                lat[name].append(timed(submit, 300, 1))
            print(f"  round {r + 1}: " + ", ".join(
                f"{k} {thr[k][-1] * 1e6:.0f}us/{lat[k][-1] * 1e6:.0f}us" for k in subjects),
                flush=True)
        st = resilient.ping(logged)
        batch = (st["completed"] - calls_before) / max(st["flushes"] - flushes_before, 1)
        base_t, base_l = median(thr["plain Ray"]), median(lat["plain Ray"])
        print(f"\n@resilient call overhead vs plain Ray, {machine()}")
        print(f"  {'':22} {'pipelined us/call':>18} {'ratio':>6} {'sequential us/call':>19}"
              f" {'ratio':>6}")
        for name in subjects:
            t, lt = median(thr[name]), median(lat[name])
            print(f"  {name:22} {t * 1e6:>18.0f} {t / base_t:>6.2f} {lt * 1e6:>19.0f}"
                  f" {lt / base_l:>6.2f}")
        print(f"  fsync group-commit batch (log on, all calls): {batch:.1f} calls per fsync")


if __name__ == "__main__":
    main()
