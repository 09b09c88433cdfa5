"""The invariants a scenario can require, judged from outside the job after the run.

`exactly_once` and `rpo` ask the job's adapter (`chaos._jobs`), whose checkers share no
code with the job; `no_split_brain` reads the leaders observed in etcd, the checkpoint
records and the sink's epoch; `recovery_time` reads the samples. Each is a function
``(env, state, params) -> InvariantResult`` in `INVARIANT_CHECKS`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import chaos.report as rep
from chaos._environment import ChaosEnvironment
from chaos._probes import RunState

__all__ = ["INVARIANT_CHECKS"]


def _inv_exactly_once(env: ChaosEnvironment, state: RunState,
                      params: Any) -> rep.InvariantResult:
    if not state.status.get("finished"):
        return rep.InvariantResult(name="exactly_once", passed=False,
                                   detail="the job did not finish: output incomplete")
    judged = env.adapter.exactly_once(env.scenario.job, env.input_file, env.job_dir)
    return rep.InvariantResult(name="exactly_once", passed=judged.passed, detail=judged.detail,
                               data=judged.data or {})


def _inv_no_split_brain(env: ChaosEnvironment, state: RunState,
                        params: Any) -> rep.InvariantResult:
    problems = []
    epochs = [e for _, e, _ in state.leaders]
    for (_, e1, h1), (t2, e2, h2) in itertools.pairwise(state.leaders):
        if e2 <= e1:
            problems.append(f"leader {h2} at {t2:.1f}s has epoch {e2} <= {e1} of {h1}")
    records = env.checkpoint_records()
    for a, b in itertools.pairwise(records):
        if b["fencing_epoch"] < a["fencing_epoch"]:
            problems.append(f"checkpoint {b['checkpoint_id']} committed under epoch "
                            f"{b['fencing_epoch']} after {a['checkpoint_id']} under "
                            f"{a['fencing_epoch']}")
    _, sink_epoch = env.ledger_watermark()
    top = max([*epochs, *(r["fencing_epoch"] for r in records), 0])
    if sink_epoch > top:
        problems.append(f"the sink committed under epoch {sink_epoch}, never granted "
                        f"(highest {top})")
    detail = "; ".join(problems) or (
        f"{len(state.leaders)} reigns observed (epochs {epochs}), {len(records)} checkpoints "
        f"committed in epoch order, sink at epoch {sink_epoch}")
    return rep.InvariantResult(name="no_split_brain", passed=not problems, detail=detail,
                               data={"leaders": state.leaders, "sink_epoch": sink_epoch})


def _inv_rpo(env: ChaosEnvironment, state: RunState, params: Any) -> rep.InvariantResult:
    """Events committed before each fault are all in the final output (read from disk)."""
    max_lost = int(params.get("max_lost", 0))
    if not state.pre_fault_watermarks:
        return rep.InvariantResult(name="rpo", passed=True, detail="no fault injected")
    high = max(w for _, w in state.pre_fault_watermarks)
    lost = env.adapter.lost_before(env.scenario.job, env.input_file, env.output_db, high)
    return rep.InvariantResult(
        name="rpo", passed=len(lost) <= max_lost,
        detail=f"{len(lost)} of the events committed before the faults lost "
               f"(allowed {max_lost}; checked up to line {high - 1:,})",
        data={"lost": len(lost), "sample": lost[:10], "watermark": high})


def _inv_recovery_time(env: ChaosEnvironment, state: RunState,
                       params: Any) -> rep.InvariantResult:
    bound = float(params["max_seconds"])
    times = []
    for f in state.faults:
        at_fault = next((s for s in reversed(state.samples) if s.t <= f.injected_at),
                        state.samples[0])
        start = f.healed_at if f.healed_at is not None else f.injected_at
        # A fault that caused a restore counts from the new generation on: a checkpoint
        # of the old one completing right after the kill is not a recovery.
        restored = next((s for s in state.samples
                         if s.t >= f.injected_at and s.generation > at_fault.generation), None)
        if restored is not None and restored.t - f.injected_at < 120:
            start = max(start, restored.t)
        base = next((s.committed for s in reversed(state.samples) if s.t <= start),
                    at_fault.committed)
        after = next((s.t for s in state.samples if s.t >= start and s.committed > base), None)
        times.append(None if after is None else round(after - f.injected_at, 2))
    bad = [t for t in times if t is None or t > bound]
    return rep.InvariantResult(
        name="recovery_time", passed=not bad,
        detail=f"output committed again after each fault in {times} s (bound {bound:g}s)",
        data={"seconds": times})


INVARIANT_CHECKS: dict[str, Callable[[ChaosEnvironment, RunState, Any],
                                     rep.InvariantResult]] = {
    "exactly_once": _inv_exactly_once, "no_split_brain": _inv_no_split_brain,
    "rpo": _inv_rpo, "recovery_time": _inv_recovery_time}

