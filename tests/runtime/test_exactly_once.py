"""Exactly-once end to end: the payments job on real Ray and real etcd, real SIGKILLs.

The verdict comes from `fusion_jobs.payments.checker`, which shares no code with the job,
and the ledger is compared row by row (scores included) with a crash-free run.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fusion_jobs.payments.checker import verify
from fusion_jobs.payments.generator import generate
from fusion_jobs.payments.job import PaymentsOptions, payments_pipeline
from resilience import faultpoints
from resilience._runtime._driver import PipelineRunner
from resilience.testing import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.etcd]

EVENTS = 100_000
STATEFUL = ["source-0", "model-0", "balances-0", "balances-1", "ledger-0"]


@pytest.fixture(scope="module")
def payments_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "payments.jsonl"
    generate(path, events=EVENTS, accounts=2_000, seed=11)
    return path


@pytest.fixture(scope="module")
def reference(payments_input: Path, tmp_path_factory: pytest.TempPathFactory,
              etcd_server: Any, ray_local: str) -> Path:
    """Workdir of a crash-free run of the same input (its ledger is the reference)."""
    workdir = tmp_path_factory.mktemp("reference")
    status = _run(payments_input, workdir, etcd_server.endpoint, "ref")
    assert status["restores"][0]["reason"] == "job start"
    assert len(status["restores"]) == 1
    return workdir


def _run(input_path: Path, workdir: Path, etcd: str, job_id: str, *,
         chaos: Any = None, interval: float = 0.3) -> dict[str, Any]:
    spec = payments_pipeline(PaymentsOptions(input_path, workdir, parallelism=2,
                                             checkpoint_interval_s=interval,
                                             job_id=f"{job_id}-{os.getpid()}-{time.time_ns()}"))
    with PipelineRunner(spec, etcd) as runner:
        thread = None
        if chaos is not None:
            thread = threading.Thread(target=chaos, args=(runner,), daemon=True)
            thread.start()
        status = runner.wait(timeout_s=400)
        if thread is not None:
            thread.join(timeout=30)
    return status


def _assert_exactly_once(input_path: Path, workdir: Path, reference: Path) -> None:
    verdict = verify(input_path, workdir, reference_ledger=reference / "ledger.sqlite")
    assert verdict.ok, verdict.summary()
    assert verdict.missing_events == 0
    assert verdict.duplicated_events == 0
    assert verdict.chain_errors == 0
    assert verdict.balance_errors == 0


def _wait_running(runner: PipelineRunner, min_lines: int) -> dict[str, Any]:
    holder: dict[str, Any] = {}

    def ready() -> bool:
        st = runner.status()
        if st is not None and st["state"] == "running" and st["lines_read"] >= min_lines:
            holder.update(st)
            return True
        return False

    wait_until(ready, timeout_s=120, message=f"job did not reach {min_lines} lines")
    return holder


def test_crash_free_run_is_exactly_once(payments_input: Path, reference: Path) -> None:
    verdict = verify(payments_input, reference)
    assert verdict.ok, verdict.summary()
    assert verdict.applied_events == verdict.valid_events > 0.99 * EVENTS


def test_random_stateful_workers_sigkilled_five_times(
    payments_input: Path, reference: Path, tmp_path: Path, etcd_server: Any
) -> None:
    rng = random.Random(20261128)
    kills: list[tuple[str, int]] = []

    def chaos(runner: PipelineRunner) -> None:
        for i in range(6):
            generation = _wait_running(runner, 5_000 + 12_000 * i)["generation"]
            target = rng.choice(STATEFUL)
            pid = runner.pids()[target]
            os.kill(pid, signal.SIGKILL)
            kills.append((target, pid))
            # The next kill only after the job restored from this one.
            wait_until(lambda g=generation: (runner.status() or {}).get("generation", g) > g,
                       timeout_s=60, message=f"no restore after killing {target}")

    status = _run(payments_input, tmp_path, etcd_server.endpoint, "kill5", chaos=chaos)
    assert len(kills) >= 5, kills
    failures = status["restores"][1:]
    assert len(failures) >= len(kills), (kills, failures)
    _assert_exactly_once(payments_input, tmp_path, reference)


def test_coordinator_sigkilled(payments_input: Path, reference: Path, tmp_path: Path,
                               etcd_server: Any) -> None:
    def chaos(runner: PipelineRunner) -> None:
        _wait_running(runner, 30_000)
        os.kill(runner.coordinator_pid(), signal.SIGKILL)

    status = _run(payments_input, tmp_path, etcd_server.endpoint, "coord", chaos=chaos)
    assert status["coordinator_restarted"] is True
    assert status["fencing_epoch"] >= 2  # the new incarnation leads under a new epoch
    assert status["restores"][0]["reason"] == "coordinator restarted"
    _assert_exactly_once(payments_input, tmp_path, reference)


def test_sink_killed_between_precommit_and_commit(
    payments_input: Path, reference: Path, tmp_path: Path, etcd_server: Any
) -> None:
    seen: dict[str, int] = {}

    def chaos(runner: PipelineRunner) -> None:
        generation = _wait_running(runner, 30_000)["generation"]
        seen["before"] = runner.pids()["ledger-0"]
        faultpoints.arm(tmp_path, "ledger.before_commit", "kill")
        wait_until(lambda: (runner.status() or {}).get("generation", generation) > generation,
                   timeout_s=60, message="no restore after the sink died before its commit")
        seen["after"] = runner.pids()["ledger-0"]

    status = _run(payments_input, tmp_path, etcd_server.endpoint, "sink", chaos=chaos)
    # The armed point fired (it disarms itself), the sink's worker is a new process,
    # and the job restored.
    assert not (tmp_path / ".resilience" / "faults" / "ledger.before_commit").exists()
    assert seen["after"] != seen["before"]
    assert len(status["restores"]) >= 2, status["restores"]
    _assert_exactly_once(payments_input, tmp_path, reference)
