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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["RAY_ENV", "RaySession", "apply_ray_env", "ray_session"]

RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Workers inherit the driver's environment; keep their logs quiet on the console.
    "RAY_DEDUP_LOGS": "1",
    # When a call to an actor fails because its process died, Ray waits up to 1 s for
    # the death notice before failing the call. Failover decisions here are ours, so
    # fail at once (KubeRay sets the same for RayService, "to improve service SLA").
    "RAY_timeout_ms_task_wait_for_death_info": "0",
}


def apply_ray_env() -> None:
    """Set the environment Ray must see before `ray.init` starts its processes."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


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
            "worker died" in str(line) or "will be retried" in str(line)
            for line in data.get("lines", [])
        ):
            logging.getLogger("resilience.ray").debug("%s", data["lines"])
            return None
        return original(data, *args, **kwargs)

    quiet._resilience_quiet = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = quiet


@dataclass(frozen=True)
class RaySession:
    """The Ray session in use: its GCS address and whether this process started it."""

    address: str
    started_here: bool
    namespace: str


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
    starts a Python-only session.
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
        from resilience._java import java_code_search_path_if_available

        code_search_path = java_code_search_path_if_available()
    if code_search_path:
        kwargs["job_config"] = ray.job_config.JobConfig(code_search_path=list(code_search_path))
    if address:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        ray.init(address=address, **kwargs)
    else:
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            num_cpus=num_cpus,
            include_dashboard=include_dashboard,
            _temp_dir=temp_dir,
            object_store_memory=object_store_memory,
            **kwargs,
        )
    try:
        yield RaySession(ray.get_runtime_context().gcs_address, True, namespace)
    finally:
        ray.shutdown()
