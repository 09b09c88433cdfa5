"""The Java side: build the project's jar and create and call Java actors from Python.

The Java library (``java/src/io/fusionresilience``) is compiled against the
``ray_dist.jar`` shipped in the ``ray`` wheel into ``build/java/fusion-resilience.jar``
(by ``make java`` or `ensure_java_built`). A Ray session whose ``code_search_path``
holds that jar can then run Java actors::

    with ray_session(code_search_path=code_search_path()):
        counter = java_actor_class(COUNTER).options(max_restarts=-1).remote()
        out = unpack(ray.get(call(counter, "apply", pack(args))))

Everything crossing languages is a simple value (``bytes``, ``str``, ``int``, ``bool``,
``float``); structured data is MessagePack ``bytes`` (`pack`/`unpack` here, ``Msg`` in
Java). Two traps of Ray 2.60 that this module handles or documents:

* A Java exception reaches Python as ``ray.exceptions.CrossLanguageError`` (its text
  holds the Java stack, ``Caused by: ...`` last) only if the JVM may reflect into
  ``java.base``: on JDK 17 Ray's exception serializer (FST) otherwise fails and the
  Java worker aborts, so the caller sees the actor die instead. `java_actor_class`
  gives every actor the `JVM_OPTIONS` that allow it.
* A ``void`` Java method called from Python aborts the Java worker ("1 return objects
  expected"): the project's Java methods all return a value.

Ray ignores the actor-level ``max_task_retries`` for Java actors created from Python,
so `call` sets it per call.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgpack

from resilience._errors import JavaBuildError

__all__ = [
    "COUNTER",
    "JVM_OPTIONS",
    "RESILIENT_HOST",
    "JavaActorClass",
    "JavaBuildError",
    "call",
    "code_search_path",
    "ensure_java_built",
    "jar_path",
    "java_actor_class",
    "java_cause",
    "java_code_search_path_if_available",
    "java_unavailable_reason",
    "pack",
    "pack_args",
    "pack_long_map",
    "ray_dist_jar",
    "session_code_search_path",
    "unpack",
    "unpack_long_map",
]

log = logging.getLogger(__name__)

RESILIENT_HOST = "io.fusionresilience.ResilientHost"
COUNTER = "io.fusionresilience.Counter"

JAR_NAME = "fusion-resilience.jar"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_JAVAC_FLAGS = ("--release", "17", "-encoding", "UTF-8", "-Xlint:all", "-Werror")
_COMPILE_TIMEOUT_S = 300.0

# Ray serializes a Java exception with FST, which reflects into these packages of
# java.base; JDK 17 refuses unless they are opened. Found by experiment: with fewer, a
# throwing method aborts the worker (see the module docstring).
_OPENED_PACKAGES = (
    "java.lang",
    "java.util",
    "java.util.concurrent",
    "java.math",
    "java.net",
    "java.text",
)
JVM_OPTIONS: tuple[str, ...] = tuple(
    f"--add-opens=java.base/{package}=ALL-UNNAMED" for package in _OPENED_PACKAGES
)
"""JVM options every Java actor needs so that its exceptions reach Python."""

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


# -- build ----------------------------------------------------------------------------


def ray_dist_jar() -> Path | None:
    """The ``ray_dist.jar`` of the installed ``ray`` wheel, without importing Ray."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "jars" / "ray_dist.jar"
        if candidate.is_file():
            return candidate
    return None


def _sources(root: Path) -> list[Path]:
    return sorted((root / "java" / "src").rglob("*.java"))


def jar_path(root: Path | None = None) -> Path:
    """Where the project's jar is built (it may not exist yet)."""
    return (root or _PROJECT_ROOT) / "build" / "java" / JAR_NAME


def java_unavailable_reason(root: Path | None = None) -> str | None:
    """Why Java actors cannot be used here, in one line; None when they can.

    Checks for ``java``, ``javac`` and ``jar`` on PATH, the ``ray_dist.jar`` of the
    installed Ray and the Java sources. It does not compile: `ensure_java_built` does,
    and raises `JavaBuildError` if the sources do not compile.
    """
    for tool in ("java", "javac", "jar"):
        if shutil.which(tool) is None:
            return f"{tool} not found on PATH (Java actors need a JDK 17+)"
    if ray_dist_jar() is None:
        return "ray_dist.jar not found in the installed ray wheel (ray/jars/ray_dist.jar)"
    src = (root or _PROJECT_ROOT) / "java" / "src"
    if not _sources(root or _PROJECT_ROOT):
        return f"no Java sources under {src}"
    return None


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    # Several test processes (or make and a test) may build at once: one compiles, the
    # others wait and then find the jar fresh.
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _is_fresh(jar: Path, inputs: list[Path]) -> bool:
    if not jar.is_file():
        return False
    built = jar.stat().st_mtime
    return all(path.stat().st_mtime <= built for path in inputs)


def _run(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise JavaBuildError(f"{what} could not run: {e}") from e
    if done.returncode != 0:
        output = (done.stderr + done.stdout).strip()
        if len(output) > 4000:
            output = "...\n" + output[-4000:]
        raise JavaBuildError(f"{what} failed (exit {done.returncode}):\n{output}")


def ensure_java_built(root: Path | None = None) -> Path:
    """Compile the Java library unless the jar is newer than every source; return the jar.

    Same result as ``make java`` (javac --release 17 against Ray's ``ray_dist.jar``,
    warnings are errors). The jar is replaced atomically, so a concurrent reader sees
    the old or the new one, never half of one. Safe to call from tests and from
    several processes at once. Raises `JavaBuildError` with javac's output when the
    sources do not compile, or the reason when Java is unavailable.
    """
    root = (root or _PROJECT_ROOT).resolve()
    reason = java_unavailable_reason(root)
    if reason is not None:
        raise JavaBuildError(f"cannot build the Java library: {reason}")
    ray_jar = ray_dist_jar()
    assert ray_jar is not None  # checked by java_unavailable_reason
    sources = _sources(root)
    jar = jar_path(root)
    with _build_lock(jar.parent):
        if _is_fresh(jar, [*sources, ray_jar]):
            return jar
        with tempfile.TemporaryDirectory(prefix="build-", dir=jar.parent) as tmp:
            classes = Path(tmp) / "classes"
            classes.mkdir()
            _run(
                ["javac", *_JAVAC_FLAGS, "-cp", str(ray_jar), "-d", str(classes),
                 *map(str, sources)],
                f"javac ({len(sources)} files under {root / 'java' / 'src'})",
            )
            staged = Path(tmp) / JAR_NAME
            _run(["jar", "--create", "--file", str(staged), "-C", str(classes), "."], "jar")
            os.replace(staged, jar)
    return jar


def code_search_path(root: Path | None = None) -> list[str]:
    """The ``code_search_path`` a Ray session needs for the project's Java actors.

    Builds the jar if needed (see `ensure_java_built`, which raises when it cannot).
    """
    return [str(ensure_java_built(root))]


def java_code_search_path_if_available(root: Path | None = None) -> list[str]:
    """`code_search_path`, or ``[]`` when Java is unavailable or the build fails.

    For fixtures that start one Ray session for every test: they must not fail when
    there is no JDK. A failed build is logged here and raised again by the Java tests'
    own `ensure_java_built`, so it cannot pass unnoticed.
    """
    reason = java_unavailable_reason(root)
    if reason is not None:
        log.info("Java actors unavailable: %s", reason)
        return []
    try:
        return code_search_path(root)
    except JavaBuildError as e:
        log.warning("%s", e)
        return []


def session_code_search_path() -> list[str] | None:
    """The ``code_search_path`` of the connected Ray driver, or None if not known.

    Reads Ray's private job config: None (not an error) if Ray is not initialized or
    its internals moved.
    """
    import ray

    if not ray.is_initialized():
        return None
    try:
        worker = ray._private.worker.global_worker
        config = worker.core_worker.get_job_config()  # type: ignore[attr-defined]
        return [str(p) for p in config.code_search_path]
    except AttributeError:
        return None


# -- actors and calls -------------------------------------------------------------------


class JavaActorClass:
    """A Java actor class whose JVMs report exceptions to Python (`JVM_OPTIONS`).

    A thin wrapper over ``ray.cross_language.java_actor_class``: `options` takes Ray's
    actor options (``max_restarts``, ``name``, ``runtime_env`` ...) and `remote` creates
    the actor. The JVM options travel as ``JDK_JAVA_OPTIONS`` in the actor's
    ``runtime_env`` (Ray's Python API has no per-actor JVM options, and a job-level
    ``jvm_options`` would need the session to be started for Java); a
    ``JDK_JAVA_OPTIONS`` of your own is kept, ours are appended.
    """

    def __init__(self, class_name: str, options: Mapping[str, Any] | None = None) -> None:
        self.class_name = class_name
        self._options = dict(options or {})

    def options(self, **options: Any) -> JavaActorClass:
        """A copy with these Ray actor options added (later ones win)."""
        return JavaActorClass(self.class_name, {**self._options, **options})

    def remote(self, *args: Any) -> Any:
        """Create the actor: its constructor gets ``args`` (simple values only)."""
        import ray

        options = dict(self._options)
        runtime_env = dict(options.get("runtime_env") or {})
        env_vars = dict(runtime_env.get("env_vars") or {})
        ours = " ".join(JVM_OPTIONS)
        own = env_vars.get("JDK_JAVA_OPTIONS", "").strip()
        env_vars["JDK_JAVA_OPTIONS"] = f"{own} {ours}" if own else ours
        runtime_env["env_vars"] = env_vars
        options["runtime_env"] = runtime_env
        actor_class = ray.cross_language.java_actor_class(self.class_name)
        return actor_class.options(**options).remote(*args)

    def __repr__(self) -> str:
        return f"JavaActorClass({self.class_name!r}, options={self._options!r})"


def java_actor_class(name: str) -> JavaActorClass:
    """The Java actor class ``name`` (fully qualified), e.g. `COUNTER`.

    Its jar must be on the session's ``code_search_path`` (`code_search_path`).
    """
    return JavaActorClass(name)


def call(handle: Any, method: str, *args: Any, retries: int = -1) -> Any:
    """Call ``method`` on a Java actor; return the ObjectRef of its result.

    ``retries`` is the call's ``max_task_retries`` (-1: retry until the restarted actor
    answers; 0: fail at once when the actor dies). Java actors created from Python
    ignore the actor-level setting, hence this helper. A retried call runs again on
    the restarted (empty) actor: deduplication is the caller's business.
    Arguments are simple values; Java ``long`` parameters accept any Python int in
    range, but ``int`` parameters only small ones and ``double`` parameters only floats.
    """
    return getattr(handle, method).options(max_task_retries=retries).remote(*args)


# -- MessagePack, mirroring Msg.java -------------------------------------------------------


def _canonical(value: Any) -> Any:
    # Msg.java writes maps whose keys are all strings sorted by key: do the same, so
    # both languages produce the same bytes for the same value.
    if isinstance(value, dict):
        items = [(k, _canonical(v)) for k, v in value.items()]
        if all(isinstance(k, str) for k, _ in items):
            items.sort(key=lambda kv: kv[0])
        return dict(items)
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def pack(value: Any) -> bytes:
    """MessagePack of ``value`` as ``Msg.pack`` writes it (str-keyed maps sorted)."""
    data: bytes = msgpack.packb(_canonical(value), use_bin_type=True)
    return data


def pack_args(*args: Any) -> bytes:
    """Positional call arguments as a MessagePack array (``ResilientState.apply``)."""
    return pack(list(args))


def unpack(data: bytes) -> Any:
    """Exactly one MessagePack value (str as str, bin as bytes, arrays as lists).

    Raises ``ValueError`` naming the problem when ``data`` is not one valid value.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise ValueError(f"not valid MessagePack: {e}") from e


def _check_int64(value: Any, what: str, wrong_type: type[Exception]) -> int:
    if type(value) is not int:
        raise wrong_type(f"{what} must be an int, got {type(value).__name__}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"{what} is out of the 64-bit signed range: {value}")
    return value


def pack_long_map(mapping: Mapping[str, int]) -> bytes:
    """A str -> int map as ``Msg.packLongMap`` writes it.

    Raises ``TypeError`` for a key that is not a str or a value that is not an int,
    ``ValueError`` for a value outside Java's long range.
    """
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"keys must be str, got {type(key).__name__}")
        _check_int64(value, f"value of key {key!r}", TypeError)
    return pack(dict(mapping))


def unpack_long_map(data: bytes) -> dict[str, int]:
    """A str -> int map as ``Msg.unpackLongMap`` reads it.

    Raises ``ValueError`` naming the problem when ``data`` is anything else (bad bytes
    are bad data, not a bad argument: the same error as Java's IllegalArgumentException).
    """
    doc = unpack(data)
    if type(doc) is not dict:
        raise ValueError(f"expected a MessagePack map of str to int, got {type(doc).__name__}")
    out: dict[str, int] = {}
    for key, value in doc.items():
        if type(key) is not str:
            raise ValueError(
                f"expected a map of str to int, got a key of type {type(key).__name__}"
            )
        out[key] = _check_int64(value, f"value of key {key!r}", ValueError)
    return out


def java_cause(e: Exception) -> str:
    """The last ``Caused by:`` line of a Java stack carried by a CrossLanguageError."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    causes = [ln for ln in lines if ln.startswith("Caused by:")]
    if causes:
        return causes[-1].removeprefix("Caused by:").strip()
    return next((ln for ln in lines if "Exception" in ln), lines[0] if lines else repr(e))
