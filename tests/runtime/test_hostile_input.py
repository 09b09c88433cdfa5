"""Hostile input on real Ray and etcd: every kind of line that ever broke the job, mixed
into a large generated input, ends in exit 0 with each one dead-lettered and a ledger the
independent checker finds exact, with checkpoints landing at different moments.
"""

from __future__ import annotations

import json
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
from fusion_jobs.payments.hostile import BOMB_LINES, HOSTILE_KINDS, mix_hostile
from fusion_jobs.payments.job import PaymentsOptions, payments_pipeline
from resilience._runtime._driver import PipelineRunner
from resilience.testing import wait_until

pytestmark = [pytest.mark.ray, pytest.mark.etcd]

EVENTS = 100_000


@pytest.fixture(scope="module")
def hostile_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    folder = tmp_path_factory.mktemp("hostile")
    base = folder / "base.jsonl"
    generate(base, events=EVENTS, accounts=2_000, seed=12)
    mixed = folder / "mixed.jsonl"
    stats = mix_hostile(base, mixed, count=3 * len(HOSTILE_KINDS), seed=12)
    return mixed, stats


@pytest.mark.parametrize(("interval", "kill"), [(0.2, False), (0.7, False), (0.4, True)])
def test_hostile_lines_are_dead_lettered_and_the_rest_applied_exactly_once(
    hostile_input: tuple[Path, Any], tmp_path: Path, etcd_server: Any, ray_local: str,
    interval: float, kill: bool,
) -> None:
    path, stats = hostile_input
    seed = random.randrange(2**32)
    print(f"seed {seed}")  # the batch size and the kill moment derive from it
    rng = random.Random(seed)
    opts = PaymentsOptions(path, tmp_path, parallelism=2, checkpoint_interval_s=interval,
                           batch_size=rng.choice([300, 1000, 2000]),
                           job_id=f"hostile-{time.time_ns()}")
    killed: list[int] = []

    def chaos(runner: PipelineRunner) -> None:
        target = rng.uniform(0.2, 0.7) * EVENTS
        wait_until(lambda: (runner.status() or {}).get("lines_read", 0) >= target,
                   timeout_s=120)
        task = rng.choice(["source-0", "model-0", "balances-0", "balances-1", "ledger-0"])
        os.kill(runner.pids()[task], signal.SIGKILL)
        killed.append(1)

    with PipelineRunner(payments_pipeline(opts), etcd_server.endpoint) as runner:
        thread = threading.Thread(target=chaos, args=(runner,), daemon=True) if kill else None
        if thread is not None:
            thread.start()
        status = runner.wait(timeout_s=300)
        if thread is not None:
            thread.join(timeout=30)
    assert bool(killed) == kill
    assert status["quarantined"] == 0  # the contract kept every poison line out
    verdict = verify(path, tmp_path)
    assert verdict.ok, verdict.summary()
    assert verdict.out_of_range_lines == 2
    dead = {json.loads(line)["line"] for line in
            (tmp_path / "dead_letter.jsonl").read_bytes().splitlines()}
    for line, kind in stats.at:  # each one by name: the checker only counts them
        assert (line in dead) != kind.startswith("valid"), f"line {line} ({kind})"
    assert verdict.valid_events >= BOMB_LINES - 2
