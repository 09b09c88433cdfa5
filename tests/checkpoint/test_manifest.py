"""Manifests: canonical bytes, checksums, and every way `from_bytes` must refuse data."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkpoint import (
    CheckpointCorrupt,
    ChunkRef,
    Manifest,
    TaskSnapshot,
    chunk_ref_of,
)

A = chunk_ref_of(b"alpha")
B = chunk_ref_of(b"bravo-bravo")
C = chunk_ref_of(b"charlie")


def manifest(**overrides: Any) -> Manifest:
    fields: dict[str, Any] = {
        "job_id": "payments",
        "checkpoint_id": 12,
        "fencing_epoch": 3,
        "code_version": "git:abc123",
        "schema_version": 2,
        "created_at": 1_717_171_717.125,
        "duration_s": 0.75,
        "tasks": {
            "source-0": TaskSnapshot(
                "source-0", "source", (A,), {"offsets": {"p0": 1041, "p1": 77}}
            ),
            "map-0": TaskSnapshot(
                "map-0",
                "keyed-state",
                (A, B, C),
                {"key_groups": [0, 63], "base_chunks": 2, "delta_chunks": 1},
            ),
            "sink-0": TaskSnapshot("sink-0", "sink", (), {"precommitted_epoch": 12}),
        },
    }
    fields.update(overrides)
    return Manifest(**fields)


def rewrite(data: bytes, change: Any, *, fix_checksum: bool) -> bytes:
    """Apply `change` to the parsed document and re-encode it, optionally re-checksummed."""
    document = json.loads(data)
    change(document)
    if fix_checksum:
        document.pop("checksum")
        body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        document["checksum"] = "sha256:" + hashlib.sha256(body).hexdigest()
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def test_round_trip_is_exact() -> None:
    original = manifest(kind="savepoint", name="before-migration")
    parsed = Manifest.from_bytes(original.to_bytes(), source="mem")
    assert parsed == original
    assert parsed.to_bytes() == original.to_bytes()
    assert parsed.tasks["map-0"].chunks == (A, B, C)


def test_bytes_are_canonical_whatever_the_insertion_order() -> None:
    one = manifest()
    other = manifest(tasks=dict(reversed(list(one.tasks.items()))))
    assert one.to_bytes() == other.to_bytes()
    text = one.to_bytes().decode("ascii")
    assert " " not in text
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_checksum_covers_the_body_without_itself() -> None:
    data = manifest().to_bytes()
    document = json.loads(data)
    checksum = document.pop("checksum")
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert checksum == "sha256:" + hashlib.sha256(body).hexdigest()


def test_chunk_refs_and_total_bytes_count_shared_chunks_once() -> None:
    m = manifest()
    assert m.chunk_refs() == frozenset({A, B, C})
    assert m.total_bytes() == len(b"alpha") + len(b"bravo-bravo") + len(b"charlie")


@pytest.mark.parametrize("cut", [0, 1, 10, 100, -2, -1])
def test_truncated_data_is_corrupt(cut: int) -> None:
    data = manifest().to_bytes()
    with pytest.raises(CheckpointCorrupt) as info:
        Manifest.from_bytes(data[:cut], source="/ckpt/00012.json")
    assert info.value.what == "/ckpt/00012.json"


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xfe\x00", b"[1, 2]", b'"text"', b"null", b"{" * 100_000],
    ids=["empty", "not-utf8", "array", "string", "null", "deep-nesting"],
)
def test_garbage_is_corrupt(data: bytes) -> None:
    with pytest.raises(CheckpointCorrupt):
        Manifest.from_bytes(data, source="mem")


def test_checksum_mismatch_is_named() -> None:
    def bump_offset(document: dict[str, Any]) -> None:
        document["tasks"]["source-0"]["metadata"]["offsets"]["p0"] = 1042

    tampered = rewrite(manifest().to_bytes(), bump_offset, fix_checksum=False)
    with pytest.raises(CheckpointCorrupt, match="checksum mismatch"):
        Manifest.from_bytes(tampered, source="mem")


def test_missing_checksum_is_corrupt() -> None:
    stripped = rewrite(manifest().to_bytes(), lambda d: d.pop("checksum"), fix_checksum=False)
    with pytest.raises(CheckpointCorrupt, match="no checksum"):
        Manifest.from_bytes(stripped, source="mem")


@pytest.mark.parametrize("version", [2, 0, "1", True, None, [1]])
def test_unknown_format_version_is_refused_even_with_a_valid_checksum(version: object) -> None:
    def set_version(document: dict[str, Any]) -> None:
        document["format_version"] = version

    future = rewrite(manifest().to_bytes(), set_version, fix_checksum=True)
    with pytest.raises(CheckpointCorrupt, match="format_version"):
        Manifest.from_bytes(future, source="mem")


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("fencing_epoch"),
        lambda d: d.update(extra_field=1),
        lambda d: d.update(checkpoint_id="12"),
        lambda d: d.update(checkpoint_id=-1),
        lambda d: d.update(kind="snapshot"),
        lambda d: d["tasks"]["map-0"]["chunks"].append({"digest": "md5:00", "size": 1}),
        lambda d: d["tasks"]["map-0"].pop("metadata"),
        lambda d: d.update(tasks=[]),
        lambda d: d.update(created_at=None),
    ],
    ids=[
        "missing-field",
        "unexpected-field",
        "id-as-string",
        "negative-id",
        "unknown-kind",
        "bad-digest",
        "task-without-metadata",
        "tasks-not-object",
        "created-at-null",
    ],
)
def test_malformed_but_checksummed_manifest_is_corrupt(change: Any) -> None:
    forged = rewrite(manifest().to_bytes(), change, fix_checksum=True)
    with pytest.raises(CheckpointCorrupt, match="malformed"):
        Manifest.from_bytes(forged, source="mem")


def test_manifest_of_another_job_names_both_jobs() -> None:
    data = manifest(job_id="payments").to_bytes()
    with pytest.raises(CheckpointCorrupt) as info:
        Manifest.from_bytes(data, source="mem", expected_job_id="refunds")
    assert "'payments'" in info.value.reason
    assert "'refunds'" in info.value.reason
    assert Manifest.from_bytes(data, source="mem", expected_job_id="payments").job_id == "payments"


def test_chunk_ref_validation() -> None:
    assert chunk_ref_of(b"") == ChunkRef(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0
    )
    with pytest.raises(ValueError, match="sha256"):
        ChunkRef("sha256:../../etc/passwd", 1)
    with pytest.raises(ValueError, match="sha256"):
        ChunkRef(A.digest.upper(), 1)
    with pytest.raises(ValueError, match=">= 0"):
        ChunkRef(A.digest, -1)
    with pytest.raises(TypeError):
        ChunkRef(A.digest, True)


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"offsets": {1, 2}}, TypeError),
        ({"lag": math.nan}, ValueError),
        ({"lag": math.inf}, ValueError),
        ({1: "int key"}, TypeError),
        ({"nested": [{"ok": b"bytes"}]}, TypeError),
    ],
)
def test_metadata_must_be_json_safe(metadata: dict[Any, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        TaskSnapshot("map-0", "keyed-state", (), metadata)


def test_metadata_is_copied_and_normalized() -> None:
    offsets = {"p0": 5}
    snapshot = TaskSnapshot("source-0", "source", [A], {"offsets": offsets, "range": (0, 63)})
    offsets["p0"] = 999
    assert snapshot.metadata == {"offsets": {"p0": 5}, "range": [0, 63]}
    assert snapshot.chunks == (A,)


@pytest.mark.parametrize(
    "overrides",
    [
        {"checkpoint_id": True},
        {"checkpoint_id": 2**63},
        {"fencing_epoch": -1},
        {"job_id": ""},
        {"created_at": math.nan},
        {"duration_s": -0.5},
        {"kind": "snapshot"},
        {"format_version": 2},
        {"tasks": {"wrong-key": TaskSnapshot("map-0", "keyed-state", ())}},
    ],
)
def test_invalid_manifest_is_refused_at_construction(overrides: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError)):
        manifest(**overrides)


def test_manifest_pickles_and_hashes() -> None:
    m = manifest()
    assert pickle.loads(pickle.dumps(m)) == m
    assert hash(m) == hash(manifest())
    error = CheckpointCorrupt("mem", "reason")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    metadata=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    task_ids=st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=4, unique=True),
    chunk_data=st.lists(st.binary(max_size=16), max_size=5),
    checkpoint_id=st.integers(min_value=0, max_value=2**63 - 1),
    created_at=st.floats(min_value=0, max_value=4e9),
    name=st.none() | st.text(min_size=1, max_size=20),
)
def test_round_trip_property(
    metadata: dict[str, Any],
    task_ids: list[str],
    chunk_data: list[bytes],
    checkpoint_id: int,
    created_at: float,
    name: str | None,
) -> None:
    chunks = tuple(chunk_ref_of(data) for data in chunk_data)
    original = Manifest(
        job_id="job-ü",
        checkpoint_id=checkpoint_id,
        fencing_epoch=1,
        code_version="v",
        schema_version=1,
        created_at=created_at,
        duration_s=0.0,
        tasks={t: TaskSnapshot(t, "keyed-state", chunks, metadata) for t in task_ids},
        name=name,
    )
    data = original.to_bytes()
    assert Manifest.from_bytes(data, source="mem", expected_job_id="job-ü") == original
    assert data.isascii()
