"""The restore plan without a cluster: newest first, fallbacks, the unaligned stop."""

from __future__ import annotations

from checkpoint import ChunkRef, Manifest, TaskSnapshot
from resilience._runtime._registry import CheckpointRecord
from resilience._runtime._restore_plan import RestorePlan, snapshots_for


def _record(cid: int, unaligned: bool = False) -> CheckpointRecord:
    return CheckpointRecord(cid, 1, cid * 10, 0.0, 0.0, 0, "x", unaligned)


def test_newest_first_then_an_empty_start() -> None:
    plan = RestorePlan([_record(3), _record(1), _record(2)])
    assert [None if r is None else r.checkpoint_id for r in plan] == [3, 2, 1, None]
    assert plan.blocked("j") is None


def test_skipping_a_corrupt_checkpoint_is_recorded_and_allowed() -> None:
    plan = RestorePlan([_record(1), _record(2)])
    plan.skip(2, "chunk ab: checksum mismatch", unaligned=False)
    assert plan.fallbacks == ["checkpoint 2: chunk ab: checksum mismatch"]
    assert plan.blocked("j") is None


def test_falling_back_past_an_unaligned_checkpoint_is_refused() -> None:
    plan = RestorePlan([_record(1), _record(2, unaligned=True)])
    plan.skip(2, "manifest truncated", unaligned=True)
    why = plan.blocked("payments")
    assert why is not None
    assert "cannot fall back past checkpoint 2, which stored in-flight records" in why
    assert "manifest truncated" in why


def _snap(task: str, stage: str) -> TaskSnapshot:
    return TaskSnapshot(task, stage, (ChunkRef("sha256:" + "0" * 64, 1),), {})


def test_a_task_gets_its_own_snapshot_or_its_whole_stage_after_a_rescale() -> None:
    manifest = Manifest(job_id="j", checkpoint_id=1, fencing_epoch=1, code_version="0",
                        schema_version=1, created_at=0.0, duration_s=0.0, tasks={
                            "b-0": _snap("b-0", "b"), "b-1": _snap("b-1", "b"),
                            "s-0": _snap("s-0", "s")})
    assert [s.task_id for s in snapshots_for(manifest, "b-1", "b", 2)] == ["b-1"]
    # Parallelism 3 now: every task reads both old snapshots and keeps its key groups.
    assert [s.task_id for s in snapshots_for(manifest, "b-2", "b", 3)] == ["b-0", "b-1"]
    assert [s.task_id for s in snapshots_for(manifest, "b-0", "b", 1)] == ["b-0", "b-1"]
    assert snapshots_for(None, "b-0", "b", 2) == []
