"""The runtime's side of model versions: what a checkpoint publishes to the registry.

A stage with a `ModelBook` lists, under `MODELS_KEY` in its snapshot metadata, the versions
it retains and its recent alias moves (`ModelCheckpoints`). The coordinator

* puts the versions etcd lacks into etcd in the very transaction that makes the checkpoint complete
  (`ModelPublisher.puts`), so no version is visible whose weights are not durable and a
  deposed leader publishes nothing;
* then applies the moves in order (`ModelPublisher.apply`), each fenced by its epoch and
  idempotent by its id: a replay after a restore makes the same moves with the same ids, and
  a move already in the history is skipped. A move etcd refuses (an operator moved the alias
  since) is reported, never raised: the checkpoint stands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from checkpoint import CheckpointStore, FencedOut, Manifest
from resilience._errors import EtcdError, ModelError, ModelRefused
from resilience.coordination._client import EtcdClient
from resilience.coordination._election import Leadership
from resilience.models._book import MODELS_KEY
from resilience.models._registry import AliasMove, ModelRegistry, ModelVersion

__all__ = ["ModelPublisher"]

log = logging.getLogger(__name__)


def _models_of(manifest: Manifest) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for task_id in sorted(manifest.tasks):
        op = manifest.tasks[task_id].metadata.get("op", {})
        yield from sorted(op.get(MODELS_KEY, {}).items())


class ModelPublisher:
    """Publishes the model versions and alias moves checkpoints carry."""

    def __init__(self, client: EtcdClient, job_id: str, store: CheckpointStore) -> None:
        self.registry = ModelRegistry(client, job_id)
        self.store = store
        self._applied: set[str] = set()  # move ids known to be in the history
        self._published: set[tuple[str, int]] = set()  # versions known to be in etcd
        self.refused: list[str] = []  # moves etcd refused, newest last (for the status)

    def puts(self, manifest: Manifest, epoch: int) -> dict[str, bytes]:
        """The etcd puts publishing the versions `manifest` carries (those not yet there)."""
        versions = []
        for model, doc in _models_of(manifest):
            for v in doc.get("versions", ()):
                if (model, int(v["version"])) in self._published:
                    continue
                versions.append(ModelVersion(
                    model=model, version=int(v["version"]),
                    parent=None if v["parent"] is None else int(v["parent"]),
                    checkpoint_id=int(v["checkpoint_id"]),
                    position={"trained_labels": int(v["trained_labels"]),
                              "input": v.get("position")},
                    created_at=manifest.created_at, digest=str(v["digest"]),
                    chunk=dict(v["chunk"]), trained_labels=int(v["trained_labels"]),
                    epoch=epoch))
        return self.registry.publication_puts(versions) if versions else {}

    def published(self, manifest: Manifest) -> None:
        """`manifest`'s checkpoint is complete: its versions are in etcd."""
        for model, doc in _models_of(manifest):
            self._published.update((model, int(v["version"])) for v in doc.get("versions", ()))

    def apply(self, manifest: Manifest, leadership: Leadership) -> int:
        """Apply the alias moves `manifest` carries; the number applied now. Raises
        `FencedOut` when the reign is over."""
        applied = 0
        for model, doc in _models_of(manifest):
            for m in doc.get("moves", ()):
                move_id = str(m["move_id"])
                if move_id in self._applied:
                    continue
                evidence = dict(m.get("evidence", {}))
                bad = [int(v) for v in evidence.get("marked_bad", ())]
                move = AliasMove(
                    move_id=move_id, model=model, alias=str(m["alias"]),
                    from_version=None if m["from"] is None else int(m["from"]),
                    to_version=int(m["to"]), at=time.time(), by="job", why=str(m["why"]),
                    epoch=leadership.epoch, checkpoint_id=manifest.checkpoint_id,
                    evidence=evidence)
                try:
                    done = self.registry.apply_move(
                        leadership, move, store=self.store,
                        mark_bad={v: {"why": move.why} for v in bad} or None)
                except FencedOut:
                    raise
                except (ModelError, ModelRefused, EtcdError) as e:
                    self._refuse(f"model {model}: move {move_id} ({move.alias} "
                                 f"{move.from_version} -> {move.to_version}) refused: {e}")
                    continue
                if done:
                    applied += 1
                elif self.registry.client.get(
                        self.registry.history_key(model, move_id)) is None:
                    self._refuse(f"model {model}: move {move_id} ({move.alias} "
                                 f"{move.from_version} -> {move.to_version}) not applied: the "
                                 "alias names another version (an operator moved it)")
                    continue
                self._applied.add(move_id)
        return applied

    def _refuse(self, text: str) -> None:
        log.warning("%s", text)
        self.refused.append(text)
        del self.refused[:-16]
