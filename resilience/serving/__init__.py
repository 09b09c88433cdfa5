"""Live serving of model versions, one room: replicas that follow the registry.

* `_follower`: `AliasFollower`, the version an alias names, loaded, verified against its
  digest and kept current by polling etcd (no Ray);
* `_deployment`: `model_app`, a Ray Serve application whose replicas each hold a follower
  and answer ``POST <route>/score`` and a Python handle's ``score``.
"""

from resilience.serving._deployment import ModelServer, model_app
from resilience.serving._follower import AliasFollower, Loaded

__all__ = ["AliasFollower", "Loaded", "ModelServer", "model_app"]
