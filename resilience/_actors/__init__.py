"""`@resilient`: exactly-once stateful Ray actors without rewriting them.

What a decorated class gets:

* **Snapshots** of its state (declared attributes, or ``__getstate__``/``__setstate__``,
  or its whole ``__dict__``) in a checkpoint store, on a policy
  (``every(seconds=1) | every(calls=10_000)``), restored when the process comes back.
* **A write-ahead log of calls**: every call gets a call id and is logged before its
  result is returned; fsyncs are group-committed (calls arriving while a flush runs
  share the next one). After a crash the newest snapshot is loaded and the logged
  calls after it are re-applied, so each call's effect on state happens exactly once.
  Methods must therefore be deterministic functions of state and arguments.
* **Deduplication**: a call whose id was already applied returns the recorded
  result instead of running again. Ray's task retries keep their task id, so calls
  through a plain Ray handle are deduplicated too; calls through a `ResilientHandle`
  carry ids of their own and can be re-sent to another replica.
* **Failover** on a policy: ``restart(max=10)`` (Ray restarts the process, the state
  is restored, retried calls are answered), ``standby(n)`` (warm replicas follow the
  log and one is promoted without a process start), ``escalate()`` (hand over to the
  job). A spent budget ends in `FailoverExhausted`, never in a half-alive actor.

Exclusivity of the log writer is a `flock` on the actor's directory, held for the
life of the primary's process: a standby can only be promoted once the old primary
is gone, so two writers never interleave. (This fences processes on one node; a
store shared between nodes needs the etcd lease instead, as jobs use.)

A read-only method (``read_only=("get",)`` or `resilient.read_only`) skips the log,
but still waits until every logged call it could have observed is durable.
"""

from resilience._actors._decorator import ResilientActorClass, resilient
from resilience._actors._handle import ResilientHandle
from resilience._actors._policy import STORE_ENV, ActorPolicy
from resilience._errors import StateNotSerializable

__all__ = [
    "STORE_ENV",
    "ActorPolicy",
    "ResilientActorClass",
    "ResilientHandle",
    "StateNotSerializable",
    "resilient",
]
