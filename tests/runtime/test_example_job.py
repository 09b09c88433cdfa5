"""The example job (examples/sensor_anomalies.py), a user's own fused job on the public API,
is exactly once under SIGKILLs of its workers, and runs through `resilience run` as is.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from resilience.pipeline import JobOptions, PipelineRunner, find_job
from resilience.testing import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.etcd]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sensor_anomalies.py"
READINGS = 150_000


@pytest.fixture(scope="module")
def job() -> Any:
    return find_job(f"{EXAMPLE}:JOB")


@pytest.fixture(scope="module")
def readings(job: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("readings") / "readings.jsonl"
    job.generate(path, READINGS, 5)
    return path


def test_the_example_job_is_exactly_once_under_sigkills(
        job: Any, readings: Path, tmp_path: Path, etcd_server: Any, ray_local: str) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    options = JobOptions(workdir=tmp_path, job_id=f"sensors-{time.time_ns()}",
                         input_path=readings, parallelism=2, checkpoint_interval_s=0.3,
                         batch_size=1000)
    kills: list[str] = []

    def chaos(runner: PipelineRunner) -> None:
        for fraction in sorted(rng.uniform(0.1, 0.8) for _ in range(3)):
            wait_until(lambda f=fraction: (runner.status() or {}).get("lines_read", 0)
                       >= f * READINGS, timeout_s=120)
            task = rng.choice(["source-0", "detector-0", "detector-1", "sink-0"])
            generation = (runner.status() or {}).get("generation", 0)
            os.kill(runner.pids()[task], signal.SIGKILL)
            kills.append(task)
            wait_until(lambda g=generation: (runner.status() or {}).get("generation", 0) > g,
                       timeout_s=60)

    with PipelineRunner(job.pipeline(options), etcd_server.endpoint) as runner:
        thread = threading.Thread(target=chaos, args=(runner,), daemon=True)
        thread.start()
        status = runner.wait(timeout_s=300)
        thread.join(timeout=60)
    assert len(kills) == 3, kills
    assert len(status["restores"]) >= 4  # the start and one per kill
    verdict = job.verify(readings, tmp_path)
    assert verdict.ok, verdict.summary()
    assert verdict.rows == verdict.expected > 0.99 * READINGS


def test_the_example_job_runs_through_the_command_line(
        job: Any, readings: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "w"
    command = [sys.executable, "-m", "resilience.cli"]
    run = subprocess.run([*command, "run", f"{EXAMPLE}:JOB", "--input", str(readings),
                          "--workdir", str(workdir), "--no-progress"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "job sensor-anomalies finished" in run.stdout
    check = subprocess.run([*command, "verify", "--job", f"{EXAMPLE}:JOB", "--input",
                            str(readings), "--workdir", str(workdir)],
                           capture_output=True, text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "exactly-once check: OK" in check.stdout
    # The check can fail: a row applied twice is caught.
    with sqlite3.connect(workdir / "readings.sqlite") as db:
        db.execute("INSERT INTO readings SELECT * FROM readings LIMIT 1")
    verdict = job.verify(readings, workdir)
    assert not verdict.ok
    assert "applied twice" in verdict.summary()
