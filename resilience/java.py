"""Java in a fused job: Java actors, and the bridge a Java pipeline stage is built on.

* `java_actor(class_name, ...)`: a Java class implementing
  ``io.fusionresilience.ResilientState`` under `@resilient` (call log, dedup, snapshots,
  failover), through a Python twin that owns its JVM;
* `java_actor_class(name)` and `call(handle, method, *args)`: a plain Java actor and a call
  into it that is never retried (a restarted JVM is empty), for a pipeline operator that
  keeps its state in Java (see ``fusion_jobs/payments/java_balances.py``);
* `pack`/`unpack`/`pack_long_map`/`unpack_long_map`: the MessagePack both sides speak;
* `java_unavailable_reason()`: why Java cannot run here (no JDK ...), or None;
  `ensure_java_built()` builds the jar with ``javac`` when a source is newer.

See docs/java.md.
"""

from __future__ import annotations

from resilience._errors import JavaBuildError, JavaCallError
from resilience._java._actor import java_actor
from resilience._java._bridge import (
    COUNTER,
    JavaActorClass,
    call,
    code_search_path,
    ensure_java_built,
    java_actor_class,
    java_cause,
    java_code_search_path_if_available,
    java_unavailable_reason,
    pack,
    pack_args,
    pack_long_map,
    unpack,
    unpack_long_map,
)

__all__ = [
    "COUNTER",
    "JavaActorClass",
    "JavaBuildError",
    "JavaCallError",
    "call",
    "code_search_path",
    "ensure_java_built",
    "java_actor",
    "java_actor_class",
    "java_cause",
    "java_code_search_path_if_available",
    "java_unavailable_reason",
    "pack",
    "pack_args",
    "pack_long_map",
    "unpack",
    "unpack_long_map",
]
