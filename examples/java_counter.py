"""A Java actor with exactly-once calls: SIGKILL its JVM mid-stream, lose nothing.

    .venv/bin/python examples/java_counter.py

Needs a JDK 17 (``make java`` builds the jar; the first run here builds it too). The
Java class is ``io.fusionresilience.Counter`` (java/src): it implements
``ResilientState`` (snapshot to MessagePack, restore, apply a named call). Your own
class does the same; put its jar on the session's ``code_search_path``.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile

import ray

from resilience import java_actor, ray_session, resilient
from resilience.java import java_unavailable_reason
from resilience.policies import every, restart


def main() -> int:
    reason = java_unavailable_reason()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    with tempfile.TemporaryDirectory() as store, ray_session():
        Counter = java_actor("io.fusionresilience.Counter", checkpoint=every(calls=500),  # noqa: N806
                             failover=restart(max=10), store=store)
        counter = Counter.options(name="payments-counter").remote()
        refs = []
        for i in range(3_000):
            refs.append(counter.apply.remote("add", 1))
            if i == 1_500:
                jvm = counter.jvm_pid.call()
                print(f"SIGKILL of the JVM (pid {jvm}) after {i} calls were sent")
                os.kill(jvm, signal.SIGKILL)
        results = ray.get(refs)
        total = counter.apply.call("get")
        print(f"{len(results)} calls, {len(set(results))} distinct results, total {total}")
        ok = sorted(results) == list(range(1, 3_001)) and total == 3_000
        print("exactly once" if ok else "NOT exactly once")
        print(f"state as stored (MessagePack from Java): {resilient.state(counter)['msgpack']!r}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
