"""The Java library through Ray's cross-language calls, checked against the Python job.

The reference for `BalancesStage` is the payments job's own Python `Balances` operator:
the same legs must give the same records, the same deltas and, after a SIGKILL and a
restore, the same state. Snapshots must be plain MessagePack, byte-equal to what the
Python helpers write for the same value.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from fusion_jobs.payments.java_balances import BALANCES_STAGE
from fusion_jobs.payments.job import Balances
from resilience._java._bridge import (
    COUNTER,
    JAR_NAME,
    RESILIENT_HOST,
    JavaBuildError,
    call,
    ensure_java_built,
    java_unavailable_reason,
    pack,
    pack_args,
    pack_long_map,
    unpack,
    unpack_long_map,
)
from resilience.testing import process_state, wait_until

ROOT = Path(__file__).resolve().parents[2]
CALL_TIMEOUT_S = 120.0
ActorFactory = Callable[..., Any]  # the `java_actors` fixture (tests/java/conftest.py)


def get(ref: Any) -> Any:
    import ray

    return ray.get(ref, timeout=CALL_TIMEOUT_S)


def make_legs(rng: random.Random, first_line: int, n: int, accounts: int = 300) -> list[list[Any]]:
    """Legs as the model stage emits them: [line_no, tx_id, account, delta, score]."""
    names = [f"acct-{i:04d}" for i in range(accounts)] + ["Zoë", "账户", "a b"]
    legs: list[list[Any]] = []
    for line in range(first_line, first_line + n):
        account = rng.choice(names)
        delta = rng.randint(-(10**9), 10**9)
        legs.append([line, f"tx-{line}", account, delta, rng.random()])
    return legs


def reference_process(ref: Balances, legs: list[list[Any]]) -> list[list[Any]]:
    """The Python stage's output for `legs` (its legs also carry the model version, which
    the row API of the Java stage does not: given as 1 here, and dropped)."""
    return [list(record[:6]) for record in ref.process(0, [(*leg, 1) for leg in legs])]


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
    return process_state(pid) not in (None, "Z")


# -- BalancesStage ------------------------------------------------------------------------


@pytest.mark.java
@pytest.mark.ray
class TestBalancesStage:
    def test_process_and_deltas_match_python(self, java_actors: ActorFactory) -> None:
        stage = java_actors(BALANCES_STAGE)
        ref = Balances()
        rng = random.Random(7)
        line = 0
        for checkpoint_id in (1, 2):
            legs = make_legs(rng, line, 2000)
            line += len(legs)
            out = unpack(get(call(stage, "process", pack(legs))))
            assert out == reference_process(ref, legs)
            delta = unpack(get(call(stage, "snapshotDelta")))
            changed = ref.state.begin_snapshot(checkpoint_id).changed
            assert delta == {"set": changed, "del": [], "keys": len(ref.state)}
        # Nothing changed since the last delta: an empty one.
        assert unpack(get(call(stage, "snapshotDelta"))) == (
            {"set": {}, "del": [], "keys": len(ref.state)}
        )
        assert get(call(stage, "size")) == len(ref.state)
        assert unpack_long_map(get(call(stage, "snapshot"))) == dict(ref.state.items())

    def test_the_column_batch_matches_python_and_refuses_bad_input_whole(
        self, java_actors: ActorFactory
    ) -> None:
        import ray

        stage = java_actors(BALANCES_STAGE)
        ref = Balances()
        legs = make_legs(random.Random(17), 0, 3000)
        columns = pack([[leg[2] for leg in legs], [leg[3] for leg in legs]])
        after = unpack(get(call(stage, "processColumns", columns)))
        assert after == [r[4] for r in reference_process(ref, legs)]
        before = get(call(stage, "size"))
        for bad, message in [
            (pack([["a", "b"], [1]]), "differ in length"),
            (pack([["a"], [2**62], ["x"]]), "expected \\[accounts, deltas\\]"),
            (pack([["a", "a"], [2**62, 2**62]]), "long overflow"),
        ]:
            with pytest.raises(ray.exceptions.CrossLanguageError, match=message):
                get(call(stage, "processColumns", bad, retries=0))
        assert get(call(stage, "size")) == before  # nothing of a refused batch applied
        assert unpack_long_map(get(call(stage, "snapshot"))) == dict(ref.state.items())

    def test_only_accounts_of_the_interval_are_in_a_delta(
        self, java_actors: ActorFactory
    ) -> None:
        stage = java_actors(BALANCES_STAGE)
        get(call(stage, "process", pack([[1, "t1", "a", 5, 0.1], [2, "t2", "b", 7, 0.2]])))
        get(call(stage, "snapshotDelta"))
        get(call(stage, "process", pack([[3, "t3", "b", -2, 0.3], [4, "t4", "b", 0, 0.4]])))
        assert unpack(get(call(stage, "snapshotDelta"))) == {"set": {"b": 5}, "del": [], "keys": 2}

    def test_snapshots_are_plain_msgpack(self, java_actors: ActorFactory) -> None:
        stage = java_actors(BALANCES_STAGE)
        ref = Balances()
        legs = make_legs(random.Random(3), 0, 500)
        reference_process(ref, legs)
        get(call(stage, "process", pack(legs)))
        full = dict(ref.state.items())

        snapshot = get(call(stage, "snapshot"))
        delta = get(call(stage, "snapshotDelta"))
        # Python's own msgpack reads both, with str keys and int values ...
        assert msgpack.unpackb(snapshot, raw=False) == full
        assert msgpack.unpackb(delta, raw=False) == {"set": full, "del": [], "keys": len(full)}
        # ... and both languages write the very same bytes for the same value.
        assert snapshot == pack_long_map(full)
        assert delta == pack({"set": full, "del": [], "keys": len(full)})

    def test_restore_replaces_the_state_and_clears_the_delta(
        self, java_actors: ActorFactory
    ) -> None:
        rng = random.Random(11)
        ref = Balances()
        legs = make_legs(rng, 0, 2000)
        reference_process(ref, legs)
        saved = dict(ref.state.items())
        ref.state.begin_snapshot(1)

        stage = java_actors(BALANCES_STAGE)
        get(call(stage, "process", pack([[0, "t", "not-in-the-snapshot", 1, 0.0]])))
        assert get(call(stage, "restore", pack_long_map(saved))) == len(saved)
        assert unpack_long_map(get(call(stage, "snapshot"))) == saved
        assert unpack(get(call(stage, "snapshotDelta"))) == (
            {"set": {}, "del": [], "keys": len(saved)}
        )

        more = make_legs(rng, 2000, 2000)
        assert unpack(get(call(stage, "process", pack(more)))) == reference_process(ref, more)
        delta = unpack(get(call(stage, "snapshotDelta")))
        assert delta == (
            {"set": ref.state.begin_snapshot(2).changed, "del": [], "keys": len(ref.state)}
        )

    def test_sigkill_restarts_empty_and_restore_brings_the_state_back(
        self, java_actors: ActorFactory
    ) -> None:
        rng = random.Random(5)
        ref = Balances()
        stage = java_actors(BALANCES_STAGE)
        legs = make_legs(rng, 0, 2000)
        get(call(stage, "process", pack(legs)))
        reference_process(ref, legs)
        saved = get(call(stage, "snapshot"))
        assert get(call(stage, "restarted")) is False
        pid = get(call(stage, "pid"))

        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), timeout_s=10, message=f"pid {pid} survived")

        # retries=-1: the call waits for Ray's restart and runs on the new, empty actor.
        assert get(call(stage, "size")) == 0
        assert get(call(stage, "restarted")) is True
        assert get(call(stage, "pid")) != pid

        assert get(call(stage, "restore", saved)) == len(ref.state)
        more = make_legs(rng, 2000, 2000)
        assert unpack(get(call(stage, "process", pack(more)))) == reference_process(ref, more)
        assert unpack_long_map(get(call(stage, "snapshot"))) == dict(ref.state.items())

    def test_a_failing_restore_reaches_python_and_changes_nothing(
        self, java_actors: ActorFactory
    ) -> None:
        import ray

        stage = java_actors("io.fusionresilience.BalancesStageDrill")  # tests' own subclass
        get(call(stage, "process", pack([[1, "t1", "a", 5, 0.5]])))
        assert get(call(stage, "failNextRestore", True)) is False

        with pytest.raises(ray.exceptions.CrossLanguageError,
                           match=r"(?s)IllegalStateException: .*failNextRestore\(true\)"):
            get(call(stage, "restore", pack_long_map({"a": 1, "b": 2}), retries=0))
        # The actor lived through it, its state untouched; the hook fired once only.
        assert unpack_long_map(get(call(stage, "snapshot"))) == {"a": 5}
        assert get(call(stage, "restore", pack_long_map({"a": 1, "b": 2}))) == 2

    def test_restore_refuses_bytes_it_cannot_decode(self, java_actors: ActorFactory) -> None:
        import ray

        stage = java_actors(BALANCES_STAGE)
        get(call(stage, "restore", pack_long_map({"kept": 9})))
        cases = [
            (b"\xc1", "not valid MessagePack"),
            (pack([1, 2]), "expected a MessagePack map of str to int, got array"),
            (pack({"a": "x"}), "value of key 'a' must be an int, got str"),
            (pack({"a": 2**63}), "value of key 'a' is out of the 64-bit signed range"),
            (pack({"a": 1}) + b"\x00", "trailing bytes"),
        ]
        for state, message in cases:
            with pytest.raises(ray.exceptions.CrossLanguageError, match=message):
                get(call(stage, "restore", state, retries=0))
            assert unpack_long_map(get(call(stage, "snapshot"))) == {"kept": 9}, message

    def test_a_bad_batch_is_refused_whole(self, java_actors: ActorFactory) -> None:
        import ray

        stage = java_actors(BALANCES_STAGE)
        cases = [
            (pack([[1, "t", "a", 5]]), "leg 0 has 4 fields, expected 5"),
            (pack([[1, "t", "a", 5, 0.5], [2, "t", 3, 5, 0.5]]), "bad leg 1"),
            (pack([[1, "t", "a", 2**62, 0.5], [2, "t", "a", 2**62, 0.5]]), "long overflow"),
            (pack({"legs": []}), "bad array header"),
        ]
        for legs, message in cases:
            with pytest.raises(ray.exceptions.CrossLanguageError, match=message):
                get(call(stage, "process", legs, retries=0))
            assert get(call(stage, "size")) == 0, message
            assert unpack(get(call(stage, "snapshotDelta"))) == (
                {"set": {}, "del": [], "keys": 0}
            ), message

    def test_integer_scores_are_accepted_as_floats(self, java_actors: ActorFactory) -> None:
        stage = java_actors(BALANCES_STAGE)
        out = unpack(get(call(stage, "process", pack([[1, "t", "a", 5, 0]]))))
        assert out == [[1, "t", "a", 5, 5, 0.0]]
        assert isinstance(out[0][5], float)


# -- ResilientHost + Counter ------------------------------------------------------------------


@pytest.mark.java
@pytest.mark.ray
class TestResilientHost:
    def test_counter_apply_snapshot_restore(self, java_actors: ActorFactory) -> None:
        host = java_actors(RESILIENT_HOST, COUNTER)
        assert get(call(host, "stateClass")) == COUNTER
        assert unpack(get(call(host, "apply", "add", pack_args(5)))) == 5
        assert unpack(get(call(host, "apply", "add", pack_args(-2)))) == 3
        assert unpack(get(call(host, "apply", "get", pack_args()))) == 3

        snapshot = get(call(host, "snapshot"))
        assert msgpack.unpackb(snapshot, raw=False) == {"total": 3}

        other = java_actors(RESILIENT_HOST, COUNTER)
        assert get(call(other, "restore", snapshot)) is True
        assert unpack(get(call(other, "apply", "add", pack_args(10)))) == 13
        assert unpack(get(call(host, "apply", "get", pack_args()))) == 3

    def test_a_failed_call_reaches_python_and_changes_nothing(
        self, java_actors: ActorFactory
    ) -> None:
        import ray

        host = java_actors(RESILIENT_HOST, COUNTER)
        assert unpack(get(call(host, "apply", "add", pack_args(1)))) == 1
        cases = [
            ("mul", pack_args(2), "Counter has no method 'mul'"),
            ("add", pack_args(), r"Counter.add takes 1 argument\(s\), got 0"),
            ("add", pack_args("x"), "must be an int, got str"),
            ("add", pack(7), "call arguments must be a MessagePack array, got int"),
            ("add", pack_args(2**63 - 1), "long overflow"),
        ]
        for method, args, message in cases:
            with pytest.raises(ray.exceptions.CrossLanguageError, match=message):
                get(call(host, "apply", method, args, retries=0))
            assert unpack(get(call(host, "apply", "get", pack_args()))) == 1, message

    def test_restore_refuses_a_foreign_snapshot(self, java_actors: ActorFactory) -> None:
        import ray

        host = java_actors(RESILIENT_HOST, COUNTER)
        get(call(host, "apply", "add", pack_args(4)))
        with pytest.raises(ray.exceptions.CrossLanguageError, match="Counter snapshot"):
            get(call(host, "restore", pack_long_map({"count": 3}), retries=0))
        assert unpack(get(call(host, "apply", "get", pack_args()))) == 4

    def test_sigkill_restarts_the_host_empty(self, java_actors: ActorFactory) -> None:
        host = java_actors(RESILIENT_HOST, COUNTER)
        get(call(host, "apply", "add", pack_args(42)))
        snapshot = get(call(host, "snapshot"))
        pid = get(call(host, "pid"))
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(pid), timeout_s=10, message=f"pid {pid} survived")
        assert unpack(get(call(host, "apply", "get", pack_args()))) == 0
        assert get(call(host, "restarted")) is True
        get(call(host, "restore", snapshot))
        assert unpack(get(call(host, "apply", "get", pack_args()))) == 42

    def test_a_class_that_is_not_resilient_state_is_refused(
        self, java_actors: ActorFactory
    ) -> None:
        import ray

        host = java_actors(RESILIENT_HOST, "java.lang.String", max_restarts=0)
        # Under load the first answer can be "unavailable" (the failed creation is not
        # yet known to the caller); the verdict that follows must carry the reason.
        deadline = time.monotonic() + 60
        while True:
            try:
                get(call(host, "pid", retries=0))
            except ray.exceptions.ActorUnavailableError:
                assert time.monotonic() < deadline, "the actor stayed unavailable"
                time.sleep(0.1)
                continue
            except (ray.exceptions.CrossLanguageError, ray.exceptions.RayActorError) as e:
                error = str(e)
                break
            pytest.fail("a host of a class that is not a ResilientState was created")
        assert "java.lang.String does not implement" in error


# -- the build --------------------------------------------------------------------------------


@pytest.mark.java
class TestBuild:
    @pytest.fixture
    def tree(self, tmp_path: Path) -> Path:
        reason = java_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
        shutil.copytree(ROOT / "java" / "src", tmp_path / "java" / "src")
        return tmp_path

    def test_builds_once_then_reuses_the_jar(self, tree: Path) -> None:
        import zipfile

        jar = ensure_java_built(tree)
        assert jar == tree / "build" / "java" / JAR_NAME
        names = set(zipfile.ZipFile(jar).namelist())
        for cls in ("Msg", "ResilientState", "ResilientHost", "BalancesStage", "Counter"):
            assert f"io/fusionresilience/{cls}.class" in names
        built = jar.stat().st_mtime_ns
        assert ensure_java_built(tree) == jar
        assert jar.stat().st_mtime_ns == built

    def test_a_compile_error_is_reported_with_javac_output(self, tree: Path) -> None:
        broken = tree / "java" / "src" / "io" / "fusionresilience" / "Broken.java"
        broken.write_text("package io.fusionresilience;\nclass Broken { int x = ; }\n")
        with pytest.raises(JavaBuildError, match=r"(?s)javac .* failed.*Broken\.java"):
            ensure_java_built(tree)
        assert not (tree / "build" / "java" / JAR_NAME).exists()


# -- the MessagePack helpers (no Java needed) ---------------------------------------------------


class TestMsgHelpers:
    def test_str_keyed_maps_are_packed_sorted(self) -> None:
        assert pack({"b": 1, "a": {"d": 2, "c": 3}}) == msgpack.packb(
            {"a": {"c": 3, "d": 2}, "b": 1}, use_bin_type=True
        )
        assert pack((1, "x", b"y", 2.5, None, True)) == msgpack.packb(
            [1, "x", b"y", 2.5, None, True], use_bin_type=True
        )

    def test_long_maps_round_trip_and_are_checked(self) -> None:
        data = pack_long_map({"z": -(2**63), "a": 2**63 - 1})
        assert unpack_long_map(data) == {"a": 2**63 - 1, "z": -(2**63)}
        with pytest.raises(ValueError, match="out of the 64-bit signed range"):
            pack_long_map({"a": 2**63})
        with pytest.raises(TypeError, match="must be an int, got bool"):
            pack_long_map({"a": True})
        with pytest.raises(ValueError, match="got a key of type int"):
            unpack_long_map(pack({1: 2}))
        with pytest.raises(ValueError, match="must be an int, got float"):
            unpack_long_map(pack({"a": 1.0}))
        with pytest.raises(ValueError, match="not valid MessagePack"):
            unpack(pack({"a": 1}) + b"\x00")
