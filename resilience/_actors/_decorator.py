"""`@resilient`: validates the options at decoration time and builds the actor class."""


from __future__ import annotations

import dataclasses
import inspect
import logging
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from resilience._actors._handle import ResilientHandle, _get, _ping, _state, _Supervisor
from resilience._actors._host import _make_host, _public_methods
from resilience._actors._policy import _READ_ONLY_MARK, ActorPolicy, _default_store
from resilience.policies import (
    CheckpointTrigger,
    Detector,
    FailoverAction,
    FailoverChain,
)


class ResilientActorClass:
    """Creates the replicas of a decorated class: `.remote(...)`, `.options(...)` as in Ray."""

    def __init__(self, user_cls: type, policy: ActorPolicy, ray_options: dict[str, Any],
                 host: type | None = None) -> None:
        self.user_cls = user_cls
        self.policy = policy
        self.ray_options = dict(ray_options)
        self.host = host or _make_host(user_cls, policy)

    def options(self, **ray_options: Any) -> ResilientActorClass:
        return ResilientActorClass(self.user_cls, self.policy,
                                   {**self.ray_options, **ray_options}, self.host)

    def remote(self, *args: Any, **kwargs: Any) -> ResilientHandle:
        import ray

        opts = dict(self.ray_options)
        name = opts.pop("name", None) or f"{self.user_cls.__name__}-{uuid.uuid4().hex[:8]}"
        if "#" in name:
            raise ValueError(f"actor name {name!r} must not contain '#'")
        namespace = opts.pop("namespace", None) or ray.get_runtime_context().namespace
        opts.setdefault("num_cpus", 0)
        opts["max_restarts"] = -1  # the policy, not Ray, counts restarts (FailoverExhausted)
        opts.setdefault("max_task_retries", -1)
        if self.policy.log:
            # Async host: calls waiting for one fsync must be able to overlap. (A sync
            # host keeps Ray's default of one call at a time, in submission order.)
            opts.setdefault("max_concurrency", 1000)
        host = self.host
        policy = self.policy
        if policy.store is None:
            # Resolve where state lives now, in the creating process (a job's store, or
            # $RESILIENCE_STORE, or ./.resilience/actors), not in whatever cwd a worker has.
            policy = dataclasses.replace(policy, store=_default_store())
            host = _make_host(self.user_cls, policy, metaclass=type(self.host))
            if isinstance(host, _ResilientMeta):
                host._resilient_factory = self
        remote_host: Any = ray.remote(host)
        replicas = [
            remote_host.options(name=f"{name}#{i}", namespace=namespace, **opts).remote(
                *args, **kwargs)
            for i in range(policy.replicas)
        ]
        handle = ResilientHandle(name, namespace, policy, _public_methods(self.user_cls),
                                 replicas)
        # Creation errors (an unserializable attribute at the first checkpoint) surface here.
        ray.get([r.__resilient_ping__.remote() for r in replicas])
        handle._supervisor = _Supervisor(handle)
        return handle

    def __repr__(self) -> str:
        return f"resilient({self.user_cls.__qualname__}, failover={self.policy.failover!r})"


class _ResilientMeta(type):
    """Metaclass of a decorated plain class: `Cls.remote(...)` works without `@ray.remote`.

    The class itself stays an ordinary class, so `@ray.remote` may also be put on top
    of `@resilient` (Ray then hosts it directly; see `resilient`).
    """

    _resilient_factory: ResilientActorClass

    def remote(cls, *args: Any, **kwargs: Any) -> ResilientHandle:
        return cls._resilient_factory.remote(*args, **kwargs)

    def options(cls, **ray_options: Any) -> ResilientActorClass:
        return cls._resilient_factory.options(**ray_options)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        # Ray builds actors with __new__ + __init__, never through this.
        raise TypeError(f"{cls.__name__} is a resilient actor class: use "
                        f"{cls.__name__}.remote(...)")

    @property
    def ray_options(cls) -> dict[str, Any]:
        return cls._resilient_factory.ray_options


class _QuietOverwriteWarning(logging.Filter):
    """Ray warns that a class defining `remote` gets it overwritten; ours is on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("overwrites attribute" in msg and any(
            f"class {n} " in msg for n in _decorated_names))


_decorated_names: set[str] = set()
logging.getLogger("ray.actor").addFilter(_QuietOverwriteWarning())


def resilient(
    cls: type | None = None,
    *,
    checkpoint: CheckpointTrigger | None = None,
    failover: FailoverAction | FailoverChain | None = None,
    detect: Detector | None = None,
    log: bool = True,
    read_only: Iterable[str] = (),
    state: Iterable[str] | None = None,
    store: str | Path | None = None,
    results_window: int = 100_000,
    format: str = "pickle",
) -> Any:
    """Make a Ray actor class exactly-once and failover-safe (see the module docstring).

    Three placements, all supported:

    * above a plain class: ``Cls.remote(...)`` creates the replicas and returns a
      `ResilientHandle`; ``Cls.options(name=..., ...)`` takes Ray's options;
    * above ``@ray.remote(...)``: the same, keeping that decorator's Ray options;
    * below ``@ray.remote(max_restarts=-1, max_task_retries=-1)``: Ray hosts the class
      directly; calls through the plain Ray handle are logged and deduplicated by
      task id (standbys need the `ResilientHandle`, so not in this placement).

    ``format="msgpack"`` keeps snapshots and the call log in MessagePack instead of
    pickle: plain data only (arguments, results and state), language neutral, and a
    restore never runs code found in the store (see `resilience._actors._codec`).

    Every option is validated now: a wrong one raises here, naming it.
    """
    kwargs: dict[str, Any] = {"log": log, "read_only": frozenset(read_only),
                              "results_window": results_window, "format": format,
                              "state": tuple(state) if state is not None else None,
                              "store": str(store) if store is not None else None}
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    if failover is not None:
        kwargs["failover"] = failover
    if detect is not None:
        kwargs["detect"] = detect
    policy = ActorPolicy(**kwargs)

    def wrap(target: Any) -> Any:
        metadata = getattr(target, "__ray_metadata__", None)
        if metadata is not None:  # above @ray.remote: an ActorClass
            user_cls = metadata.modified_class.__ray_actor_class__
            _check_methods(user_cls, policy)
            return ResilientActorClass(user_cls, policy,
                                       dict(getattr(target, "_default_options", {}) or {}))
        if not inspect.isclass(target):
            raise TypeError(f"@resilient decorates a class, got {target!r}")
        _check_methods(target, policy)
        host: Any = _make_host(target, policy, metaclass=_ResilientMeta)
        host._resilient_factory = ResilientActorClass(target, policy, {}, host)
        _decorated_names.add(host.__name__)
        return host

    return wrap(cls) if cls is not None else wrap


def _check_methods(user_cls: type, policy: ActorPolicy) -> None:
    public = set(_public_methods(user_cls))
    unknown = sorted(set(policy.read_only) - public)
    if unknown:
        raise ValueError(f"resilient(read_only=...): {user_cls.__name__} has no public "
                         f"method {', '.join(unknown)}")
    if policy.state is not None:
        for attr in policy.state:
            if not isinstance(attr, str) or not attr.isidentifier():
                raise ValueError(f"resilient(state=...): {attr!r} is not an attribute name")


def _read_only(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a method as read-only: it skips the log (it must not change state)."""
    setattr(method, _READ_ONLY_MARK, True)
    return method


def _job(*args: Any, **kwargs: Any) -> Any:
    from resilience._job import job

    return job(*args, **kwargs)


_job.__doc__ = "Decorate a driver function as a job: see `resilience._job.job`."
resilient.read_only = _read_only  # type: ignore[attr-defined]
resilient.job = _job  # type: ignore[attr-defined]
resilient.get = _get  # type: ignore[attr-defined]
resilient.ping = _ping  # type: ignore[attr-defined]
resilient.state = _state  # type: ignore[attr-defined]
