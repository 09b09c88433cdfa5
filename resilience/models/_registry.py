"""The model registry: versions, aliases and their history in etcd; weights in the store.

Layout under ``/resilience/jobs/<job>/models/<model>/``::

    versions/<version:010d>   ModelVersion (JSON), written once, never changed
    bad/<version:010d>        why a version was marked bad (a rollback, an operator)
    aliases/<alias>           AliasRecord: the version an alias names, and the move that set it
    history/<move id>         AliasMove: who moved which alias from what to what, when, why,
                              on what evidence, under which fencing epoch

A version's weights are one content-addressed chunk of the job's checkpoint store, written
by the model stage's snapshot; its record reaches etcd in the same fenced transaction that
makes that checkpoint complete (`publication_puts`), so a crash during publication leaves
no version visible whose weights are not durable, and a deposed leader publishes nothing.
Aliases move only by fenced transactions (`apply_move` for the job's own moves, under its
leadership; `operator_move` for `resilience models promote|rollback`, fenced by the job's
current epoch), each appending its `AliasMove` to the history in the same transaction, so
"which version served at 14:03" always has an answer (`serving_at`). A move onto a version
whose weights do not verify against their digest, or onto one marked bad, is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from checkpoint import CheckpointError, CheckpointStore, ChunkRef
from resilience._errors import ModelRefused, WeightsCorrupt
from resilience.coordination._client import Compare, EtcdClient, Get, Put
from resilience.coordination._election import Leadership

__all__ = [
    "ALIASES",
    "AliasMove",
    "AliasRecord",
    "ModelRegistry",
    "ModelVersion",
    "load_weights",
    "models_prefix",
    "weights_digest",
]

ALIASES = ("serving", "last_good", "candidate")
"""The aliases a model has: what serves, the newest version that passed its gate, and the
newest version published."""

_MODEL_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def models_prefix(job_id: str) -> str:
    return f"/resilience/jobs/{job_id}/models/"


def weights_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise ModelRefused(f"model name {name!r} must be lowercase letters, digits, '-' or "
                           "'_', starting with a letter (at most 63)")
    return name


@dataclass(frozen=True)
class ModelVersion:
    """One published version of a model, as etcd records it."""

    model: str
    version: int
    parent: int | None  # the version the learner started from (None: from scratch)
    checkpoint_id: int  # published with this checkpoint
    position: Mapping[str, Any]  # where in the input the learner stood (line, labels read)
    created_at: float
    digest: str  # of the weights bytes
    chunk: Mapping[str, Any]  # the weights' ChunkRef in the checkpoint store
    trained_labels: int  # labels learned from since the start
    epoch: int  # the fencing epoch of the reign that published it
    metrics: Mapping[str, Any] = field(default_factory=dict)

    @property
    def chunk_ref(self) -> ChunkRef:
        return ChunkRef(str(self.chunk["digest"]), int(self.chunk["size"]))

    def to_bytes(self) -> bytes:
        doc = asdict(self)
        doc["position"] = dict(self.position)
        doc["chunk"] = dict(self.chunk)
        doc["metrics"] = dict(self.metrics)
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelVersion:
        doc = json.loads(data)
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


@dataclass(frozen=True)
class AliasMove:
    """One move of one alias; the history is the list of these."""

    move_id: str
    model: str
    alias: str
    from_version: int | None
    to_version: int
    at: float
    by: str  # "job" (the model stage's gate) or "operator:<who>"
    why: str
    epoch: int
    checkpoint_id: int | None = None  # job moves: the checkpoint that carried the decision
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc = asdict(self)
        doc["evidence"] = dict(self.evidence)
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> AliasMove:
        doc = json.loads(data)
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


@dataclass(frozen=True)
class AliasRecord:
    """What an alias names now."""

    alias: str
    version: int
    move_id: str
    at: float
    epoch: int

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> AliasRecord:
        doc = json.loads(data)
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


class ModelRegistry:
    """Reads the registry of one job; writes it under a fence (the job's or an operator's)."""

    def __init__(self, client: EtcdClient, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.prefix = models_prefix(job_id)
        self.epoch_key = f"/resilience/jobs/{job_id}/epoch"

    # -- keys -------------------------------------------------------------------------

    def _model(self, model: str) -> str:
        return f"{self.prefix}{check_model_name(model)}/"

    def version_key(self, model: str, version: int) -> str:
        return f"{self._model(model)}versions/{version:010d}"

    def bad_key(self, model: str, version: int) -> str:
        return f"{self._model(model)}bad/{version:010d}"

    def alias_key(self, model: str, alias: str) -> str:
        if alias not in ALIASES:
            raise ModelRefused(f"no alias {alias!r} (aliases: {', '.join(ALIASES)})")
        return f"{self._model(model)}aliases/{alias}"

    def history_key(self, model: str, move_id: str) -> str:
        return f"{self._model(model)}history/{move_id}"

    # -- reads ------------------------------------------------------------------------

    def models(self) -> list[str]:
        names = set()
        for kv in self.client.get_prefix(self.prefix):
            rest = kv.key.removeprefix(self.prefix)
            names.add(rest.split("/", 1)[0])
        return sorted(n for n in names if _MODEL_NAME.fullmatch(n))

    def versions(self, model: str) -> list[ModelVersion]:
        out = []
        for kv in self.client.get_prefix(f"{self._model(model)}versions/"):
            try:
                out.append(ModelVersion.from_bytes(kv.value))
            except (ValueError, KeyError, TypeError):
                continue  # an unreadable record names no version anyone may serve
        return sorted(out, key=lambda v: v.version)

    def version(self, model: str, version: int) -> ModelVersion | None:
        kv = self.client.get(self.version_key(model, version))
        if kv is None:
            return None
        try:
            return ModelVersion.from_bytes(kv.value)
        except (ValueError, KeyError, TypeError):
            return None

    def aliases(self, model: str) -> dict[str, AliasRecord]:
        out = {}
        for kv in self.client.get_prefix(f"{self._model(model)}aliases/"):
            try:
                record = AliasRecord.from_bytes(kv.value)
            except (ValueError, KeyError, TypeError):
                continue
            out[record.alias] = record
        return out

    def bad(self, model: str) -> dict[int, dict[str, Any]]:
        out = {}
        for kv in self.client.get_prefix(f"{self._model(model)}bad/"):
            try:
                out[int(kv.key.rsplit("/", 1)[1])] = dict(json.loads(kv.value))
            except (ValueError, IndexError):
                continue
        return out

    def history(self, model: str) -> list[AliasMove]:
        """Every alias move of `model`, oldest first."""
        out = []
        for kv in self.client.get_prefix(f"{self._model(model)}history/"):
            try:
                out.append(AliasMove.from_bytes(kv.value))
            except (ValueError, KeyError, TypeError):
                continue
        return sorted(out, key=lambda m: (m.at, m.move_id))

    def serving_at(self, model: str, when: float) -> int | None:
        """The version `serving` named at time `when` (None before its first move)."""
        current = None
        for move in self.history(model):
            if move.at > when:
                break
            if move.alias == "serving":
                current = move.to_version
        return current

    # -- writes -----------------------------------------------------------------------

    def publication_puts(self, versions: Sequence[ModelVersion]) -> dict[str, bytes]:
        """The puts that publish `versions`, for the transaction completing their checkpoint.

        A version already recorded is left alone (a replay after a restore publishes the
        same version again; the first record stands)."""
        puts: dict[str, bytes] = {}
        for v in versions:
            key = self.version_key(v.model, v.version)
            if self.client.get(key) is None:
                puts[key] = v.to_bytes()
        return puts

    def apply_move(self, leadership: Leadership, move: AliasMove, *,
                   store: CheckpointStore | None = None,
                   mark_bad: Mapping[int, Mapping[str, Any]] | None = None) -> bool:
        """Apply the job's own `move` under its leadership; False when it was applied before
        (its history entry exists) or the alias no longer names `move.from_version` (an
        operator moved it since: the operator's move stands). Raises `FencedOut` when the
        reign is over and `ModelRefused` when the target may not serve."""
        if self.client.get(self.history_key(move.model, move.move_id)) is not None:
            return False  # applied before (its target may have been marked bad since)
        self._check_target(move.model, move.to_version, store, allow_bad=False,
                           marking=set(mark_bad or ()))
        ops = self._move_ops(move, mark_bad)
        if ops is None:
            return False
        compares, puts = ops
        return leadership.fenced_txn(puts=puts, compares=compares) is not None

    def operator_move(self, model: str, alias: str, to_version: int, *, why: str, by: str,
                      store: CheckpointStore | None = None,
                      mark_bad: Mapping[int, Mapping[str, Any]] | None = None,
                      now: float | None = None) -> AliasMove:
        """Move `alias` of `model` to `to_version` for an operator, fenced by the job's
        current epoch (a takeover in between refuses it). Raises `ModelRefused` with one
        clear line when the version does not exist, belongs to another model, is marked
        bad, or its weights do not verify; nothing is moved then."""
        self._check_target(model, to_version, store, allow_bad=False,
                           marking=set(mark_bad or ()))
        for _attempt in range(5):
            epoch_kv = self.client.get(self.epoch_key)
            epoch = int(epoch_kv.value) if epoch_kv is not None else 0
            current = self.aliases(model).get(alias)
            move = AliasMove(
                move_id=f"op-{uuid.uuid4().hex[:16]}", model=model, alias=alias,
                from_version=None if current is None else current.version,
                to_version=to_version, at=time.time() if now is None else now, by=by,
                why=why, epoch=epoch)
            ops = self._move_ops(move, mark_bad)
            if ops is None:
                continue  # moved under us between the two reads
            compares, puts = ops
            compares.append(Compare.mod_revision(self.epoch_key, epoch_kv.mod_revision)
                            if epoch_kv is not None else Compare.create_revision(
                                self.epoch_key, 0))
            result = self.client.transaction(compares, [Put(k, v) for k, v in puts.items()],
                                             [Get(self.epoch_key)])
            if result.succeeded:
                return move
        raise ModelRefused(f"model {model}: the alias {alias} or the job's epoch kept "
                           "changing under the move; nothing was moved, try again")

    def _move_ops(self, move: AliasMove, mark_bad: Mapping[int, Mapping[str, Any]] | None,
                  ) -> tuple[list[Compare], dict[str, bytes]] | None:
        """The compares and puts of `move`, or None when the alias does not name
        `move.from_version` now. The compares catch any change between this read and
        the transaction."""
        alias_key = self.alias_key(move.model, move.alias)
        history_key = self.history_key(move.model, move.move_id)
        compares = [Compare.create_revision(history_key, 0)]
        current = self.client.get(alias_key)
        if current is None:
            if move.from_version is not None:
                return None
            compares.append(Compare.create_revision(alias_key, 0))
        else:
            try:
                named: int | None = AliasRecord.from_bytes(current.value).version
            except (ValueError, KeyError, TypeError):
                named = None
            if named != move.from_version:
                return None
            compares.append(Compare.mod_revision(alias_key, current.mod_revision))
        record = AliasRecord(move.alias, move.to_version, move.move_id, move.at, move.epoch)
        puts = {alias_key: record.to_bytes(), history_key: move.to_bytes()}
        for version, why in (mark_bad or {}).items():
            puts[self.bad_key(move.model, version)] = json.dumps(
                {"at": move.at, "move_id": move.move_id, "epoch": move.epoch, **why},
                sort_keys=True).encode()
        return compares, puts

    def _check_target(self, model: str, version: int, store: CheckpointStore | None, *,
                      allow_bad: bool, marking: set[int]) -> ModelVersion:
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ModelRefused(f"model {model}: a version is a positive integer, got "
                               f"{version!r}; nothing was moved")
        if version in marking:
            raise ModelRefused(f"model {model}: version {version} cannot be both the target "
                               "and marked bad; nothing was moved")
        record = self.version(model, version)
        if record is None:
            owners = [m for m in self.models() if m != model
                      and self.client.get(self.version_key(m, version)) is not None]
            known = self.versions(model)
            listed = (f"its versions are {known[0].version}..{known[-1].version}" if known
                      else "it has no published version")
            elsewhere = f" (version {version} exists for {', '.join(owners)})" if owners else ""
            raise ModelRefused(f"model {model} has no version {version}: {listed}"
                               f"{elsewhere}; nothing was moved")
        if record.model != model:
            raise ModelRefused(f"version {version} belongs to model {record.model}, not "
                               f"{model}; nothing was moved")
        if not allow_bad:
            bad = self.bad(model).get(version)
            if bad is not None:
                raise ModelRefused(f"model {model}: version {version} is marked bad "
                                   f"({bad.get('why', 'no reason recorded')}); nothing was "
                                   "moved")
        if store is not None:
            try:
                load_weights(store, record)
            except WeightsCorrupt as e:
                raise ModelRefused(f"{e}; nothing was moved") from e
        return record


def load_weights(store: CheckpointStore, version: ModelVersion) -> bytes:
    """The weights of `version`, verified against the digest it was published with.
    Raises `WeightsCorrupt` when they are missing or do not match."""
    try:
        data = store.get_chunk(version.chunk_ref)
    except (CheckpointError, OSError, ValueError) as e:
        raise WeightsCorrupt(f"model {version.model} version {version.version}: its weights "
                             f"cannot be read ({e})") from e
    if weights_digest(data) != version.digest:
        raise WeightsCorrupt(f"model {version.model} version {version.version}: its weights "
                             "do not match the digest they were published with")
    return data
