"""`java_actor`: a user's Java class with exactly-once calls across JVM SIGKILLs.

The Java Counter's ``add(1)`` returns the total right after it, so the results of all
calls from all callers must be exactly 1..N: a call applied twice leaves a gap, a
result delivered twice a repeat.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
import ray

from resilience import JavaCallError, java_actor, resilient
from resilience._java._bridge import COUNTER
from resilience.policies import every, restart
from resilience.testing import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.java]


@pytest.fixture
def java_ready(ray_local: str, java_jar: Path) -> None:
    """The session's Ray has the project's jar (see tests/java/conftest.py)."""


@ray.remote(num_cpus=0)
def _caller(handle: Any, n: int) -> list[int]:
    out: list[int] = []
    for i in range(0, n, 25):
        out.extend(ray.get([handle.apply.remote("add", 1) for _ in range(i, min(i + 25, n))]))
    return out


def test_two_callers_and_repeated_jvm_sigkills_apply_each_call_once(
    tmp_path: Path, java_ready: None
) -> None:
    counter = java_actor(COUNTER, checkpoint=every(calls=150), failover=restart(max=20),
                         store=tmp_path).options(name="java-counter").remote()
    n_each = 1_000
    callers = [_caller.remote(counter, n_each) for _ in range(2)]
    jvms = []
    for threshold in (300, 900, 1_500):
        wait_until(lambda t=threshold: resilient.ping(counter)["applied_seq"] >= t,
                   timeout_s=120, message=f"calls stalled before {threshold}")
        jvm = counter.jvm_pid.call()
        os.kill(jvm, signal.SIGKILL)
        jvms.append(jvm)
    results = ray.get(callers, timeout=300)
    assert len(set(jvms)) == 3  # three different JVMs died
    assert all(len(r) == n_each for r in results)
    assert sorted(r for rs in results for r in rs) == list(range(1, 2 * n_each + 1))
    assert counter.apply.call("get") == 2 * n_each
    # The snapshot is the Java class's own MessagePack, readable from Python.
    state = resilient.state(counter)
    assert state["class"] == COUNTER
    assert msgpack.unpackb(state["msgpack"], raw=False) == {"total": 2 * n_each}


def test_a_java_exception_is_the_calls_outcome_and_changes_nothing(
    tmp_path: Path, java_ready: None
) -> None:
    counter = java_actor(COUNTER, failover=restart(max=3), store=tmp_path).remote()
    assert counter.apply.call("add", 2**62) == 2**62
    with pytest.raises(JavaCallError, match=r"Counter\.add threw: java\.lang\.Arithmetic"):
        counter.apply.call("add", 2**62)
    with pytest.raises(JavaCallError, match="has no method 'mul'"):
        counter.apply.call("mul", 2)
    assert counter.apply.call("get") == 2**62


def test_a_class_that_is_not_resilient_state_is_refused_with_javas_reason(
    tmp_path: Path, java_ready: None
) -> None:
    with pytest.raises(Exception, match=r"java\.lang\.String does not implement"):
        java_actor("java.lang.String", failover=restart(max=1), store=tmp_path).remote()


def test_the_java_side_reads_and_restores_a_snapshot_without_python(
    tmp_path: Path, java_ready: None, java_jar: Path
) -> None:
    from checkpoint import FileSystemStore
    from resilience._java._bridge import ray_dist_jar

    counter = java_actor(COUNTER, checkpoint=every(calls=5), store=tmp_path / "store"
                         ).options(name="java-inspected").remote()
    for _ in range(12):
        counter.apply.call("add", 7)
    with pytest.raises(JavaCallError):
        counter.apply.call("mul", 2)  # call 13: a recorded error is plain data too
    for _ in range(3):
        counter.apply.call("add", 7)
    store = FileSystemStore(tmp_path / "store", job_id="java-inspected")
    wait_until(lambda: store.list_checkpoints()[-1] > 14, timeout_s=60,
               message="no snapshot after the 13th call")
    manifest = store.get_manifest(store.list_checkpoints()[-1])
    chunk = store.chunk_path(manifest.tasks["state"].chunks[0])
    inspect = ["java", "-cp", f"{java_jar}{os.pathsep}{ray_dist_jar()}",
               "io.fusionresilience.Inspect"]
    done = subprocess.run([*inspect, "--restore", str(chunk)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    seq = manifest.checkpoint_id - 1
    assert report == {"class": COUNTER, "seq": seq, "results": seq,
                      "state": {"total": 7 * (seq - 1)}, "restored": True}
    # A file that is not such a snapshot: one line, exit 2, no stack trace.
    bogus = tmp_path / "bogus"
    bogus.write_bytes(pickle.dumps({"state": 1}))
    done = subprocess.run([*inspect, str(bogus)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"{bogus}: not a MessagePack actor snapshot "
                                   "(no 0xC1 marker byte; a pickle snapshot?)")
