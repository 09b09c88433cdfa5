"""What the harness observes of a running job: samples, and the steady-state probes.

A sample reads the coordinator's status and, independently, the sink's own progress; the
probes (throughput, commit lag) judge the samples before the first fault and after the
last heal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import chaos.report as rep
from chaos._environment import ChaosEnvironment
from chaos._scenario import Scenario
from chaos.report import Phase

__all__ = ["RunState", "sample", "steady_checks"]


@dataclass
class RunState:
    samples: list[rep.Sample] = field(default_factory=list)
    faults: list[rep.FaultRecord] = field(default_factory=list)
    leaders: list[tuple[float, int, str]] = field(default_factory=list)
    pre_fault_watermarks: list[tuple[float, int]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    aborted: str | None = None
    restores: int = 0  # failure restores seen (not the job's start)
    steady: list[rep.SteadyStateResult] = field(default_factory=list)



def sample(env: ChaosEnvironment, state: RunState, t0: float) -> dict[str, Any]:
    st = env.runner.status(timeout_s=2.0) or state.status
    state.status = st or state.status
    watermark, _ = env.ledger_watermark()
    now = time.time()
    state.samples.append(rep.Sample(
        t=round(now - t0, 3), lines_read=int(st.get("lines_read", 0)),
        committed=max(watermark - 1, 0), checkpoints=int(st.get("checkpoints_completed", 0)),
        generation=int(st.get("generation", 0)), state=str(st.get("state", "?"))))
    leader = env.leader()
    if leader is not None and (not state.leaders or state.leaders[-1][1:] != leader):
        state.leaders.append((now - t0, *leader))
    return st


def steady_checks(scenario: Scenario, env: ChaosEnvironment, state: RunState, t0: float,
                   phase: Phase, journal: Any) -> list[rep.SteadyStateResult]:
    out = []
    for check in scenario.steady_state:
        if check.probe == "throughput":
            result = _probe_throughput(check, env, state, t0, phase)
        else:
            result = _probe_commit_lag(check, state, phase)
        journal("steady", f"{phase}: {check.probe} {'ok' if result.passed else 'FAILED'}: "
                          f"{result.detail}")
        out.append(result)
    return out


def _probe_throughput(check: Any, env: ChaosEnvironment, state: RunState, t0: float,
                      phase: Phase) -> rep.SteadyStateResult:
    threshold = f">= {check.threshold:g} events/s"
    if phase == "before":
        first = state.samples[-1]
        time.sleep(check.window_s)  # a measurement window, not a wait for a condition
        sample(env, state, t0)
        last = state.samples[-1]
    else:
        # After healing: the last window of the run (the job may have finished already).
        window = [s for s in state.samples if s.t >= state.samples[-1].t - check.window_s]
        first, last = window[0], window[-1]
        healed = max((f.healed_at or 0.0 for f in state.faults), default=0.0)
        if last.state == "finished":
            tail = [s for s in state.samples if s.t >= healed]
            first, last = (tail[0], tail[-1]) if len(tail) >= 2 else (first, last)
    span = last.t - first.t
    if span <= 0 or (last.lines_read <= first.lines_read and last.state == "finished"):
        return rep.SteadyStateResult(name="throughput", phase=phase, passed=True,
                                     observed=None, threshold=threshold,
                                     detail="the job had finished: nothing left to measure")
    rate = (last.lines_read - first.lines_read) / span
    return rep.SteadyStateResult(name="throughput", phase=phase,
                                 passed=rate >= check.threshold, observed=round(rate, 1),
                                 threshold=threshold,
                                 detail=f"{rate:,.0f} events/s over {span:.1f}s")


def _probe_commit_lag(check: Any, state: RunState, phase: Phase) -> rep.SteadyStateResult:
    """Seconds from an event being read to it being committed, over the samples."""
    samples = state.samples
    if phase == "after":
        healed = max((f.healed_at or 0.0 for f in state.faults), default=0.0)
        samples = [s for s in samples if s.t >= healed]
    worst = 0.0
    for i, s in enumerate(samples):
        done = next((later.t for later in samples[i:] if later.committed >= s.lines_read), None)
        if done is not None:
            worst = max(worst, done - s.t)
    return rep.SteadyStateResult(name="commit_lag", phase=phase, passed=worst <= check.threshold,
                                 observed=round(worst, 2), threshold=f"<= {check.threshold:g}s",
                                 detail=f"worst lag {worst:.2f}s over {len(samples)} samples")


