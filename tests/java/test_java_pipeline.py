"""The payments job with its balance stage in Java, on real Ray and etcd, real SIGKILLs.

The verdict comes from `fusion_jobs.payments.checker` (no code shared with the job), and the
ledger is compared row by row, scores included, with a crash-free run that used the
*Python* balance stage: the two stages are interchangeable.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import ray.cloudpickle

from fusion_jobs.payments.checker import verify
from fusion_jobs.payments.generator import generate
from fusion_jobs.payments.java_balances import JavaBalances
from fusion_jobs.payments.job import PaymentsOptions, PaymentsSource, payments_pipeline
from resilience import faultpoints
from resilience.pipeline import OperatorContext, PipelineRunner
from resilience.testing import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.etcd, pytest.mark.java]

EVENTS = 60_000


@pytest.fixture(scope="module")
def payments_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "payments.jsonl"
    generate(path, events=EVENTS, accounts=1_500, seed=23)
    return path


@pytest.fixture(scope="module")
def python_reference(payments_input: Path, tmp_path_factory: pytest.TempPathFactory,
                     etcd_server: Any, ray_local: str) -> Path:
    """A crash-free run with the Python balance stage: the ledger every run must match."""
    workdir = tmp_path_factory.mktemp("reference")
    status = _run(payments_input, workdir, etcd_server.endpoint, "py-ref", stage="python")
    assert len(status["restores"]) == 1
    return workdir


class DrillJavaBalances(JavaBalances):
    """The Java stage with failures on demand (test-only, as its Java class in java/test):
    fault point ``balances-<i>.java_snapshot`` ``exit`` makes the JVM call System.exit
    inside the snapshot; ``balances-<i>.java_restore`` ``on`` makes the restore throw."""

    java_class = "io.fusionresilience.BalancesStageDrill"

    def fail_in_snapshot(self, how: str | None) -> None:
        if how == "exit":
            self._get("exitInNextSnapshot", 3)
        else:
            super().fail_in_snapshot(how)

    def before_restore(self) -> None:
        if self.point("java_restore") == "on":
            self._get("failNextRestore", True, retries=-1)



class ThrottledSource(PaymentsSource):
    """The payments source, slowed while ``WORKDIR/.resilience/faults/<task>.throttle``
    exists (test-only): the chaos of a test cannot find the input already finished (CI: the
    third of three kills came after the end of a 60k-event input). The source is slowed,
    not the stages after it, so every task still answers the test's questions at once."""

    def open(self, ctx: OperatorContext) -> None:
        super().open(ctx)
        self._throttle = ctx.workdir / ".resilience" / "faults" / f"{ctx.task_id}.throttle"

    def poll(self, max_records: int) -> tuple[list[Any], bool]:
        if self._throttle.exists():
            time.sleep(0.03)
            max_records = min(max_records, 100)
        return super().poll(max_records)


ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _run(input_path: Path, workdir: Path, etcd: str, job_id: str, *, stage: str = "java",
         chaos: Any = None, interval: float = 0.3, standby: bool = True) -> dict[str, Any]:
    spec = payments_pipeline(PaymentsOptions(
        input_path, workdir, parallelism=2, checkpoint_interval_s=interval,
        job_id=f"{job_id}-{os.getpid()}-{time.time_ns()}", balances_stage=stage,
        java_standby=standby))
    if stage == "java":
        spec = dataclasses.replace(spec, stages=[
            dataclasses.replace(s, factory=partial(DrillJavaBalances, standby=standby))
            if s.name == "balances" else s for s in spec.stages])
    spec = dataclasses.replace(spec, stages=[
        dataclasses.replace(s, factory=partial(ThrottledSource, *s.factory.args,
                                               **s.factory.keywords))
        if s.name == "source" else s for s in spec.stages])
    errors: list[BaseException] = []
    throttled = ["source-0.throttle"] if chaos is not None else []
    for point in throttled:
        faultpoints.arm(workdir, point, "on")
    with PipelineRunner(spec, etcd) as runner:
        thread = None
        if chaos is not None:
            def guarded() -> None:
                try:
                    chaos(runner)
                except BaseException as e:  # reported by the test below
                    errors.append(e)
                finally:
                    for point in throttled:  # full speed to the end of the input
                        faultpoints.disarm(workdir, point)

            thread = threading.Thread(target=guarded, daemon=True)
            thread.start()
        status = runner.wait(timeout_s=400)
        if thread is not None:
            thread.join(timeout=60)
    if errors:
        raise errors[0]
    return status


def _assert_exactly_once(input_path: Path, workdir: Path, reference: Path) -> None:
    verdict = verify(input_path, workdir, reference_ledger=reference / "ledger.sqlite")
    assert verdict.ok, verdict.summary()
    assert verdict.missing_events == 0
    assert verdict.duplicated_events == 0
    assert verdict.balance_errors == 0
    assert verdict.applied_events > 0.99 * EVENTS


def _wait_lines(runner: PipelineRunner, lines: int) -> dict[str, Any]:
    holder: dict[str, Any] = {}

    def ready() -> bool:
        st = runner.status()
        if st is not None and st["state"] == "running" and st["lines_read"] >= lines \
                and st["checkpoints_completed"] >= 1:
            holder.update(st)
            return True
        return False

    wait_until(ready, timeout_s=120, message=f"job did not reach {lines} lines")
    return holder


def _restored_after(runner: PipelineRunner, generation: int, what: str) -> dict[str, Any]:
    """Wait for the restore that follows a kill in `generation`; return the status of the
    new generation once it has completed a checkpoint of its own, so a next kill can follow
    at once (an absolute line count raced the end of the input on a slow machine)."""
    holder: dict[str, Any] = {}

    def restored() -> bool:
        st = runner.status() or {}
        if st.get("generation", generation) > generation and st.get("state") == "running":
            holder.update(st)
            return True
        return False

    wait_until(restored, timeout_s=90, message=f"no restore after {what}")
    checkpoints = holder.get("checkpoints_completed", 0)

    def checkpointed() -> bool:
        st = runner.status() or {}
        if st.get("state") == "running" and st.get("checkpoints_completed", 0) > checkpoints:
            holder.update(st)
            return True
        return False

    wait_until(checkpointed, timeout_s=90, message=f"no checkpoint after the restore ({what})")
    return dict(holder)


@pytest.mark.parametrize("standby", [True, False], ids=["standby-jvm", "ray-restart"])
def test_java_stage_jvms_sigkilled_three_times(
    payments_input: Path, python_reference: Path, tmp_path: Path, etcd_server: Any,
    standby: bool,
) -> None:
    kills: list[tuple[str, int]] = []

    def chaos(runner: PipelineRunner) -> None:
        st = _wait_lines(runner, 8_000)
        for task in ["balances-0", "balances-1", "balances-0"]:
            # Only the task to kill is asked (a JVM just started elsewhere may answer late).
            pid = runner.helper_pids(timeout_s=90, tasks=[task])[task]["java"]
            assert pid not in runner.pids().values()  # a JVM, not the Python task worker
            os.kill(pid, signal.SIGKILL)
            kills.append((task, pid))
            st = _restored_after(runner, st["generation"], f"killing the JVM of {task}")

    status = _run(payments_input, tmp_path, etcd_server.endpoint, "jvm-kill3", chaos=chaos,
                  standby=standby)
    assert len(kills) == 3
    assert len({pid for _, pid in kills}) == 3  # each kill hit a fresh JVM
    assert len(status["restores"]) - 1 >= 3, status["restores"]
    _assert_exactly_once(payments_input, tmp_path, python_reference)


def test_a_python_and_a_java_stage_fail_over_in_the_same_run(
    payments_input: Path, python_reference: Path, tmp_path: Path, etcd_server: Any
) -> None:
    def chaos(runner: PipelineRunner) -> None:
        generation = _wait_lines(runner, 15_000)["generation"]
        jvm = runner.helper_pids()["balances-1"]["java"]
        worker = runner.pids()["model-0"]
        os.kill(jvm, signal.SIGKILL)
        os.kill(worker, signal.SIGKILL)
        generation = _restored_after(runner, generation,
                                     "killing a JVM and a Python worker")["generation"]
        os.kill(runner.pids()["balances-0"], signal.SIGKILL)  # the Python host of a JVM
        _restored_after(runner, generation, "killing the Python task hosting a JVM")

    status = _run(payments_input, tmp_path, etcd_server.endpoint, "mixed", chaos=chaos)
    assert len(status["restores"]) - 1 >= 2, status["restores"]
    _assert_exactly_once(payments_input, tmp_path, python_reference)


def test_a_java_restore_that_throws_falls_back_to_an_older_checkpoint(
    payments_input: Path, python_reference: Path, tmp_path: Path, etcd_server: Any
) -> None:
    def chaos(runner: PipelineRunner) -> None:
        generation = _wait_lines(runner, 20_000)["generation"]
        wait_until(lambda: (runner.status() or {}).get("checkpoints_completed", 0) >= 2,
                   timeout_s=60, message="fewer than 2 checkpoints")
        faultpoints.arm(tmp_path, "balances-0.java_restore", "on")
        os.kill(runner.helper_pids()["balances-1"]["java"], signal.SIGKILL)
        _restored_after(runner, generation, "a JVM kill with a failing restore")

    status = _run(payments_input, tmp_path, etcd_server.endpoint, "bad-restore", chaos=chaos)
    failure = status["restores"][1]
    assert failure["fallbacks"], failure
    why = failure["fallbacks"][0]
    # Which checkpoint, which actor, and the Java exception's own words.
    assert why.startswith("checkpoint ")
    assert "io.fusionresilience.BalancesStageDrill of task balances-0" in why
    assert "failNextRestore(true) was set" in why
    assert failure["from_checkpoint"] < int(why.split()[1].rstrip(":"))
    _assert_exactly_once(payments_input, tmp_path, python_reference)


@pytest.mark.parametrize("how", ["kill", "exit"], ids=["sigkill", "system-exit"])
def test_a_jvm_killed_during_a_checkpoint_leaves_it_incomplete(
    how: str, payments_input: Path, python_reference: Path, tmp_path: Path, etcd_server: Any
) -> None:
    seen: dict[str, Any] = {}

    def chaos(runner: PipelineRunner) -> None:
        st = _wait_lines(runner, 15_000)
        faultpoints.arm(tmp_path, "balances-1.java_snapshot", how)
        _restored_after(runner, st["generation"], "a JVM killed in a snapshot")
        seen["restore"] = (runner.status() or {})["restores"][-1]

    status = _run(payments_input, tmp_path, etcd_server.endpoint, f"snap-{how}", chaos=chaos)
    restore = seen["restore"]
    assert "balances-1" in restore["reason"], restore
    # The checkpoint the JVM died in never completed: the job came back from the one
    # before, and later checkpoints (with new ids) completed again.
    completed = {c["checkpoint_id"] for c in status["checkpoint_history"]}
    assert restore["from_checkpoint"] + 1 not in completed
    assert max(completed) > restore["from_checkpoint"] + 1
    assert not (tmp_path / ".resilience" / "faults" / "balances-1.java_snapshot").exists()
    _assert_exactly_once(payments_input, tmp_path, python_reference)
