"""Start or join Ray, on loopback only.

Two environment settings matter on these machines: without
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` Ray binds the machine's external
interface even when asked for 127.0.0.1, and ``RAY_USAGE_STATS_ENABLED=0`` keeps
it from phoning home. A driver joining an existing cluster needs
``RAY_AUTH_MODE=token``. This module never runs ``ray stop`` (it kills every Ray
process of the machine): what it starts, `ray.shutdown()` stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from resilience._errors import (
    RayUnreachable,
)

__all__ = ["RAY_ENV", "RaySession", "RayUnreachable", "apply_ray_env", "ray_session"]

RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Workers inherit the driver's environment; keep their logs quiet on the console.
    "RAY_DEDUP_LOGS": "1",
    # When a call to an actor fails because its process died, Ray waits up to 1 s for
    # the death notice before failing the call. Failover decisions here are ours, so
    # fail at once (KubeRay sets the same for RayService, "to improve service SLA").
    "RAY_timeout_ms_task_wait_for_death_info": "0",
    # gRPC logs at INFO each time a process is started while a gRPC thread is busy
    # ("skipping fork() handlers"): noise on the console of every restart.
    "GRPC_VERBOSITY": "ERROR",
}


def apply_ray_env() -> None:
    """Set the environment Ray must see before `ray.init` starts its processes.

    Also token auth (``RAY_AUTH_MODE=token``, what Ray enables by default for a cluster
    it starts locally, and what a driver joining such a cluster needs), but only while
    Ray is not imported yet: Ray reads it once, at import, and a value set later would
    disagree with what it read (a program that imported Ray first keeps Ray's own
    defaults, and sets the variable itself to join a token-auth cluster).
    """
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


# Ray's banners about deaths the runtime reports itself, in one line, and acts on.
_QUIET_PHRASES = ("worker died", "will be retried", "Raylet is terminated",
                  "has been marked dead")


def _quiet_worker_deaths() -> None:
    """Drop Ray's "A worker died" banners from the driver's stdout.

    Killing workers is what this project does on purpose (tests, demo, chaos), and
    the runtime reports each failure itself in one line. Ray prints these from a
    private listener thread; if its internals move, the banners simply come back.
    """
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_resilience_quiet", False):
        return

    def quiet(data: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict) and data.get("pid") == "raylet" and any(
            phrase in str(line) for line in data.get("lines", []) for phrase in _QUIET_PHRASES
        ):
            logging.getLogger("resilience.ray").debug("%s", data["lines"])
            return None
        return original(data, *args, **kwargs)

    quiet._resilience_quiet = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = quiet


class RaySession:
    """The Ray session in use: its GCS address and whether this process started it.

    A session this process started locally can tell when its node lost a process
    (`lost`: the raylet, or the GCS; Ray's per-node agents fate-share with the
    raylet) and start a fresh local node in its place (`restart`).
    """

    def __init__(self, address: str, started_here: bool, namespace: str,
                 init_kwargs: dict[str, Any] | None = None) -> None:
        self.address = address
        self.started_here = started_here
        self.namespace = namespace
        self._init_kwargs = init_kwargs

    def __repr__(self) -> str:
        return (f"RaySession({self.address!r}, started_here={self.started_here}, "
                f"namespace={self.namespace!r})")

    def lost(self) -> str | None:
        """Which process of the local node this process started has exited, if any."""
        if not self.started_here:
            return None
        try:
            from ray._private import worker as ray_worker

            node = ray_worker._global_node
            processes: dict[str, Any] = dict(node.all_processes) if node is not None else {}
        except (ImportError, AttributeError):  # Ray's internals moved: cannot tell
            return None
        for kind in ("raylet", "gcs_server"):
            for info in processes.get(kind, []):
                code = info.process.poll()
                if code is not None:
                    return (f"the local Ray node's {kind} (pid {info.process.pid}) exited "
                            f"with code {code}")
        return None

    def restart(self) -> None:
        """Shut this process's local Ray down and start a new one with the same settings."""
        if not self.started_here or self._init_kwargs is None:
            raise RuntimeError("only a Ray session started by this process can be restarted")
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        _init_keeping_sigterm(self._init_kwargs)
        self.address = ray.get_runtime_context().gcs_address


def _auth_token() -> str | None:
    """The token a Ray driver presents, looked up where Ray looks: RAY_AUTH_TOKEN, the file
    named by RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _probe_gcs(address: str, timeout_s: float = 5.0) -> None:
    """Ask the GCS at `address` for its cluster id, with this driver's token; one line if not.

    `ray.init` itself retries an address that does not answer, or a head that refuses
    the driver, for minutes in native code that no signal interrupts; this one call
    has a deadline.
    """
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    token = _auth_token()
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(),  # type: ignore[attr-defined]
                              timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as e:
            code = e.code() if callable(getattr(e, "code", None)) else None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise RayUnreachable(
                    f"the Ray cluster at {address} refused this driver's auth token: give "
                    "the cluster's token (RAY_AUTH_TOKEN or ~/.ray/auth_token)") from None
            detail = (e.details() if callable(getattr(e, "details", None)) else "") or ""
            raise RayUnreachable(
                f"no Ray cluster answers at {address} ({getattr(code, 'name', code)}: "
                f"{detail.splitlines()[0][:200] if detail else 'no detail'})") from None


def _join(address: str, kwargs: dict[str, Any]) -> None:
    """`ray.init(address=...)`, failing at once with one line when the cluster is not there.

    Left alone, Ray retries an address where nothing listens for minutes, and a head
    that refuses the driver's token ends in a traceback after pages of log lines.
    """
    import ray

    if address != "auto" and "://" not in address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise RayUnreachable(f"Ray address {address!r}: expected HOST:PORT")
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
        except OSError as e:
            raise RayUnreachable(f"no Ray cluster answers at {address}: "
                                 f"{e.strerror or e}") from None
        _probe_gcs(address)
    try:
        _init_keeping_sigterm({"address": address, **kwargs})
    except Exception as e:  # noqa: BLE001 - whatever Ray raises, the user gets one line
        with contextlib.suppress(Exception):
            ray.shutdown()
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise RayUnreachable(f"cannot join the Ray cluster at {address}: {first}") from None


def _init_keeping_sigterm(kwargs: dict[str, Any]) -> None:
    """`ray.init`, after which the program's own SIGTERM handler is back in place.

    Ray's core worker installs a handler that prints a crash dump on SIGTERM; a
    program that turns SIGTERM into a clean stop (the CLI) keeps its handler.
    """
    import ray

    previous = signal.getsignal(signal.SIGTERM)
    ray.init(**kwargs)
    if callable(previous) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    *,
    namespace: str = "resilience",
    num_cpus: int | None = None,
    temp_dir: str | None = None,
    include_dashboard: bool = False,
    code_search_path: Sequence[str] | None = None,
    object_store_memory: int | None = 512 * 1024 * 1024,
    log_to_driver: bool = False,
) -> Iterator[RaySession]:
    """Use the current Ray session, join `address`, or start a local one on 127.0.0.1.

    A session this call started is shut down when the context exits (only ours:
    never `ray stop`). An already-initialized session is left running.
    `code_search_path` None (the default) puts the project's Java library on it when
    Java is available (`resilience._java`), so Java stages and actors can run; ``()``
    starts a Python-only session. Joining `address` fails with `RayUnreachable` (one
    line) when nothing answers there or the cluster refuses this driver.
    """
    apply_ray_env()
    import ray

    # A local cluster started here uses token auth; saying so on every start is noise.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        lambda record: record.levelno >= logging.ERROR
    )
    if not log_to_driver:
        _quiet_worker_deaths()

    if ray.is_initialized():
        yield RaySession(ray.get_runtime_context().gcs_address, False, namespace)
        return
    kwargs: dict[str, Any] = {
        "namespace": namespace,
        "logging_level": logging.WARNING,
        "log_to_driver": log_to_driver,
    }
    if code_search_path is None:
        from resilience._java._bridge import java_code_search_path_if_available

        code_search_path = java_code_search_path_if_available()
    if code_search_path:
        kwargs["job_config"] = ray.job_config.JobConfig(code_search_path=list(code_search_path))
    if address:
        _join(address, kwargs)
        session = RaySession(ray.get_runtime_context().gcs_address, False, namespace)
    else:
        kwargs.update(
            address="local",
            _node_ip_address="127.0.0.1",
            num_cpus=num_cpus,
            include_dashboard=include_dashboard,
            _temp_dir=temp_dir,
            object_store_memory=object_store_memory,
        )
        _init_keeping_sigterm(kwargs)
        session = RaySession(ray.get_runtime_context().gcs_address, True, namespace, kwargs)
    try:
        yield session
    finally:
        ray.shutdown()
