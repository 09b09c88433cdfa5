"""Checkpoint manifests: the one small document that makes a checkpoint exist.

A checkpoint is a set of content-addressed chunks plus a manifest naming them.
Chunks are written first; the manifest is written last and atomically, so a
checkpoint is complete exactly when its manifest is readable. The manifest is
canonical JSON (sorted keys, no whitespace, ASCII) carrying a sha256 of its own
body, so a reader detects truncation, bit rot and hand edits before trusting it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast

from checkpoint._errors import CheckpointCorrupt

__all__ = [
    "FORMAT_VERSION",
    "ChunkRef",
    "Manifest",
    "TaskSnapshot",
    "chunk_ref_of",
]

FORMAT_VERSION: Final = 1
"""The manifest format this code writes and the only one it reads."""

_SUPPORTED_FORMATS: Final = frozenset({FORMAT_VERSION})
_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
# Checkpoint ids end up in other languages' int64 fields (the Java sink bridge).
_MAX_ID: Final = 2**63 - 1
_MANIFEST_KEYS: Final = frozenset(
    {
        "checksum",
        "checkpoint_id",
        "code_version",
        "created_at",
        "duration_s",
        "fencing_epoch",
        "format_version",
        "job_id",
        "kind",
        "name",
        "schema_version",
        "tasks",
    }
)
_TASK_KEYS: Final = frozenset({"chunks", "kind", "metadata"})
_CHUNK_KEYS: Final = frozenset({"digest", "size"})


@dataclass(frozen=True, order=True)
class ChunkRef:
    """The address of one immutable chunk: its sha256 digest and its length in bytes.

    Two chunks with the same digest are the same chunk, whoever wrote them; stores
    build paths from the digest, so a malformed digest is refused here (ValueError),
    never turned into a path.
    """

    digest: str
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.digest, str) or not _DIGEST_RE.fullmatch(self.digest):
            raise ValueError(f"chunk digest must be 'sha256:<64 hex>', got {self.digest!r}")
        _require_int("chunk size", self.size)

    @property
    def hex(self) -> str:
        """The digest without its `sha256:` prefix."""
        return self.digest.removeprefix("sha256:")


def chunk_ref_of(data: bytes) -> ChunkRef:
    """Return the content address of `data`."""
    return ChunkRef(digest="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data))


@dataclass(frozen=True)
class TaskSnapshot:
    """What one task contributed to a checkpoint.

    `chunks` are in restore order (e.g. the base chunks, then the deltas).
    `metadata` is JSON-safe data the task needs on restore (source offsets,
    key-group range, base/delta chunk counts, the sink's pre-committed epoch).
    It is validated and deep-copied at construction: tuples become lists, and a
    value JSON cannot carry exactly raises here (TypeError for a set, a non-string
    key or a numpy scalar; ValueError for NaN or infinity) rather than when the
    checkpoint is committed. Treat it as read-only.
    """

    task_id: str
    kind: str
    chunks: tuple[ChunkRef, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _require_str("task_id", self.task_id)
        _require_str("task kind", self.kind)
        chunks = tuple(self.chunks)
        for chunk in chunks:
            if not isinstance(chunk, ChunkRef):
                raise TypeError(f"task {self.task_id!r}: chunks must be ChunkRef, got {chunk!r}")
        object.__setattr__(self, "chunks", chunks)
        if not isinstance(self.metadata, Mapping):
            raise TypeError(f"task {self.task_id!r}: metadata must be a mapping")
        normalized = _json_safe(self.metadata, f"task {self.task_id!r} metadata")
        object.__setattr__(self, "metadata", normalized)


@dataclass(frozen=True)
class Manifest:
    """The complete description of one checkpoint or savepoint.

    Construction validates every field (ValueError/TypeError), so a manifest that
    exists in memory can always be serialized. `to_bytes` and `from_bytes` round
    trip exactly: `Manifest.from_bytes(m.to_bytes(), source=...) == m`.
    """

    job_id: str
    checkpoint_id: int
    fencing_epoch: int
    code_version: str
    schema_version: int
    created_at: float
    duration_s: float
    tasks: Mapping[str, TaskSnapshot] = field(hash=False)
    kind: Literal["checkpoint", "savepoint"] = "checkpoint"
    name: str | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _require_str("job_id", self.job_id)
        _require_int("checkpoint_id", self.checkpoint_id, maximum=_MAX_ID)
        _require_int("fencing_epoch", self.fencing_epoch, maximum=_MAX_ID)
        if not isinstance(self.code_version, str):
            raise TypeError(f"code_version must be a string, got {self.code_version!r}")
        _require_int("schema_version", self.schema_version)
        object.__setattr__(self, "created_at", _require_seconds("created_at", self.created_at))
        object.__setattr__(self, "duration_s", _require_seconds("duration_s", self.duration_s))
        if self.kind not in ("checkpoint", "savepoint"):
            raise ValueError(f"kind must be 'checkpoint' or 'savepoint', got {self.kind!r}")
        if self.name is not None:
            _require_str("name", self.name)
        if not _is_supported_format(self.format_version):
            raise ValueError(
                f"format_version {self.format_version!r} is not supported "
                f"(this code writes {FORMAT_VERSION})"
            )
        if not isinstance(self.tasks, Mapping):
            raise TypeError("tasks must be a mapping of task id to TaskSnapshot")
        tasks: dict[str, TaskSnapshot] = {}
        for task_id, snapshot in self.tasks.items():
            if not isinstance(snapshot, TaskSnapshot):
                raise TypeError(f"tasks[{task_id!r}] must be a TaskSnapshot, got {snapshot!r}")
            if task_id != snapshot.task_id:
                raise ValueError(
                    f"tasks key {task_id!r} differs from its snapshot's task_id "
                    f"{snapshot.task_id!r}"
                )
            tasks[task_id] = snapshot
        object.__setattr__(self, "tasks", tasks)

    def chunk_refs(self) -> frozenset[ChunkRef]:
        """Every chunk any task of this checkpoint needs, each once."""
        return frozenset(ref for task in self.tasks.values() for ref in task.chunks)

    def total_bytes(self) -> int:
        """Bytes of chunk data this checkpoint needs; a chunk shared by tasks counts once."""
        return sum(ref.size for ref in self.chunk_refs())

    def to_bytes(self) -> bytes:
        """Serialize to canonical JSON carrying a `checksum` of the rest of the document.

        Equal manifests always give identical bytes (sorted keys, fixed
        separators, ASCII only), which makes "write the same manifest again"
        idempotent for a store that refuses to overwrite a different one.
        """
        body = self._body()
        return _canonical({**body, "checksum": _checksum(body)})

    @classmethod
    def from_bytes(
        cls, data: bytes, *, source: str, expected_job_id: str | None = None
    ) -> Manifest:
        """Parse and verify a manifest written by `to_bytes`.

        `source` names where the bytes came from (a path) and appears in every
        error. Raises `CheckpointCorrupt(source, reason)` when the data is
        truncated or not JSON, has an unknown `format_version`, fails its
        checksum, is malformed, or, if `expected_job_id` is given, belongs to
        another job (the reason names both job ids). Nothing is trusted before the
        checksum passes, except the format version, which decides how to check.
        """
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise CheckpointCorrupt(
                source, f"manifest is not valid JSON (truncated or overwritten?): {exc}"
            ) from exc
        if not isinstance(document, dict):
            raise CheckpointCorrupt(source, "manifest is not a JSON object")
        format_version = document.get("format_version")
        if not _is_supported_format(format_version):
            raise CheckpointCorrupt(
                source,
                f"unknown manifest format_version {format_version!r} (this code reads "
                f"{sorted(_SUPPORTED_FORMATS)}); written by newer code, or corrupted",
            )
        stored_checksum = document.pop("checksum", None)
        if not isinstance(stored_checksum, str):
            raise CheckpointCorrupt(source, "manifest has no checksum field")
        try:
            actual_checksum = _checksum(document)
        except ValueError as exc:  # e.g. an int too long to print, only from a forged file
            raise CheckpointCorrupt(source, f"manifest cannot be re-encoded: {exc}") from exc
        if actual_checksum != stored_checksum:
            raise CheckpointCorrupt(
                source,
                f"manifest checksum mismatch: stored {stored_checksum}, computed {actual_checksum}",
            )
        try:
            manifest = cls._from_document(document)
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointCorrupt(source, f"malformed manifest: {exc}") from exc
        if expected_job_id is not None and manifest.job_id != expected_job_id:
            raise CheckpointCorrupt(
                source,
                f"manifest belongs to job {manifest.job_id!r}, "
                f"but this store holds job {expected_job_id!r}",
            )
        return manifest

    def _body(self) -> dict[str, Any]:
        return {
            "checkpoint_id": self.checkpoint_id,
            "code_version": self.code_version,
            "created_at": self.created_at,
            "duration_s": self.duration_s,
            "fencing_epoch": self.fencing_epoch,
            "format_version": self.format_version,
            "job_id": self.job_id,
            "kind": self.kind,
            "name": self.name,
            "schema_version": self.schema_version,
            "tasks": {
                task_id: {
                    "chunks": [{"digest": ref.digest, "size": ref.size} for ref in task.chunks],
                    "kind": task.kind,
                    "metadata": task.metadata,
                }
                for task_id, task in self.tasks.items()
            },
        }

    @classmethod
    def _from_document(cls, document: dict[str, Any]) -> Manifest:
        _require_keys("manifest", document, _MANIFEST_KEYS - {"checksum"})
        raw_tasks = document["tasks"]
        if not isinstance(raw_tasks, dict):
            raise TypeError("tasks must be an object")
        tasks: dict[str, TaskSnapshot] = {}
        for task_id, raw_task in raw_tasks.items():
            if not isinstance(raw_task, dict):
                raise TypeError(f"task {task_id!r} must be an object")
            _require_keys(f"task {task_id!r}", raw_task, _TASK_KEYS)
            raw_chunks = raw_task["chunks"]
            if not isinstance(raw_chunks, list):
                raise TypeError(f"task {task_id!r}: chunks must be a list")
            chunks: list[ChunkRef] = []
            for raw_chunk in raw_chunks:
                if not isinstance(raw_chunk, dict):
                    raise TypeError(f"task {task_id!r}: each chunk must be an object")
                _require_keys(f"task {task_id!r} chunk", raw_chunk, _CHUNK_KEYS)
                chunks.append(ChunkRef(digest=raw_chunk["digest"], size=raw_chunk["size"]))
            tasks[task_id] = TaskSnapshot(
                task_id=task_id,
                kind=raw_task["kind"],
                chunks=tuple(chunks),
                metadata=raw_task["metadata"],
            )
        return cls(
            job_id=document["job_id"],
            checkpoint_id=document["checkpoint_id"],
            fencing_epoch=document["fencing_epoch"],
            code_version=document["code_version"],
            schema_version=document["schema_version"],
            created_at=document["created_at"],
            duration_s=document["duration_s"],
            tasks=tasks,
            # Checked in __post_init__ like every other field.
            kind=cast(Literal["checkpoint", "savepoint"], document["kind"]),
            name=document["name"],
            format_version=document["format_version"],
        )


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _checksum(body: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def _is_supported_format(value: object) -> bool:
    # `type(...) is int`: JSON `true` must not pass for format 1, nor a list crash the lookup.
    return type(value) is int and value in _SUPPORTED_FORMATS


def _require_keys(what: str, document: Mapping[str, Any], expected: frozenset[str]) -> None:
    present = set(document)
    if present != expected:
        missing = sorted(expected - present)
        unexpected = sorted(present - expected)
        raise ValueError(f"{what}: missing fields {missing}, unexpected fields {unexpected}")


def _require_int(name: str, value: object, *, maximum: int | None = None) -> None:
    # bool is an int subclass; True as a checkpoint id is always a bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def _require_str(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _require_seconds(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return seconds


def _json_safe(value: object, where: str) -> Any:
    """Deep-copy `value` into plain JSON types, or raise TypeError/ValueError naming the spot."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not JSON-safe (not finite)")
        return float(value)
    if isinstance(value, Mapping):
        copied: dict[str, Any] = {}
        for key, item in value.items():
            # json.dumps would silently turn 1 into "1" and break round-trip equality.
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            copied[key] = _json_safe(item, f"{where}[{key!r}]")
        return copied
    if isinstance(value, list | tuple):
        return [_json_safe(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} {value!r} is not JSON-safe")
