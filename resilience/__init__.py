"""Policies, runtime and CLI of fusion-resilience.

The public surface is what `__all__` lists (pinned by tests/test_exports.py);
modules whose name starts with an underscore are machinery.
"""

from typing import TYPE_CHECKING

from resilience._ray import apply_ray_env

# Ray reads these when it is first imported (ray_constants), so they must be set
# before anything imports ray: otherwise Ray binds the machine's external
# interface even when asked for 127.0.0.1. Existing values are respected.
apply_ray_env()

from checkpoint import (  # noqa: E402
    CheckpointCorrupt,
    CheckpointError,
    CheckpointNotFound,
    FencedOut,
    IncompatibleState,
    InputChanged,
    ResilienceError,
    StoreWriteError,
)
from resilience._actors import (  # noqa: E402
    ActorPolicy,
    ResilientActorClass,
    ResilientHandle,
    resilient,
)
from resilience._errors import (  # noqa: E402
    CallFailed,
    CampaignTimeout,
    CoordinationError,
    EmbeddedEtcdError,
    EtcdError,
    EtcdNotInstalled,
    EtcdUnavailable,
    FailoverExhausted,
    InfrastructureError,
    InvalidCoordinationArgument,
    InvalidEndpoint,
    InvalidModelConfig,
    InvalidSites,
    JavaBuildError,
    JavaCallError,
    JobFailed,
    ModelError,
    ModelRefused,
    RayUnreachable,
    ReplicationError,
    StateNotSerializable,
    SwitchoverRefused,
    UserError,
    WeightsCorrupt,
    WorkdirBusy,
)
from resilience._java._actor import java_actor  # noqa: E402
from resilience._job import Job, current_job  # noqa: E402
from resilience._ray import RaySession, ray_session  # noqa: E402
from resilience._runtime._poison import QuarantineBudget  # noqa: E402
from resilience._runtime._registry import CheckpointRecord, CheckpointRegistry  # noqa: E402
from resilience._runtime._spec import PipelineSpec, StageSpec  # noqa: E402
from resilience._runtime._watchdog import Deadlines  # noqa: E402
from resilience.coordination._client import EtcdClient  # noqa: E402
from resilience.coordination._election import LeaderElection, Leadership  # noqa: E402
from resilience.coordination._embedded import EmbeddedEtcd, EmbeddedEtcdCluster, etcd_endpoint  # noqa: E402
from resilience.policies import (  # noqa: E402
    escalate,
    every,
    missed_heartbeats,
    no_progress,
    restart,
    standby,
)

__all__ = [
    "ActorPolicy",
    "CallFailed",
    "CampaignTimeout",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointNotFound",
    "CheckpointRecord",
    "CheckpointRegistry",
    "CoordinationError",
    "Deadlines",
    "EmbeddedEtcd",
    "EmbeddedEtcdCluster",
    "EmbeddedEtcdError",
    "EtcdClient",
    "EtcdError",
    "EtcdNotInstalled",
    "EtcdUnavailable",
    "FailoverExhausted",
    "FencedOut",
    "IncompatibleState",
    "InfrastructureError",
    "InputChanged",
    "InvalidCoordinationArgument",
    "InvalidEndpoint",
    "InvalidModelConfig",
    "InvalidSites",
    "JavaBuildError",
    "JavaCallError",
    "Job",
    "JobFailed",
    "LeaderElection",
    "Leadership",
    "ModelError",
    "ModelRefused",
    "PipelineRunner",
    "PipelineSpec",
    "QuarantineBudget",
    "RaySession",
    "RayUnreachable",
    "ReplicationError",
    "ResilienceError",
    "ResilientActorClass",
    "ResilientHandle",
    "StageSpec",
    "StateNotSerializable",
    "StoreWriteError",
    "SwitchoverRefused",
    "UserError",
    "WeightsCorrupt",
    "WorkdirBusy",
    "current_job",
    "escalate",
    "etcd_endpoint",
    "every",
    "java_actor",
    "missed_heartbeats",
    "no_progress",
    "ray_session",
    "resilient",
    "restart",
    "standby",
]


if TYPE_CHECKING:
    from resilience._runtime._driver import PipelineRunner


def __getattr__(name: str) -> object:
    # PipelineRunner imports Ray (about a second): load it on first use only.
    if name == "PipelineRunner":
        from resilience._runtime._driver import PipelineRunner

        return PipelineRunner
    raise AttributeError(f"module 'resilience' has no attribute {name!r}")
