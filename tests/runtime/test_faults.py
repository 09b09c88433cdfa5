"""Checkpoint faults end to end: corrupt checkpoints, a full disk, unaligned checkpoints.

Real Ray, real etcd, real SIGKILLs; the verdict comes from the independent checker.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from checkpoint import FileSystemStore
from fusion_jobs.payments.checker import verify
from fusion_jobs.payments.generator import generate
from fusion_jobs.payments.job import PaymentsOptions, payments_pipeline
from resilience import faultpoints
from resilience._runtime._driver import PipelineRunner
from resilience.testing import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.etcd]

EVENTS = 250_000  # long enough for a failed checkpoint and a restore mid-run on a fast machine


@pytest.fixture(scope="module")
def payments_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "payments.jsonl"
    generate(path, events=EVENTS, accounts=1_000, seed=23)
    return path


def _run(opts: PaymentsOptions, etcd: str, chaos: Any) -> dict[str, Any]:
    spec = payments_pipeline(opts)
    with PipelineRunner(spec, etcd) as runner:
        errors: list[BaseException] = []

        def guarded() -> None:
            try:
                chaos(runner)
            except BaseException as exc:  # reported below, after the run
                errors.append(exc)

        thread = threading.Thread(target=guarded, daemon=True)
        thread.start()
        status = runner.wait(timeout_s=400)
        thread.join(timeout=30)
    assert not errors, f"the fault injection did not happen as planned: {errors[0]!r}"
    return status


def _status(runner: PipelineRunner) -> dict[str, Any]:
    """The coordinator's status; a poll that gets no answer (a busy machine) is retried."""
    for _ in range(30):
        status = runner.status()
        if status is not None:
            return status
    raise TimeoutError("the coordinator did not answer a status poll for 30 tries")


def test_full_disk_and_corrupt_checkpoints_fall_back_to_an_older_good_one(
    payments_input: Path, tmp_path: Path, etcd_server: Any, ray_local: str
) -> None:
    job_id = f"corrupt-{time.time_ns()}"
    store = FileSystemStore(tmp_path / "checkpoints", job_id=job_id)
    seen: dict[str, Any] = {}

    def chaos(runner: PipelineRunner) -> None:
        wait_until(lambda: _status(runner).get("checkpoints_completed", 0) >= 4, timeout_s=120)
        # Disk full: every checkpoint write fails from now on; the job must go on.
        faultpoints.arm(tmp_path, faultpoints.STORE_WRITE, "enospc")
        failed_before = _status(runner)["checkpoints_failed"]
        wait_until(lambda: _status(runner)["checkpoints_failed"] > failed_before, timeout_s=60)
        ids = store.list_checkpoints()
        newest, older = ids[-1], ids[-2]
        # Newest: a chunk of the model's snapshot rots on disk (same size, other bytes).
        model_chunk = store.get_manifest(newest).tasks["model-0"].chunks[0]
        path = store.chunk_path(model_chunk)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        # The one before: its manifest is truncated.
        manifest_path = store.manifest_path(older)
        manifest_path.write_bytes(manifest_path.read_bytes()[:40])
        seen.update(newest=newest, older=older, generation=_status(runner)["generation"])
        os.kill(runner.pids()["balances-1"], signal.SIGKILL)
        wait_until(lambda: _status(runner)["generation"] > seen["generation"], timeout_s=60)
        faultpoints.disarm(tmp_path, faultpoints.STORE_WRITE)

    status = _run(PaymentsOptions(payments_input, tmp_path, parallelism=2,
                                  checkpoint_interval_s=0.3, job_id=job_id), etcd_server.endpoint,
                  chaos)
    restore = status["restores"][-1]
    skipped = " ".join(restore["fallbacks"])
    assert f"checkpoint {seen['newest']}" in skipped, restore
    assert f"checkpoint {seen['older']}" in skipped, restore
    assert restore["from_checkpoint"] < seen["older"]
    assert status["checkpoints_failed"] >= 1
    verdict = verify(payments_input, tmp_path)
    assert verdict.ok, verdict.summary()


def test_unaligned_checkpoints_with_kills_stay_exactly_once(
    tmp_path: Path, etcd_server: Any, ray_local: str
) -> None:
    # The keyed-sums job has a stateful stage with two inputs; alignment timeout 0
    # makes every checkpoint there unaligned: in-flight records are stored with it and
    # a restore must replay them. (Two-phase-commit sinks always align.)
    from fusion_jobs.keyed_sums import SumsOptions, check_sums, keyed_sums_pipeline

    opts = SumsOptions(tmp_path, total=120_000, keys=500, alignment_timeout_s=0.0,
                       job_id=f"sums-{time.time_ns()}", lag_s=0.01)
    kills: list[str] = []

    def chaos(runner: PipelineRunner) -> None:
        for i, target in enumerate(["sums-0", "spread-1", "sums-1", "sink-0"]):
            wait_until(lambda i=i: _status(runner).get("state") == "running"
                       and _status(runner).get("lines_read", 0) >= 15_000 + 25_000 * i,
                       timeout_s=120)
            generation = _status(runner)["generation"]
            os.kill(runner.pids()[target], signal.SIGKILL)
            kills.append(target)
            wait_until(lambda g=generation: _status(runner).get("generation", g) > g,
                       timeout_s=60)

    spec = keyed_sums_pipeline(opts)
    with PipelineRunner(spec, etcd_server.endpoint) as runner:
        thread = threading.Thread(target=chaos, args=(runner,), daemon=True)
        thread.start()
        status = runner.wait(timeout_s=400)
        thread.join(timeout=30)
    assert len(kills) == 4
    assert len(status["restores"]) >= 5
    assert status["checkpoints_unaligned"] >= 1, status["checkpoint_history"]
    assert status["inflight_records_stored"] > 0  # records really were caught in flight
    assert check_sums(tmp_path, opts.total, opts.keys) == []


def test_a_task_that_cannot_start_fails_the_job_with_its_reason(
    tmp_path: Path, etcd_server: Any, ray_local: str
) -> None:
    from resilience._errors import JobFailed

    missing = tmp_path / "gone.jsonl"
    spec = payments_pipeline(PaymentsOptions(missing, tmp_path, job_id=f"nostart-{time.time_ns()}"))
    with PipelineRunner(spec, etcd_server.endpoint) as runner, \
            pytest.raises(JobFailed, match=r"source-0 could not start.*gone\.jsonl"):
        runner.wait(timeout_s=120)


def test_no_silent_fallback_past_an_unaligned_checkpoint(
    tmp_path: Path, etcd_server: Any, ray_local: str
) -> None:
    # Falling back past a committed checkpoint that stored in-flight records could lose
    # or duplicate them at the sink: the job must stop and say so instead.
    from fusion_jobs.keyed_sums import SumsOptions, keyed_sums_pipeline
    from resilience._errors import JobFailed
    from resilience._runtime._registry import CheckpointRegistry
    from resilience.coordination._client import EtcdClient

    opts = SumsOptions(tmp_path, total=400_000, keys=500, alignment_timeout_s=0.0,
                       job_id=f"nofall-{time.time_ns()}", lag_s=0.01)
    store = FileSystemStore(tmp_path / "checkpoints", job_id=opts.job_id)

    def chaos(runner: PipelineRunner) -> None:
        with EtcdClient(etcd_server.endpoint) as client:
            registry = CheckpointRegistry(client, opts.job_id)
            wait_until(lambda: any(r.unaligned for r in registry.completed()), timeout_s=120)
            faultpoints.arm(tmp_path, faultpoints.STORE_WRITE, "enospc")  # freeze the list
            failed = _status(runner)["checkpoints_failed"]
            wait_until(lambda: _status(runner)["checkpoints_failed"] > failed, timeout_s=60)
            newest = registry.latest()
            assert newest is not None
        if not newest.unaligned:
            return  # the test below then fails on purpose: no unaligned newest checkpoint
        path = store.manifest_path(newest.checkpoint_id)
        path.write_bytes(path.read_bytes()[:30])
        os.kill(runner.pids()["sums-0"], signal.SIGKILL)

    spec = keyed_sums_pipeline(opts)
    with PipelineRunner(spec, etcd_server.endpoint) as runner:
        thread = threading.Thread(target=chaos, args=(runner,), daemon=True)
        thread.start()
        with pytest.raises(JobFailed, match="cannot fall back past checkpoint"):
            runner.wait(timeout_s=400)
    faultpoints.disarm(tmp_path, faultpoints.STORE_WRITE)
