"""The payments job's balance stage in Java (``--balances-stage java``).

`JavaBalances` is a pipeline operator like `Balances`, but the per-account balances
live in a Java actor (``io.fusionresilience.BalancesStage``, java/src) that the
operator creates and drives through Ray's cross-language calls. The Java actor takes
part in everything a Python stage does:

* barriers: the hosting task aligns them and calls `snapshot`, which asks Java for the
  accounts changed since the previous snapshot (``snapshotDelta``);
* incremental checkpoints: those deltas go into the same keyed-state chain
  (`checkpoint.KeyedState`, detached mode) as Python's, with the same compaction,
  so a checkpoint of the Java stage reads the same from Python or Java: MessagePack
  ``{"set": {account: balance}, "del": []}`` chunks;
* restore: the chain is folded in Python and the full map sent to Java (``restore``);
  a Java restore that throws, or a delta that does not decode, is a corrupt
  checkpoint for the coordinator, which falls back to an older one;
* failover: a Java worker that dies fails the hosting task's next call (calls are
  never retried on the restarted, empty actor), the coordinator restores the job and
  the restarted Java actor gets its state back.

Nothing here is specific to balances but the wire format of a batch; a user's own
Java stage follows the same pattern (see docs/java.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from typing import Any

import msgpack

# The same state layout (and schema version) as the Python stage: the two are
# interchangeable, a checkpoint of one restores into the other.
from fusion_jobs.payments.schema import STATE_SCHEMA_VERSION, check_schema
from resilience import CheckpointCorrupt, faultpoints
from resilience.java import call, java_actor_class, java_cause, pack_long_map, unpack
from resilience.pipeline import (
    CheckpointStore,
    KeyedState,
    KeyGroupRange,
    OperatorContext,
    SnapshotWriter,
    StateHandle,
    TaskSnapshot,
    WrittenSnapshot,
)

BALANCES_STAGE = "io.fusionresilience.BalancesStage"
"""The Java class of the stage (in the project's jar, java/src)."""

__all__ = ["JavaBalances"]

class JavaBalances:
    """Per-account balances held by a Java actor; checkpointed like `Balances`.

    Fault point (for tests and chaos drills, see `resilience.faultpoints`):
    ``balances-<i>.java_snapshot`` with ``kill``: SIGKILL the JVM just before the
    snapshot call (one-shot). `java_class` names the Java class of the stage, and
    `before_snapshot`/`before_restore` run first in those steps: a subclass may add
    failures there (the project's tests do, with a Java subclass of their own).
    """

    java_class = BALANCES_STAGE

    def __init__(self, standby: bool = True) -> None:
        self.state = KeyedState()
        self.standby = standby
        self._actor: Any = None
        self._spare: Any = None
        self._suspect = False  # a call to the JVM failed: it died (or is restarting)
        self._ctx: OperatorContext | None = None
        self._full_next = False
        self._pid: int | None = None

    # -- lifecycle -------------------------------------------------------------------

    def open(self, ctx: OperatorContext) -> None:
        self._ctx = ctx
        self.state = KeyedState(KeyGroupRange.for_task(ctx.index, ctx.parallelism))
        # Owned by this task's worker: if the task dies, its JVMs go with it and the
        # task's next incarnation creates new ones. If only the JVM dies, the restore
        # that follows loads the state into the warm standby JVM (already started, so
        # no JVM start-up on the recovery path) and a new standby starts behind it;
        # without a standby, Ray restarts the dead JVM (empty) and the restore fills it.
        self._actor = self._new_jvm()
        self._spare = self._new_jvm() if self.standby else None
        # The task is up when its JVMs are: a JVM boots for seconds of CPU, which
        # would otherwise be taken from the job's first seconds of processing.
        import ray

        ray.get([call(j, "pid", retries=-1) for j in (self._actor, self._spare)
                 if j is not None], timeout=120)

    def _new_jvm(self) -> Any:
        return java_actor_class(self.java_class).options(max_restarts=-1, num_cpus=0).remote()

    def _promote_standby(self) -> None:
        import ray

        if self._spare is None:
            return
        # The new spare starts after the restore (see `restore`): its JVM boot would
        # otherwise compete for the CPU with the restore it is meant to speed up.
        dead, self._actor, self._spare = self._actor, self._spare, None
        self._pid = None
        with contextlib.suppress(Exception):
            ray.kill(dead, no_restart=True)

    @property
    def actor(self) -> Any:
        if self._actor is None:
            raise RuntimeError("JavaBalances used before open()")
        return self._actor

    def _get(self, method: str, *args: Any, retries: int = 0) -> Any:
        import ray

        try:
            return ray.get(call(self.actor, method, *args, retries=retries))
        except ray.exceptions.RayActorError:
            self._suspect = True
            raise

    def helper_pids(self) -> dict[str, int]:
        """Processes this operator runs besides its task's worker: ``{"java": pid}``."""
        import ray

        # A JVM that is restarting does not answer: the last known pid (or none) then.
        with contextlib.suppress(ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
            self._pid = int(ray.get(call(self.actor, "pid", retries=-1), timeout=30))
        return {} if self._pid is None else {"java": self._pid}

    def point(self, name: str) -> str | None:
        """Take the one-shot fault point ``<task>.<name>`` if it is armed."""
        ctx = self._ctx
        if ctx is None:
            return None
        return faultpoints.take(ctx.workdir,
                                faultpoints.TASK_POINT.format(task=ctx.task_id, point=name))

    # -- processing --------------------------------------------------------------------

    def process(self, channel: int, records: Sequence[Any]) -> list[Any]:
        # Only what the balances need crosses to Java, as two columns (msgpack directly:
        # `pack` canonicalizes maps, there are none); ids, lines, scores and versions stay here.
        columns = msgpack.packb([[r[2] for r in records], [r[3] for r in records]],
                                use_bin_type=True)
        # retries=0: a call re-run on a restarted (empty) JVM would compute balances from
        # zero. Failing here makes the coordinator restore the job instead.
        after = msgpack.unpackb(self._get("processColumns", columns), use_list=True)
        if len(after) != len(records):
            raise ValueError(f"BalancesStage.processColumns returned {len(after)} balances "
                             f"for {len(records)} legs")
        return [(line_no, tx_id, account, delta, balance, score, version)
                for (line_no, tx_id, account, delta, score, version), balance
                in zip(records, after, strict=True)]

    def end_of_input(self) -> list[Any]:
        return []

    # -- checkpoints ---------------------------------------------------------------------

    def snapshot(self, checkpoint_id: int) -> SnapshotWriter:
        self.before_snapshot()
        if self._full_next:
            # After a restore into other key groups the chain starts over: the first
            # delta must carry every key (KeyedState.restore_detached said so).
            full = unpack(self._get("snapshot"))
            self._get("snapshotDelta")  # and Java's changed-set starts from here
            changed, deleted, keys = _long_map(full, "snapshot"), [], len(full)
        else:
            doc = unpack(self._get("snapshotDelta"))
            if not isinstance(doc, dict) or not {"set", "del", "keys"} <= doc.keys():
                raise ValueError(f"BalancesStage.snapshotDelta returned {type(doc).__name__} "
                                 f"without set/del/keys")
            changed = _long_map(doc["set"], "snapshotDelta")
            deleted, keys = [str(k) for k in doc["del"]], int(doc["keys"])
        self._full_next = False
        delta = self.state.begin_detached_snapshot(checkpoint_id, changed, deleted, keys)

        def write(store: CheckpointStore) -> WrittenSnapshot:
            handle = delta.write(store)
            return WrittenSnapshot(handle.chunks, {**handle.metadata, "language": "java",
                                                   "schema": STATE_SCHEMA_VERSION})

        # A failed write needs nothing from us: the state keeps the delta for the next one.
        return SnapshotWriter(write)

    def restore(self, store: CheckpointStore, snapshots: Sequence[TaskSnapshot]) -> None:
        if snapshots:
            for s in snapshots:
                check_schema(s.metadata, s.task_id)
            values, self._full_next = self.state.restore_detached(
                store, [StateHandle(s.chunks, s.metadata) for s in snapshots])
            where = ", ".join(f"{s.task_id}@{s.metadata.get('checkpoint_id', '?')}"
                              for s in snapshots)
        else:
            self.state.reset()
            values, self._full_next, where = {}, False, "empty state"
        import ray

        if self._suspect:
            self._suspect = False
            self._promote_standby()
        self.before_restore()
        try:
            # retries=-1: the JVM may be restarting after a crash; wait for it.
            self._get("restore", pack_long_map(values), retries=-1)
            if self.standby and self._spare is None:
                self._spare = self._new_jvm()
        except ray.exceptions.CrossLanguageError as e:
            raise CheckpointCorrupt(
                f"Java actor {self.java_class} of task "
                f"{self._ctx.task_id if self._ctx else '?'} ({where})",
                f"restore threw: {java_cause(e)}",
            ) from None


    def before_snapshot(self) -> None:
        self.fail_in_snapshot(self.point("java_snapshot"))

    def fail_in_snapshot(self, how: str | None) -> None:
        """``kill``: the JVM dies during the checkpoint; the snapshot call that follows
        fails, so the checkpoint cannot complete and the job restores the previous one."""
        if how == "kill":
            os.kill(int(self._get("pid")), signal.SIGKILL)

    def before_restore(self) -> None:
        pass


def _long_map(value: Any, what: str) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and type(v) is int for k, v in value.items()):
        raise ValueError(f"BalancesStage.{what} did not return a map of str to int")
    return value
