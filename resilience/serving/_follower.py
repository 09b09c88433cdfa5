"""`AliasFollower`: the version a model's ``serving`` alias names, loaded and verified, kept
current by polling etcd. What a serving replica holds; no Ray in here.

A request reads `current` once (one attribute read: a version and its weights together), so
a swap never mixes two versions in one answer and never fails a request: requests in flight
finish on the version they started with. A version whose weights do not verify is not
swapped in; the follower keeps the one it has and reports the refusal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from checkpoint import CheckpointStore, store_from_uri
from resilience._errors import EtcdError, ModelError
from resilience.coordination._client import EtcdClient
from resilience.models._registry import ModelRegistry, load_weights

__all__ = ["AliasFollower", "Loaded"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """One version in memory: what a request scores with."""

    model: str
    version: int
    weights: list[float]
    loaded_at: float


class AliasFollower:
    """Follows alias `alias` of `model` of job `job_id` in the etcd at `endpoints`."""

    def __init__(self, endpoints: str, job_id: str, model: str, *, alias: str = "serving",
                 poll_s: float = 0.05, store: CheckpointStore | None = None,
                 on_swap: Callable[[Loaded, Loaded | None], None] | None = None) -> None:
        self.client = EtcdClient(endpoints, timeout_s=5.0)
        self.registry = ModelRegistry(self.client, job_id)
        self.model, self.alias, self.poll_s = model, alias, poll_s
        self.store = store if store is not None else self._job_store(job_id)
        self.on_swap = on_swap
        self.refused: list[str] = []
        self.current: Loaded = self._load_named(wait_s=60.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"follow-{model}",
                                        daemon=True)
        self._thread.start()

    def _job_store(self, job_id: str) -> CheckpointStore:
        import json

        from resilience._runtime._registry import job_prefix

        kv = self.client.get(f"{job_prefix(job_id)}spec")
        if kv is None:
            raise ModelError(f"job {job_id} is unknown to etcd: no store to load weights from")
        return store_from_uri(json.loads(kv.value)["store_uri"], job_id=job_id)

    def _named(self) -> int | None:
        record = self.registry.aliases(self.model).get(self.alias)
        return None if record is None else record.version

    def _load(self, version: int) -> Loaded:
        record = self.registry.version(self.model, version)
        if record is None:
            raise ModelError(f"model {self.model}: the alias names version {version}, which "
                             "has no record")
        data = load_weights(self.store, record)  # verified against its digest
        weights = [float(x) for x in msgpack.unpackb(data, raw=False)]
        return Loaded(self.model, version, weights, time.time())

    def _load_named(self, wait_s: float) -> Loaded:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                version = self._named()
                if version is not None:
                    return self._load(version)
                problem = f"model {self.model} has no {self.alias} version yet"
            except (EtcdError, ModelError) as e:
                problem = str(e)
            if time.monotonic() > deadline:
                raise ModelError(problem)
            time.sleep(self.poll_s)

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                version = self._named()
                if version is None or version == self.current.version:
                    continue
                loaded = self._load(version)
            except (EtcdError, ModelError) as e:
                text = f"model {self.model}: not swapped: {e}"
                if not self.refused or self.refused[-1] != text:
                    log.warning("%s", text)
                    self.refused = [*self.refused[-15:], text]
                continue
            previous, self.current = self.current, loaded
            if self.on_swap is not None:
                self.on_swap(loaded, previous)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.close()

    def status(self) -> dict[str, Any]:
        c = self.current
        return {"model": c.model, "version": c.version, "loaded_at": c.loaded_at,
                "refused": list(self.refused)}
