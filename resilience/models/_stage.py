"""Checkpointing `ModelBook`s from a stage: one chunk of book state per model, the weights
of every retained version as their own chunks, and what the registry must hold under
`MODELS_KEY`.

`ModelCheckpoints` is what a model stage's `snapshot` and `restore` call. Each snapshot lists
for every model its **retained** versions (the aliased ones and the newest few, with their
weights' chunk and digest) and its **recent** alias moves, not only what changed since the
last checkpoint: the runtime publishes what etcd lacks and applies the moves it has not
applied yet, so a crash between a checkpoint's commit and its moves, or a failover to a
site whose etcd never saw them, ends with the registry the restored book describes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from checkpoint import CheckpointStore, ChunkRef
from resilience.models._book import MODELS_KEY, ModelBook
from resilience.models._registry import weights_digest

__all__ = ["ModelCheckpoints"]

_RECENT_MOVES = 32


class ModelCheckpoints:
    """The books of one stage, as its snapshots carry them."""

    def __init__(self, books: Sequence[ModelBook]) -> None:
        self.books = {b.name: b for b in books}
        # Per model: the registry document of each retained version (first checkpoint it
        # was published with, parent, digest, chunk), and the recent moves.
        self.docs: dict[str, dict[int, dict[str, Any]]] = {n: {} for n in self.books}
        self.recent: dict[str, list[dict[str, Any]]] = {n: [] for n in self.books}

    def reset(self) -> None:
        for name, book in self.books.items():
            book.reset()
            self.docs[name] = {}
            self.recent[name] = []

    def take(self, checkpoint_id: int
             ) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
        """Drain every book for checkpoint `checkpoint_id`. Returns the writer's input (call
        `write` with it from the snapshot's write step), the quarantined labels, and the
        books' events since the last take (publications, alias moves, quarantines; each
        with its ``model``), for a history the stage may keep."""
        quarantined: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        taken = {}
        for name, book in self.books.items():
            events, q = book.drain()
            quarantined.extend(q)
            history.extend({"model": name, **e} for e in events)
            recent = self.recent[name]
            for e in events:
                if e["kind"] == "move":
                    recent.append(e)
                elif e["kind"] == "publish":
                    self.docs[name][e["version"]] = {
                        "model": name, "version": e["version"], "parent": e["parent"],
                        "checkpoint_id": checkpoint_id, "trained_labels": e["trained_labels"],
                        "position": e.get("position")}
            del recent[:-_RECENT_MOVES]
            docs = self.docs[name]
            for v in [v for v in docs if v not in book.versions]:
                del docs[v]
            weights = {v: msgpack.packb(w, use_bin_type=True)
                       for v, w in sorted(book.versions.items())}
            state = msgpack.packb({"book": book.to_state(), "docs": list(docs.values()),
                                   "recent": recent}, use_bin_type=True)
            taken[name] = (state, weights, [dict(d) for d in docs.values()], list(recent),
                           book.status())
        return taken, quarantined, history

    def checkpoint_completed(self, checkpoint_id: int) -> None:
        """Checkpoint `checkpoint_id` completed: the versions it (or an earlier one) carried
        are in the registry, and the books may forget them beyond `keep_versions`. Until
        then a version stays in every snapshot, so a checkpoint that failed without a
        restore cannot lose one."""
        for name, book in self.books.items():
            book.published({v for v, d in self.docs[name].items()
                            if d["checkpoint_id"] <= checkpoint_id})

    @staticmethod
    def write(store: CheckpointStore, taken: Any) -> tuple[list[ChunkRef], dict[str, Any]]:
        """Write what `take` returned; the chunks (book state first, per model in name
        order) and the `MODELS_KEY` metadata."""
        chunks: list[ChunkRef] = []
        meta: dict[str, Any] = {}
        for name in sorted(taken):
            state, weights, docs, recent, status = taken[name]
            chunks.append(store.put_chunk(state))
            refs = {v: store.put_chunk(data) for v, data in weights.items()}
            chunks.extend(refs.values())
            versions = []
            for doc in docs:
                v = doc["version"]
                versions.append({**doc, "digest": weights_digest(weights[v]),
                                 "chunk": {"digest": refs[v].digest, "size": refs[v].size}})
            meta[name] = {"versions": versions, "moves": recent, "status": status,
                          "weights_chunks": len(refs)}
        return chunks, {MODELS_KEY: meta}

    def restore(self, store: CheckpointStore, chunks: Sequence[ChunkRef],
                metadata: Mapping[str, Any]) -> None:
        """Load the books from a snapshot `write` produced (chunks in its order). A model
        the snapshot does not know starts from scratch."""
        models = metadata.get(MODELS_KEY, {})
        at = 0
        known = {}
        for name in sorted(models):
            known[name] = chunks[at]
            at += 1 + int(models[name]["weights_chunks"])
        for name, book in self.books.items():
            ref = known.get(name)
            if ref is None:
                book.reset()
                self.docs[name], self.recent[name] = {}, []
                continue
            doc = msgpack.unpackb(store.get_chunk(ref), raw=False, strict_map_key=False)
            book.load_state(doc["book"])
            self.docs[name] = {int(d["version"]): dict(d) for d in doc["docs"]}
            self.recent[name] = list(doc["recent"])

    @staticmethod
    def json_lines(entries: Sequence[Mapping[str, Any]]) -> list[bytes]:
        """One sorted-key JSON line per entry (quarantined labels, history events)."""
        return [json.dumps(dict(e), sort_keys=True).encode() + b"\n" for e in entries]
