"""The harness on real Ray and etcd: fast scenarios pass, a broken build is caught and shrunk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chaos import (
    RunOptions,
    explore,
    load_scenario,
    parse_scenario,
    run_scenario,
)
from resilience.testing import process_state

pytestmark = [pytest.mark.ray, pytest.mark.etcd]

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
# The fast subset of the shipped scenarios that `make test` runs (the others: `make chaos`).
FAST = ["actor-crash", "sink-crash-mid-commit", "storage-full", "coordinator-crash",
        "unaligned-crash"]


@pytest.mark.parametrize("name", FAST)
def test_a_shipped_scenario_passes(name: str, tmp_path: Path, etcd_server: Any,
                                   ray_local: str) -> None:
    scenario = load_scenario(SCENARIOS / f"{name}.yaml")
    report = run_scenario(scenario, RunOptions(workdir=tmp_path, progress=False,
                                               etcd=etcd_server.endpoint))
    assert report.passed, report.failure_reasons()
    assert len(report.faults) == len(scenario.plan(0))
    assert all(f.healed_at is not None for f in report.faults)
    doc = json.loads((tmp_path / "report.json").read_text())
    for key in ("scenario", "seed", "passed", "faults", "invariants", "code_version"):
        assert key in doc
    assert {"kind", "target", "injected_at", "healed_at"} <= set(doc["faults"][0])
    assert {"name", "passed", "detail"} <= set(doc["invariants"][0])
    assert (tmp_path / "report.html").read_text().count("<polyline") >= 1
    events = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert events[0]["kind"] == "start"
    assert events[-1]["kind"] == "verdict"
    # The faults really happened: each of these scenarios forces restores or failures.
    job = report.job
    if name == "storage-full":
        assert job["checkpoints_failed"] >= 1
    else:
        assert job["restores"] >= 1


# 150k events: the job runs ~4 s at full speed, so every kill of the window lands while it
# still runs (with 20k it could finish first, and a replay then passed by timing alone);
# the window opens at 0.5 s, when the broken sink has committed batches a restore will
# replay (a replay of a kill shrunk to 0.1 s could land before any: seen once in CI).
BROKEN = """
title: A sink that commits before the checkpoint completes (deliberately broken)
job: {kind: payments-early-commit, events: 150000, accounts: 500, parallelism: 2,
      checkpoint_interval: 0.3}
schedule:
  faults: 3
  kinds: [kill]
  targets: ["task:balances-0", "task:model-0", "task:source-0"]
  window_s: [0.5, 1.5]
invariants: [exactly_once]
"""


def test_the_harness_catches_a_broken_build_and_shrinks_the_schedule(
    tmp_path: Path, etcd_server: Any, ray_local: str
) -> None:
    scenario = parse_scenario(BROKEN, source="broken.yaml")
    out = tmp_path / "minimal.yaml"
    result = explore(scenario, runs=3, seed=3, out=out, workdir=tmp_path / "runs",
                     shrink_runs=4, progress=False, etcd=etcd_server.endpoint)
    assert result.violations >= 1, result.reports
    assert result.minimal is not None
    assert len(result.minimal) == 1  # one kill is enough to expose the bug
    assert result.runs <= 3 + 4
    # The saved file is a scenario that replays the failure.
    replay = load_scenario(out)
    assert [s.kind for s in replay.method] == ["kill"]
    assert replay.job.kind == "payments-early-commit"
    report = run_scenario(replay, RunOptions(workdir=tmp_path / "replay", progress=False,
                                             etcd=etcd_server.endpoint))
    assert not report.passed
    failing = [i for i in report.invariants if not i.passed]
    assert [i.name for i in failing] == ["exactly_once"]
    assert "duplicated" in failing[0].detail


def test_every_fault_is_healed_even_when_the_run_aborts(
    tmp_path: Path, etcd_server: Any, ray_local: str
) -> None:
    scenario = parse_scenario("""
title: A paused coordinator and an impatient abort condition
job: {kind: payments, events: 40000, accounts: 500, parallelism: 1, checkpoint_interval: 0.3}
method:
  - {fault: pause, target: coordinator, at: {lines: 5000}, duration: 60}
abort:
  - {probe: no_progress, seconds: 2}
invariants: [exactly_once]
""", source="abort.yaml")
    report = run_scenario(scenario, RunOptions(workdir=tmp_path, progress=False,
                                               etcd=etcd_server.endpoint))
    assert report.aborted is not None
    assert "no commit for 2s" in report.aborted
    assert not report.passed
    fault = report.faults[0]
    assert fault.healed_at is not None
    assert fault.healed_at - fault.injected_at < 30
    pid = int(fault.detail.split()[-1])
    # The paused process was resumed by the rollback (or is gone), never left stopped.
    assert process_state(pid) != "T", f"process {pid} still stopped"


def test_a_fault_on_a_stopped_task_does_not_wait_for_it_to_answer(
    tmp_path: Path, etcd_server: Any, ray_local: str
) -> None:
    """Found by the etcd campaign: the second pause asked the paused task for its pid,
    waited 30 s, failed to inject, and held back the first pause's heal all that time.

    The job must still run when the second pause is due: 300k events last several
    seconds here (CI once finished a 60k-event job before it, and recorded one fault).
    """
    scenario = parse_scenario("""
title: Overlapping pauses of one task
job: {kind: payments, events: 300000, accounts: 500, parallelism: 2, checkpoint_interval: 0.3}
method:
  - {fault: pause, target: "task:model-0", at: {seconds: 0.3}, duration: 1.5}
  - {fault: pause, target: "task:model-0", at: {seconds: 0.8}, duration: 0.5}
abort:
  - {probe: no_progress, seconds: 25}
invariants: [exactly_once]
""", source="overlap.yaml")
    report = run_scenario(scenario, RunOptions(workdir=tmp_path, progress=False,
                                               etcd=etcd_server.endpoint))
    assert len(report.faults) == 2, (tmp_path / "journal.jsonl").read_text()[-3000:]
    first, second = report.faults
    assert first.detail.startswith("SIGSTOP pid"), first.detail
    assert second.detail == first.detail  # injected, on the same (stopped) process
    assert first.healed_at is not None
    assert second.healed_at is not None
    assert report.passed, report.failure_reasons()


def test_a_leader_whose_clock_runs_slow_is_fenced_out_and_re_elected(
    tmp_path: Path, etcd_server: Any, ray_local: str
) -> None:
    """At a tenth of real speed the coordinator renews its 3 s lease every 10 s: etcd
    expires it while the coordinator still believes it leads. It must be stopped by the
    fence (or notice the loss), campaign under a new epoch, and lose nothing.

    The job must outlive the lapse: 300k events keep it running ~8 s past the skew at
    full speed (~35k events/s here), and a checkpoint every 0.1 clock-s (1 s real while
    skewed) meets the fence within about a second of the lease expiring.
    """
    scenario = parse_scenario("""
title: A slow leader clock
job: {kind: payments, events: 300000, accounts: 1000, parallelism: 2, checkpoint_interval: 0.1}
method:
  - {fault: clock_skew, target: coordinator, at: {lines: 10000}, duration: 6, params: {rate: 0.1}}
abort:
  - {probe: no_progress, seconds: 60}
invariants: [exactly_once, no_split_brain, {rpo: {max_lost: 0}}]
""", source="slow-clock.yaml")
    report = run_scenario(scenario, RunOptions(workdir=tmp_path, progress=False,
                                               etcd=etcd_server.endpoint))
    assert report.passed, report.failure_reasons()
    (fault,) = report.faults
    assert fault.detail == "clock at 0.1x real speed, +0 s"
    leaders = next(i for i in report.invariants if i.name == "no_split_brain").data["leaders"]
    epochs_after = [epoch for at, epoch, _holder in leaders if at > fault.injected_at]
    assert epochs_after, f"no new reign after the skew: {leaders}"
    assert min(epochs_after) > max(epoch for at, epoch, _ in leaders if at <= fault.injected_at)
    restores = [e.message for e in report.journal if e.kind == "restore"]
    assert any("leadership lost" in m or "fenced out" in m for m in restores), restores
