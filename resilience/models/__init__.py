"""Model versions, live serving and rollback for online learning, one room.

* `_gate`: the rollback gate, pure: windows of paired scores (serving version against its
  control, on the same delayed labels), their verdicts, and the decisions they add up to;
* `_book`: one model's learner, versions, aliases and gate as deterministic stage state;
  what a checkpoint must publish (under `MODELS_KEY` in the stage's snapshot metadata);
* `_registry`: versions, aliases (``serving``, ``last_good``, ``candidate``) and the alias
  history in etcd, weights in the checkpoint store, every move fenced.
"""

from resilience.models._book import MODELS_KEY, BookConfig, Learner, ModelBook
from resilience.models._gate import (
    Decision,
    GateConfig,
    GateState,
    Outcome,
    Verdict,
    Window,
    WindowAccumulator,
    judge,
    log_loss,
)
from resilience.models._registry import (
    ALIASES,
    AliasMove,
    AliasRecord,
    ModelRegistry,
    ModelVersion,
    load_weights,
    models_prefix,
    weights_digest,
)
from resilience.models._stage import ModelCheckpoints

__all__ = [
    "ALIASES",
    "MODELS_KEY",
    "AliasMove",
    "AliasRecord",
    "BookConfig",
    "Decision",
    "GateConfig",
    "GateState",
    "Learner",
    "ModelBook",
    "ModelCheckpoints",
    "ModelRegistry",
    "ModelVersion",
    "Outcome",
    "Verdict",
    "Window",
    "WindowAccumulator",
    "judge",
    "load_weights",
    "log_loss",
    "models_prefix",
    "weights_digest",
]
