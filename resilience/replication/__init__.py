"""Cross-datacenter replication and failover: a job on two sites, one active at a time.

Each site runs the whole pipeline on its own Ray cluster, with its own checkpoint store
and sink; one etcd cluster spans both sites and a witness. The active site holds the
job's leadership and ships every checkpoint, whole, to the standby over gRPC (mutual
TLS and a deployment token): the chunks its manifest names (state, the source position,
the sink rows it commits), the bytes appended to side files, then the manifest. In
``sync`` mode a checkpoint commits only once the standby holds it (RPO 0); ``async``
commits at once and ships behind. When the active site is lost, the standby takes the
leadership under a newer fencing epoch, restores the newest checkpoint it holds and
goes on; a planned switchover hands over without loss.

Public names: the sites file (`Sites`, `Site`), a site's settings
(`ReplicationConfig`, `LinkSecurity`), `make_pki` for a throwaway CA, and the registry
of what etcd records (`ReplicationRegistry`, `Handover`). The decisions are pure
functions in `_policy`; the runtime (`resilience._runtime._site`) carries them out.
"""

from resilience.replication._config import LinkSecurity, ReplicationConfig
from resilience.replication._registry import Handover, ReplicationRegistry
from resilience.replication._sites import Site, Sites
from resilience.replication._tls import make_pki

__all__ = ["Handover", "LinkSecurity", "ReplicationConfig", "ReplicationRegistry", "Site",
           "Sites", "make_pki"]
