"""One model's book inside a job: the learner, its published versions, the aliases and the
gate, as deterministic state the model stage checkpoints. Pure: no clock, no I/O.

A stage that serves and learns a model keeps one `ModelBook` per model and feeds it, in
its input order:

* `score(features)` for every event to score: the probability the ``serving`` version
  gives, and that version's number (every output names the version that produced it);
* `label(key, features, label)` for every delayed label: the label is scored by the
  serving version and by the control (``last_good``) before anything learns from it
  (prequential: test, then train), the pair goes into the gate's window, and then the
  learner learns. Every `publish_every` labels the learner's weights become a new version,
  which serves at once (``candidate`` and ``serving``); its windows decide: confirmed after
  `passes_to_confirm` passing windows (``last_good`` moves to it), rolled back after
  `failures_to_rollback` failing ones.

A rollback moves ``serving`` back to ``last_good``, marks every version published since as
bad, **rewinds the learner** to the good version's weights (the bad lineage is not trained
on further) and hands the labels learned since the good version was published to the
caller as quarantined (kept for review, never silently dropped).

Everything the registry must learn (versions published, alias moves with their evidence) is
appended to `outbox`; the stage drains it into the checkpoint it takes, and the runtime
publishes it with that checkpoint. Because the book is deterministic in its input, a replay
after a restore makes the same versions and the same moves, with the same ids, so applying
them again is a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from resilience._errors import InvalidModelConfig
from resilience.models._gate import GateConfig, GateState, Verdict, WindowAccumulator, judge

__all__ = ["MODELS_KEY", "BookConfig", "Learner", "ModelBook"]

MODELS_KEY = "models"
"""The key of a stage's snapshot metadata under which it lists, per model, the versions to
publish (``versions``: ModelVersion fields but the epoch and the creation time, which the
runtime adds) and the alias moves (``moves``) its book made since the last checkpoint."""


class Learner(Protocol):
    """A model that learns one label at a time. Weights are a flat list of floats;
    features are whatever the stage computes (msgpack-serializable: they are checkpointed
    while their label is awaited)."""

    def initial(self) -> list[float]:
        """The weights of a model that has learned nothing."""
        ...

    def score(self, weights: Sequence[float], features: Any) -> float:
        """A probability in [0, 1]."""
        ...

    def learn(self, weights: list[float], features: Any, label: bool) -> None:
        """Update `weights` in place from one label."""
        ...


@dataclass(frozen=True)
class BookConfig:
    """How a model's versions are made and judged."""

    gate: GateConfig = field(default_factory=GateConfig)
    publish_every: int = 1000
    """Labels learned between two versions."""
    keep_versions: int = 8
    """Weights of this many newest versions are kept besides the aliased ones (an operator
    can move an alias back to them)."""
    warmup_labels: int = 2000
    """While ``last_good`` has learned fewer labels than this, the score distribution is not
    judged (a model learning from scratch moves all its scores), only the log-loss."""
    max_pending: int = 200_000
    """Events kept awaiting their label; the oldest are forgotten beyond it."""
    max_quarantine: int = 1_000_000
    """Labels remembered for quarantine since ``last_good``; beyond it they are counted."""

    def __post_init__(self) -> None:
        for name in ("publish_every", "keep_versions", "max_pending", "max_quarantine"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidModelConfig(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup_labels, int) or self.warmup_labels < 0:
            raise InvalidModelConfig(f"warmup_labels must be an integer >= 0, got "
                                     f"{self.warmup_labels!r}")
        if self.publish_every < self.gate.window_labels:
            raise InvalidModelConfig(
                f"publish_every ({self.publish_every}) is shorter than a gate window "
                f"({self.gate.window_labels} labels): no version would ever be judged")


class ModelBook:
    """The versions, aliases, gate and learner of one model. See the module docstring."""

    def __init__(self, name: str, learner: Learner, config: BookConfig | None = None) -> None:
        self.name = name
        self.learner = learner
        self.config = config or BookConfig()
        self.reset()

    def reset(self) -> None:
        """A model that has learned nothing: version 1 is the learner's initial weights,
        serving and last good (there is nothing to judge it against)."""
        initial = [float(x) for x in self.learner.initial()]
        # Where in its input the stage stands (the payments job: the transfers line last
        # scored): the stage sets it, and every version and move records it.
        self.position: Any = None
        self.weights: list[float] = list(initial)
        self.versions: dict[int, list[float]] = {1: initial}
        self.trained_at: dict[int, int] = {1: 0}  # labels the version had learned
        self.parents: dict[int, int | None] = {1: None}
        self.bad: set[int] = set()
        self.serving = 1
        self.last_good = 1
        self.candidate: int | None = None
        self.next_version = 2
        self.learned = 0
        self.since_publish = 0
        self.moves = 0  # alias moves so far: the move ids
        self.gate = GateState()
        self.window = WindowAccumulator(self.config.gate.bins)
        self.pending: dict[str, Any] = {}
        self.forgotten = 0  # pending events dropped beyond max_pending
        self.unmatched = 0  # labels whose event was not pending (forgotten, or never scored)
        # Labels learned since last_good was published: (learned index, key, label, ref).
        self.suspect: list[tuple[int, str, bool, Any]] = []
        self.suspect_dropped = 0
        self.outbox: list[dict[str, Any]] = [{"kind": "publish", "version": 1, "parent": None,
                                              "trained_labels": 0, "position": None}]
        # Versions the registry may not hold yet: their weights are kept (whatever
        # keep_versions says) until a completed checkpoint has carried them.
        self.unpublished: set[int] = {1}
        self._move("serving", None, 1, "the initial model", {})
        self._move("last_good", None, 1, "the initial model", {})
        self.quarantined: list[dict[str, Any]] = []
        self.rollbacks = 0
        self.windows = 0  # gate windows judged
        self.quarantined_total = 0  # labels quarantined by every rollback so far
        self.verdicts: list[dict[str, Any]] = []  # recent window verdicts, for the status

    # -- serving ----------------------------------------------------------------------

    def score(self, key: str, features: Any) -> tuple[float, int]:
        """The serving version's probability for one event, and that version. The event
        waits (by `key`) for its label."""
        pending = self.pending
        pending[key] = features
        if len(pending) > self.config.max_pending:
            del pending[next(iter(pending))]
            self.forgotten += 1
        return self.learner.score(self.versions[self.serving], features), self.serving

    def score_only(self, features: Any) -> tuple[float, int]:
        """The serving version's probability, for an event no label will follow."""
        return self.learner.score(self.versions[self.serving], features), self.serving

    # -- learning ---------------------------------------------------------------------

    def label(self, key: str, label: bool, ref: Any = None) -> None:
        """The delayed label of the event scored under `key` (`ref`: where it came from,
        kept with it if it is ever quarantined)."""
        features = self.pending.pop(key, None)
        if features is None:
            self.unmatched += 1
            return
        learner = self.learner
        if self.serving != self.last_good:
            self.window.add(label, learner.score(self.versions[self.serving], features),
                            learner.score(self.versions[self.last_good], features))
            if self.window.labels >= self.config.gate.window_labels and \
                    self._close_window((key, label, ref)) == "rollback":
                return  # quarantined with the stretch the verdict rejected, not learned
        learner.learn(self.weights, features, label)
        self.learned += 1
        if len(self.suspect) < self.config.max_quarantine:
            self.suspect.append((self.learned, key, label, ref))
        else:
            self.suspect_dropped += 1
        self.since_publish += 1
        if self.since_publish >= self.config.publish_every:
            self._publish()

    def _close_window(self, current: tuple[str, bool, Any]) -> str:
        window = self.window.close()
        self.windows += 1
        self.window = WindowAccumulator(self.config.gate.bins)
        gate = self.config.gate
        verdict = judge(window, gate, scores=self._judges_scores())
        self.gate, decision = self.gate.step(verdict, gate)
        self._note(verdict)
        if decision == "confirm":
            self._confirm(verdict)
        elif decision == "rollback":
            self._rollback(verdict, current)
        return decision

    def _judges_scores(self) -> bool:
        return self.trained_at[self.last_good] >= self.config.warmup_labels

    def _note(self, verdict: Verdict) -> None:
        self.verdicts.append({"version": self.serving, "control": self.last_good,
                              **verdict.to_json()})
        del self.verdicts[:-16]

    def _publish(self) -> None:
        version = self.next_version
        self.next_version += 1
        self.since_publish = 0
        self.versions[version] = list(self.weights)
        self.trained_at[version] = self.learned
        self.parents[version] = self.serving
        self.outbox.append({"kind": "publish", "version": version, "parent": self.serving,
                            "trained_labels": self.learned, "position": self.position})
        self.unpublished.add(version)
        self._move("candidate", self.candidate, version, "published", {})
        self.candidate = version
        self._move("serving", self.serving, version, "a new version serves while its gate "
                   f"judges it against version {self.last_good}", {})
        self.serving = version
        self.window = WindowAccumulator(self.config.gate.bins)
        self._forget_old()

    def _confirm(self, verdict: Verdict) -> None:
        version = self.serving
        self._move("last_good", self.last_good, version, verdict.reason,
                   {**verdict.evidence, "outcome": verdict.outcome})
        self.last_good = version
        since = self.trained_at[version]
        self.suspect = [s for s in self.suspect if s[0] > since]
        self.suspect_dropped = 0
        self._forget_old()

    def _rollback(self, verdict: Verdict, current: tuple[str, bool, Any]) -> None:
        """`current`: the label that closed the failing window (not learned yet)."""
        good = self.last_good
        # Every version published since the good one (whether its weights are still kept
        # or not), so the verdict does not depend on what was pruned when.
        bad = [v for v in range(good + 1, self.next_version) if v not in self.bad]
        self.bad.update(bad)
        self._move("serving", self.serving, good, f"rolled back: {verdict.reason}",
                   {**verdict.evidence, "outcome": verdict.outcome, "marked_bad": bad})
        self.serving = good
        # ``candidate`` stays: it names the newest version published, good or bad.
        self.weights = list(self.versions[good])
        since = self.trained_at[good]
        rewound = [s for s in self.suspect if s[0] > since]
        rewound.append((self.learned + 1, *current))
        self.quarantined.extend(
            {"model": self.name, "key": key, "label": label, "ref": ref,
             "rolled_back": bad, "why": verdict.reason}
            for _, key, label, ref in rewound)
        self.outbox.append({"kind": "quarantine", "labels": len(rewound),
                            "uncounted": self.suspect_dropped})
        self.rollbacks += 1
        self.quarantined_total += len(rewound) + self.suspect_dropped
        self.suspect = []
        self.suspect_dropped = 0
        self.learned = since  # the learner is the good version again
        self.since_publish = 0
        self.window = WindowAccumulator(self.config.gate.bins)
        self._forget_old()

    def _move(self, alias: str, from_version: int | None, to_version: int, why: str,
              evidence: dict[str, Any]) -> None:
        self.moves += 1
        self.outbox.append({"kind": "move", "move_id": f"{self.name}-{self.moves}",
                            "alias": alias, "from": from_version, "to": to_version,
                            "why": why, "evidence": {**evidence, "position": self.position}})

    def _forget_old(self) -> None:
        """Keep the weights of the aliased versions and of the newest `keep_versions`."""
        keep = set(sorted(self.versions)[-self.config.keep_versions:])
        keep |= {self.serving, self.last_good, *self.unpublished}
        if self.candidate is not None:
            keep.add(self.candidate)
        for v in [v for v in self.versions if v not in keep]:
            del self.versions[v]
            self.trained_at.pop(v, None)
            self.parents.pop(v, None)

    # -- what leaves the book ---------------------------------------------------------

    def published(self, versions: set[int]) -> None:
        """`versions` are in the registry (a checkpoint that carried them completed): their
        weights need no longer be kept beyond `keep_versions`."""
        if self.unpublished & versions:
            self.unpublished -= versions
            self._forget_old()

    def drain(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The registry events and the quarantined labels since the last drain."""
        out, self.outbox = self.outbox, []
        quarantined, self.quarantined = self.quarantined, []
        return out, quarantined

    def status(self) -> dict[str, Any]:
        return {"serving": self.serving, "last_good": self.last_good,
                "candidate": self.candidate, "versions": sorted(self.versions),
                "bad": sorted(self.bad), "learned": self.learned,
                "pending": len(self.pending), "unmatched": self.unmatched,
                "gate": self.gate.to_json(), "window_labels": self.window.labels,
                "rollbacks": self.rollbacks, "windows": self.windows,
                "quarantined": self.quarantined_total,
                "published": self.next_version - 1, "verdicts": list(self.verdicts[-4:])}

    # -- checkpointing ----------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """Everything but the outbox and the quarantine (drained into each checkpoint)."""
        return {
            "weights": self.weights,
            "versions": {str(v): w for v, w in self.versions.items()},
            "trained_at": {str(v): n for v, n in self.trained_at.items()},
            "parents": {str(v): p for v, p in self.parents.items()},
            "bad": sorted(self.bad), "serving": self.serving, "last_good": self.last_good,
            "candidate": self.candidate, "next_version": self.next_version,
            "learned": self.learned, "since_publish": self.since_publish,
            "moves": self.moves, "gate": self.gate.to_json(),
            "window": self.window.to_json(), "pending": list(self.pending.items()),
            "forgotten": self.forgotten, "unmatched": self.unmatched,
            "suspect": [list(s) for s in self.suspect],
            "suspect_dropped": self.suspect_dropped, "verdicts": self.verdicts,
            "rollbacks": self.rollbacks, "quarantined_total": self.quarantined_total,
            "position": self.position, "windows": self.windows,
        }

    def load_state(self, doc: dict[str, Any]) -> None:
        self.weights = [float(x) for x in doc["weights"]]
        self.versions = {int(v): [float(x) for x in w] for v, w in doc["versions"].items()}
        self.trained_at = {int(v): int(n) for v, n in doc["trained_at"].items()}
        self.parents = {int(v): (None if p is None else int(p))
                        for v, p in doc["parents"].items()}
        self.bad = {int(v) for v in doc["bad"]}
        self.serving, self.last_good = int(doc["serving"]), int(doc["last_good"])
        self.candidate = None if doc["candidate"] is None else int(doc["candidate"])
        self.next_version = int(doc["next_version"])
        self.learned, self.since_publish = int(doc["learned"]), int(doc["since_publish"])
        self.moves = int(doc["moves"])
        self.gate = GateState.from_json(doc["gate"])
        self.window = WindowAccumulator.from_json(doc["window"])
        self.pending = {str(k): v for k, v in doc["pending"]}
        self.forgotten, self.unmatched = int(doc["forgotten"]), int(doc["unmatched"])
        self.suspect = [(int(n), str(k), bool(lab), ref) for n, k, lab, ref in doc["suspect"]]
        self.suspect_dropped = int(doc["suspect_dropped"])
        self.verdicts = list(doc["verdicts"])
        self.rollbacks, self.quarantined_total = int(doc["rollbacks"]), int(
            doc["quarantined_total"])
        self.position, self.windows = doc["position"], int(doc["windows"])
        # The runtime publishes what a restored checkpoint carries before the job goes on,
        # but that may fail: the restored versions are kept until a checkpoint that carries
        # them completes.
        self.outbox, self.quarantined = [], []
        self.unpublished = set(self.versions)
