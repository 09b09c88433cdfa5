"""`@resilient` for Java actors: a user's Java class with exactly-once calls.

The user's Java class implements ``io.fusionresilience.ResilientState`` (snapshot to
MessagePack bytes, restore from them, apply a named call). `java_actor` gives it the
same guarantees as a decorated Python actor by putting a thin Python twin,
`JavaState`, under `resilient`:

* every call gets a call id, is written to the write-ahead log (group commit) before
  it is applied, and a retried call id answers from the results table;
* snapshots are taken on the checkpoint policy: the Java state's own MessagePack
  bytes, stored as they are;
* the JVM and its Python twin share their fate. If the JVM dies, the twin exits too;
  Ray restarts the twin (the `restart` policy counts it), which starts a new JVM,
  restores the newest snapshot that verifies into it and replays the logged calls
  after it. A snapshot the Java class refuses to restore counts as corrupt, and the
  restore falls back to an older one, exactly as for a Python actor.

Usage (the jar holding the class must be on the session's ``code_search_path``;
`resilience._ray.ray_session` puts the project's jar there when Java is available)::

    Counter = java_actor("io.fusionresilience.Counter", checkpoint=every(calls=1000),
                         failover=restart(max=10))
    counter = Counter.options(name="counter").remote()
    counter.apply.call("add", 5)            # -> 5, exactly once across crashes
    ray.get(counter.apply.remote("get"))    # plain Ray refs work too
"""

from __future__ import annotations

import logging
import os
from typing import Any

from checkpoint import CheckpointCorrupt
from resilience._actors._decorator import _read_only
from resilience._errors import JavaCallError
from resilience._java._bridge import (
    RESILIENT_HOST,
    call,
    java_actor_class,
    java_cause,
    pack_args,
    unpack,
)

__all__ = ["JavaCallError", "JavaState", "java_actor"]

log = logging.getLogger(__name__)

_JVM_DIED_EXIT = 75  # the twin's exit status when its JVM died (EX_TEMPFAIL)


class JavaState:
    """The Python twin of one Java `ResilientState`: forwards calls, carries snapshots.

    Not used directly: `java_actor` decorates it with `resilient`.
    """

    def __init__(self, class_name: str) -> None:
        self.class_name = class_name
        # Owned by this process: when this twin dies, Ray kills the JVM with it.
        # max_restarts=0: a JVM restarted by Ray would come back empty behind our back.
        self._jvm = java_actor_class(RESILIENT_HOST).options(
            max_restarts=0, num_cpus=0).remote(class_name)
        self._call("stateClass")  # fails here, with Java's reason, for a bad class

    def apply(self, method: str, *args: Any) -> Any:
        """Apply one call of the Java class (arguments: MessagePack-able values)."""
        return unpack(self._call("apply", method, pack_args(*args)))

    @_read_only
    def jvm_pid(self) -> int:
        """The process id of the JVM (what a drill SIGKILLs)."""
        return int(self._call("pid"))

    def __getstate__(self) -> dict[str, Any]:
        return {"class": self.class_name, "msgpack": self._call("snapshot")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("msgpack"), bytes):
            raise CheckpointCorrupt(f"snapshot of Java actor {self.class_name}",
                                    "not {'class': ..., 'msgpack': bytes}")
        if state.get("class") != self.class_name:
            raise CheckpointCorrupt(f"snapshot of Java actor {self.class_name}",
                                    f"it holds state of {state.get('class')!r}")
        try:
            self._call("restore", state["msgpack"])
        except JavaCallError as e:
            raise CheckpointCorrupt(f"snapshot of Java actor {self.class_name}",
                                    f"restore threw: {e.cause}") from None

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(call(self._jvm, method, *args, retries=0))
        except ray.exceptions.CrossLanguageError as e:
            raise JavaCallError(self.class_name, str(args[0]) if method == "apply" else method,
                                java_cause(e)) from None
        except ray.exceptions.RayActorError:
            # The JVM is gone with the state it held. Exit so that Ray restarts this
            # twin: it restores the snapshot into a new JVM and replays the log. The
            # call in progress was logged before it was applied, so it is replayed too,
            # and its caller's retry answers from the results table.
            log.error("the JVM of %s died; restarting its twin to restore it",  # noqa: TRY400
                      self.class_name)
            logging.shutdown()
            os._exit(_JVM_DIED_EXIT)


def java_actor(class_name: str, **policy: Any) -> Any:
    """A `resilient` actor class for the Java `ResilientState` class `class_name`.

    `policy` takes what `resilient` takes (``checkpoint=``, ``failover=``, ``detect=``,
    ``log=``, ``store=``). ``.options(name=...)`` and ``.remote()`` as usual; the
    handle has one method, ``apply(method, *args)``, and ``jvm_pid()``. Snapshots and
    the call log are MessagePack (``format="msgpack"``), so the Java side reads them
    too: ``java -cp <jar> io.fusionresilience.Inspect <snapshot chunk>``.
    """
    from resilience._actors import resilient

    if policy.setdefault("format", "msgpack") != "msgpack":
        raise ValueError(f"java_actor(format=...): a Java actor's snapshots and log are "
                         f"MessagePack, got {policy['format']!r}")
    cls = type(f"Java_{class_name.rsplit('.', 1)[-1]}", (JavaState,), {
        "__module__": __name__,
        "__doc__": f"Java actor {class_name}, hosted by a resilient Python twin.",
    })
    decorated = resilient(**policy)(cls)

    class _Bound:
        """Creates the actor with its Java class name bound."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def options(self, **ray_options: Any) -> _Bound:
            return _Bound(self._inner.options(**ray_options))

        def remote(self) -> Any:
            return self._inner.remote(class_name)

        def __repr__(self) -> str:
            return f"java_actor({class_name!r}, {policy!r})"

    return _Bound(decorated)
