"""What a job's coordinator reports (`JobCoordinator.status()`): one record, thread safe.

The driver's progress line, the run summary, the chaos harness's samples and the tests
all read it; only the coordinator's control thread writes it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from checkpoint import CheckpointCompleted, Manifest
from resilience.models._book import MODELS_KEY

__all__ = ["JobStatus"]

_HISTORY = 200  # checkpoints kept in checkpoint_history


class JobStatus:
    """The fields of a job's status and the few ways they change."""

    def __init__(self, job_id: str, *, pid: int, restarted: bool, quarantined: int,
                 quarantine_file: str) -> None:
        self._lock = threading.Lock()
        self._fields: dict[str, Any] = {
            "job_id": job_id,
            "state": "starting",
            "coordinator_pid": pid,
            "coordinator_restarted": restarted,
            "generation": 0,
            "fencing_epoch": 0,
            "lines_read": 0,
            "committed_watermark": 0,
            "checkpoints_completed": 0,
            "checkpoints_failed": 0,
            "checkpoints_unaligned": 0,
            "inflight_records_stored": 0,
            "last_checkpoint": None,
            "checkpoint_history": [],
            "restores": [],
            "last_error": None,
            "quarantined": quarantined,
            "quarantine_file": quarantine_file,
            "finished": False,
            "failed": False,
            "eof_at": None,
        }

    def snapshot(self) -> dict[str, Any]:
        """A copy that later changes do not touch."""
        with self._lock:
            st = self._fields
            return {**st, "restores": list(st["restores"]),
                    "checkpoint_history": list(st["checkpoint_history"])}

    def get(self, name: str) -> Any:
        with self._lock:
            return self._fields[name]

    def set(self, **fields: Any) -> None:
        with self._lock:
            self._fields.update(fields)

    def restores_after_start(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._fields["restores"][1:])

    def checkpoint_completed(self, manifest: Manifest, watermark: int, done: CheckpointCompleted,
                             ack_s: dict[str, float]) -> None:
        info = {
            "checkpoint_id": manifest.checkpoint_id,
            "epoch": manifest.fencing_epoch,
            "watermark": watermark,
            "duration_s": round(done.duration_s, 4),
            "bytes": manifest.total_bytes(),
            "at": time.time(),
            "generation": done.generation,
            "ack_s": ack_s,
        }
        tasks = manifest.tasks.values()
        models = {name: doc.get("status", {}) for snap in tasks
                  for name, doc in snap.metadata.get("op", {}).get(MODELS_KEY, {}).items()}
        with self._lock:
            st = self._fields
            if models:
                st["models"] = {**st.get("models", {}), **models}
            st["checkpoints_completed"] += 1
            if any(snap.metadata.get("channel_state") for snap in tasks):
                st["checkpoints_unaligned"] += 1
            st["inflight_records_stored"] += sum(
                int(snap.metadata.get("inflight_records", 0)) for snap in tasks)
            st["last_checkpoint"] = info
            st["committed_watermark"] = watermark
            st["checkpoint_history"] = [*st["checkpoint_history"][-(_HISTORY - 1):], info]
            restores = st["restores"]
            if restores and restores[-1].get("first_commit_at") is None:
                restores[-1]["first_commit_at"] = info["at"]

    def models(self, refused: list[str]) -> None:
        """Alias moves etcd refused (an operator moved the alias), newest last."""
        with self._lock:
            self._fields["model_moves_refused"] = list(refused)

    def checkpoint_failed(self, error: str) -> None:
        with self._lock:
            self._fields["checkpoints_failed"] += 1
            self._fields["last_error"] = error

    def restored(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._fields["restores"].append(entry)
            self._fields.update(state="running", generation=entry["generation"],
                                committed_watermark=entry["watermark"])
