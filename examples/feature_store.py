"""An existing Ray actor made exactly-once with one decorator, its method bodies untouched.

    .venv/bin/python examples/feature_store.py

`FeatureStore` below is an ordinary Ray actor a fraud team might already run: it keeps
per-account features updated by a stream of transactions and read by a scorer. The
only change is the `@resilient(...)` line above `@ray.remote`. The script then kills
the actor's process twice while two writers update it, and checks that every update
was applied exactly once: the counts match what the writers sent.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray

from resilience import ray_session, resilient
from resilience.policies import every, restart, standby

STORE = Path(tempfile.mkdtemp(prefix="feature-store-"))


@resilient(checkpoint=every(seconds=1) | every(calls=5_000),
           failover=standby(1) | restart(max=10), read_only=("features",), store=STORE)
@ray.remote(num_cpus=0)
class FeatureStore:
    """Per-account rolling features: transaction count, total amount, largest amount."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.largest: dict[str, int] = {}

    def observe(self, account: str, amount: int) -> int:
        self.count[account] = self.count.get(account, 0) + 1
        self.total[account] = self.total.get(account, 0) + amount
        self.largest[account] = max(self.largest.get(account, 0), amount)
        return self.count[account]

    def features(self, account: str) -> dict[str, float]:
        n = self.count.get(account, 0)
        return {"count": n, "mean": self.total.get(account, 0) / n if n else 0.0,
                "largest": self.largest.get(account, 0)}


@ray.remote(num_cpus=0)
def writer(store: object, accounts: list[str], rounds: int) -> int:
    sent = 0
    for r in range(rounds):
        refs = [store.observe.remote(a, 100 + r) for a in accounts]  # type: ignore[attr-defined]
        resilient.get(refs)
        sent += len(refs)
    return sent


def main() -> int:
    with ray_session():
        store = FeatureStore.remote()
        accounts_a = [f"acct-{i:03d}" for i in range(50)]
        accounts_b = [f"acct-{i:03d}" for i in range(25, 75)]  # overlapping accounts
        writers = [writer.remote(store, accounts_a, 60), writer.remote(store, accounts_b, 60)]
        for _ in range(2):
            time.sleep(1.0)
            pid = resilient.ping(store)["pid"]
            os.kill(pid, signal.SIGKILL)
            print(f"killed the feature store's primary (pid {pid})")
        sent = sum(ray.get(writers))
        state = resilient.state(store)
        applied = sum(state["count"].values())
        both = store.features.call("acct-030")
        print(f"updates sent {sent}, applied {applied}; acct-030 features {both}")
        now = resilient.ping(store)
        print(f"now served by replica {now['index']} (epoch {now['epoch']}, pid {now['pid']})")
        ok = applied == sent and both["count"] == 120
        print("exactly once" if ok else "MISMATCH")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
