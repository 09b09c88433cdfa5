"""Every error the `resilience` layer raises on purpose, in one place.

The root (`ResilienceError`) and the checkpoint errors live in `checkpoint`; the package
exports every one of these (tests/test_exports.py pins them). Errors raised inside Ray
actors cross process boundaries, so each one with a constructor of its own pickles
through `__reduce__`.
"""

from __future__ import annotations

from checkpoint import ResilienceError

__all__ = [
    "CallFailed",
    "CampaignTimeout",
    "CoordinationError",
    "EmbeddedEtcdError",
    "EtcdError",
    "EtcdNotInstalled",
    "EtcdUnavailable",
    "FailoverExhausted",
    "InfrastructureError",
    "InvalidCoordinationArgument",
    "InvalidEndpoint",
    "InvalidModelConfig",
    "InvalidSites",
    "JavaBuildError",
    "JavaCallError",
    "JobFailed",
    "ModelError",
    "ModelRefused",
    "RayUnreachable",
    "ReplicationError",
    "StateNotSerializable",
    "SwitchoverRefused",
    "UserError",
    "WeightsCorrupt",
    "WorkdirBusy",
]


class FailoverExhausted(ResilienceError):
    """The restart budget is spent: the job is stopped, never left half-alive."""

    def __init__(self, job_id: str, restarts: int, last_reason: str) -> None:
        super().__init__(
            f"job {job_id}: gave up after {restarts} restores; last failure: {last_reason}"
        )
        self.job_id = job_id
        self.restarts = restarts
        self.last_reason = last_reason

    def __reduce__(self) -> tuple[type[FailoverExhausted], tuple[str, int, str]]:
        return (type(self), (self.job_id, self.restarts, self.last_reason))


class JobFailed(ResilienceError):
    """The job stopped without finishing; the message says why."""


class UserError(ResilienceError):
    """A mistake in what the user asked for (bad path, bad option): one line, no traceback."""


class InfrastructureError(JobFailed):
    """What the job stands on (etcd, Ray) is unreachable or was lost for good.

    The job's checkpoints are intact: a rerun resumes once it is back (the CLI exits
    with code 3 for this, so a supervisor can tell it from a failed job).
    """


class StateNotSerializable(ResilienceError):
    """An attribute of a decorated actor cannot be snapshotted."""

    def __init__(self, cls_name: str, attribute: str, reason: str) -> None:
        super().__init__(
            f"{cls_name}.{attribute} cannot be serialized for a snapshot ({reason}); "
            f"leave it out with state=(...) or define __getstate__/__setstate__"
        )
        self.cls_name = cls_name
        self.attribute = attribute
        self.reason = reason

    def __reduce__(self) -> tuple[type[StateNotSerializable], tuple[str, str, str]]:
        return (type(self), (self.cls_name, self.attribute, self.reason))


class CallFailed(ResilienceError):
    """A call raised before a restart; its recorded error, replayed as type and message.

    Only actors in ``format="msgpack"`` answer with it (a pickle actor replays the
    original exception): plain data keeps the error's type name and message, not the
    object.
    """

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message

    def __reduce__(self) -> tuple[type[CallFailed], tuple[str, str]]:
        return (type(self), (self.error_type, self.message))


class JavaCallError(ResilienceError):
    """A Java method threw. Deterministic, so it is that call's recorded outcome."""

    def __init__(self, class_name: str, method: str, cause: str) -> None:
        super().__init__(f"{class_name}.{method} threw: {cause}")
        self.class_name = class_name
        self.method = method
        self.cause = cause

    def __reduce__(self) -> tuple[type[JavaCallError], tuple[str, str, str]]:
        return (type(self), (self.class_name, self.method, self.cause))


class JavaBuildError(ResilienceError):
    """The Java library cannot be built (no JDK, no ray_dist.jar, or javac failed)."""


class EtcdError(ResilienceError):
    """etcd refused a request, or the client was misused (closed, bad argument)."""


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered in time (down, paused, partitioned, or unreachable).

    The outcome of a write that raised this is unknown: it may have been
    applied. Fenced writes stay safe because a retry is fenced again.
    """

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"etcd at {endpoint} is unavailable: {reason}")
        self.endpoint = endpoint
        self.reason = reason

    def __reduce__(self) -> tuple[type[EtcdUnavailable], tuple[str, str]]:
        return (type(self), (self.endpoint, self.reason))


class InvalidEndpoint(EtcdError, ValueError):
    """An etcd endpoint string is not `host:port` (or `http://host:port`)."""


class CoordinationError(ResilienceError):
    """A coordination primitive could not do its job."""


class InvalidCoordinationArgument(CoordinationError, ValueError):
    """A coordination primitive was configured with an impossible value."""


class CampaignTimeout(CoordinationError, TimeoutError):
    """`campaign()` did not become leader within its timeout."""

    def __init__(self, resource: str, holder: str, timeout_s: float) -> None:
        super().__init__(
            f"{resource}: {holder} did not become leader within {timeout_s:g} s "
            "(another holder keeps the lease, or etcd is unreachable)"
        )
        self.resource = resource
        self.holder = holder
        self.timeout_s = timeout_s

    def __reduce__(self) -> tuple[type[CampaignTimeout], tuple[str, str, float]]:
        return (type(self), (self.resource, self.holder, self.timeout_s))


class EmbeddedEtcdError(ResilienceError):
    """An embedded etcd could not be started or controlled."""


class EtcdNotInstalled(EmbeddedEtcdError):
    """No etcd binary was found next to the Python interpreter or on PATH."""


class WorkdirBusy(UserError):
    """Another run holds the workdir."""


class RayUnreachable(InfrastructureError):
    """The Ray cluster to join does not answer, or refuses this driver."""


class ReplicationError(ResilienceError):
    """The replication link or a standby site refused or failed an operation."""


class InvalidSites(UserError, ValueError):
    """A sites file that does not validate: says which file, which line, and what."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line
        self.message = message

    def __reduce__(self) -> tuple[type[InvalidSites], tuple[str, int | None, str]]:
        return (type(self), (self.source, self.line, self.message))


class SwitchoverRefused(UserError):
    """A switchover or failback whose precondition does not hold (another primary than
    expected, a standby not caught up, one already in progress): nothing was moved."""


class ModelError(ResilienceError):
    """The model registry or a model stage refused or failed an operation."""


class InvalidModelConfig(ModelError, ValueError):
    """A gate, model or registry setting that does not validate; says which and why."""


class ModelRefused(UserError):
    """A promotion or rollback that must not happen (no such version, another model's
    version, a version marked bad or whose weights fail to verify): nothing was moved."""


class WeightsCorrupt(ModelError):
    """A model version's stored weights do not match the digest it was published with."""
