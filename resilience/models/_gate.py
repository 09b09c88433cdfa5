"""Judging the serving version against its control on delayed labels. Pure: no clock, no
I/O, tested without a cluster.

Every label is scored twice when it arrives, before anything learns from it (prequential
evaluation: test, then train): once by the serving version and once by the control, the
version aliased ``last_good``. The evidence is the per-label difference of their log-losses
over a window of labels. Pairing both models on the same labels is what keeps the test
honest when the traffic legitimately shifts (a holiday multiplies the fraud rate): such a
shift moves both losses alike and leaves their difference alone, where an absolute
threshold would roll back a healthy model.

* `WindowAccumulator` collects one window; `Window` is what it closes into.
* `judge(window, config)` gives a `Verdict`: ``pass``, ``fail`` or ``inconclusive``. Too
  few labels is inconclusive, never a pass and never a fail (canary analyses that read
  "no data" as a pass shipped regressions). A serving score that is not a probability is
  a fail on its own.
* `GateState.step(verdict)` turns verdicts into a `Decision`: roll back after
  `failures_to_rollback` consecutive failing windows, confirm the serving version as the
  new ``last_good`` after `passes_to_confirm` consecutive passing ones. An inconclusive
  window changes no count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from resilience._errors import InvalidModelConfig

__all__ = [
    "Decision",
    "GateConfig",
    "GateState",
    "Outcome",
    "Verdict",
    "Window",
    "WindowAccumulator",
    "judge",
    "log_loss",
]

Outcome = Literal["pass", "fail", "inconclusive"]
Decision = Literal["hold", "rollback", "confirm"]

_EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS]: one certain mistake costs 16 nats


def log_loss(probability: float, label: bool) -> float:
    """The log-loss of one prediction, in nats, with the probability clipped away from 0/1."""
    p = min(max(probability, _EPS), 1.0 - _EPS)
    return -math.log(p) if label else -math.log1p(-p)


def _is_probability(x: float) -> bool:
    return isinstance(x, float | int) and math.isfinite(x) and 0.0 <= x <= 1.0


@dataclass(frozen=True)
class GateConfig:
    """How a model is judged. Validated at construction (a wrong value fails at once)."""

    window_labels: int = 500
    """Labels per window."""
    min_labels: int = 200
    """A window with fewer labels (the last one of an input, a quiet hour) is inconclusive."""
    margin: float = 0.01
    """Nats of log-loss per label the serving version may lose to the control for free."""
    z: float = 3.0
    """One-sided confidence: a window fails when even the optimistic end of the interval,
    mean difference minus `z` standard errors, is worse than `margin`."""
    max_psi: float = 0.5
    """Population stability index of the serving scores against the control's on the same
    events; above it, a window fails (see `judge`)."""
    bins: int = 10
    failures_to_rollback: int = 3
    passes_to_confirm: int = 2

    def __post_init__(self) -> None:
        for name in ("window_labels", "min_labels", "bins", "failures_to_rollback",
                     "passes_to_confirm"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidModelConfig(f"{name} must be a positive integer, got {value!r}")
        if self.min_labels > self.window_labels:
            raise InvalidModelConfig(f"min_labels ({self.min_labels}) exceeds window_labels "
                                     f"({self.window_labels})")
        for name in ("margin", "z", "max_psi"):
            value = getattr(self, name)
            if not isinstance(value, float | int) or not math.isfinite(value) or value < 0:
                raise InvalidModelConfig(f"{name} must be a finite number >= 0, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> GateConfig:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


@dataclass(frozen=True)
class Window:
    """One closed window of paired scores."""

    labels: int
    positives: int
    loss_serving: float  # summed over the window's labels
    loss_control: float
    diff_sum: float  # sum of (loss_serving - loss_control) per label
    diff_sq: float  # sum of its squares
    invalid_scores: int  # serving scores that were not probabilities (NaN, inf, out of [0, 1])
    serving_hist: tuple[int, ...]
    control_hist: tuple[int, ...]

    @property
    def mean_diff(self) -> float:
        return self.diff_sum / self.labels if self.labels else 0.0

    @property
    def stderr(self) -> float:
        n = self.labels
        if n < 2:
            return math.inf
        variance = max(self.diff_sq / n - self.mean_diff ** 2, 0.0) * n / (n - 1)
        return math.sqrt(variance / n)

    @property
    def psi(self) -> float:
        """Population stability index of the serving histogram against the control's."""
        total_s = sum(self.serving_hist) or 1
        total_c = sum(self.control_hist) or 1
        out = 0.0
        for s, c in zip(self.serving_hist, self.control_hist, strict=True):
            ps = max(s / total_s, 1e-4)
            pc = max(c / total_c, 1e-4)
            out += (ps - pc) * math.log(ps / pc)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "positives": self.positives,
                "loss_serving": self.loss_serving, "loss_control": self.loss_control,
                "diff_sum": self.diff_sum, "diff_sq": self.diff_sq,
                "invalid_scores": self.invalid_scores,
                "serving_hist": list(self.serving_hist),
                "control_hist": list(self.control_hist)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Window:
        return cls(int(doc["labels"]), int(doc["positives"]), float(doc["loss_serving"]),
                   float(doc["loss_control"]), float(doc["diff_sum"]), float(doc["diff_sq"]),
                   int(doc["invalid_scores"]), tuple(int(x) for x in doc["serving_hist"]),
                   tuple(int(x) for x in doc["control_hist"]))


@dataclass
class WindowAccumulator:
    """Collects the paired scores of one window. Checkpointable through `to_json`."""

    bins: int = 10
    labels: int = 0
    positives: int = 0
    loss_serving: float = 0.0
    loss_control: float = 0.0
    diff_sum: float = 0.0
    diff_sq: float = 0.0
    invalid_scores: int = 0
    serving_hist: list[int] = field(default_factory=list)
    control_hist: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.serving_hist:
            self.serving_hist = [0] * self.bins
        if not self.control_hist:
            self.control_hist = [0] * self.bins

    def _bin(self, p: float) -> int:
        return min(int(p * self.bins), self.bins - 1)

    def add(self, label: bool, serving: float, control: float) -> None:
        """One label, with the probabilities the serving version and the control gave it."""
        self.labels += 1
        self.positives += bool(label)
        if not _is_probability(serving):
            self.invalid_scores += 1
            serving = 1.0 - float(label)  # counted as a certain mistake
        if not _is_probability(control):
            control = 0.5  # a broken control must not make a good model look bad
        ls = log_loss(serving, label)
        lc = log_loss(control, label)
        d = ls - lc
        self.loss_serving += ls
        self.loss_control += lc
        self.diff_sum += d
        self.diff_sq += d * d
        self.serving_hist[self._bin(serving)] += 1
        self.control_hist[self._bin(control)] += 1

    def close(self) -> Window:
        return Window(self.labels, self.positives, self.loss_serving, self.loss_control,
                      self.diff_sum, self.diff_sq, self.invalid_scores,
                      tuple(self.serving_hist), tuple(self.control_hist))

    def to_json(self) -> dict[str, Any]:
        return {"bins": self.bins, **self.close().to_json()}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> WindowAccumulator:
        w = Window.from_json(doc)
        return cls(int(doc["bins"]), w.labels, w.positives, w.loss_serving, w.loss_control,
                   w.diff_sum, w.diff_sq, w.invalid_scores, list(w.serving_hist),
                   list(w.control_hist))


@dataclass(frozen=True)
class Verdict:
    """What one window says, why, and the figures that say it."""

    outcome: Outcome
    reason: str
    evidence: dict[str, float | int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reason": self.reason, "evidence": dict(self.evidence)}


def judge(window: Window, config: GateConfig, *, scores: bool = True) -> Verdict:
    """The verdict of one window: serving version against control, on the same labels.

    With `scores` (the default), a window whose serving scores moved away from the
    control's by more than `max_psi` fails whatever its log-loss: a model trained on
    poisoned labels is also judged on poisoned labels, where it looks better, so the labels
    alone cannot vouch for a jump of the whole distribution. A model still learning from
    scratch moves all its scores; its book judges it with ``scores=False`` (log-loss only)."""
    evidence: dict[str, float | int] = {
        "labels": window.labels, "positives": window.positives,
        "mean_loss_serving": window.loss_serving / window.labels if window.labels else 0.0,
        "mean_loss_control": window.loss_control / window.labels if window.labels else 0.0,
    }
    if window.invalid_scores:
        return Verdict("fail", f"{window.invalid_scores} of the serving version's scores were "
                       "not probabilities", {**evidence,
                                             "invalid_scores": window.invalid_scores})
    if window.labels < config.min_labels:
        return Verdict("inconclusive", f"{window.labels} labels, fewer than the "
                       f"{config.min_labels} a verdict needs", evidence)
    mean, se = window.mean_diff, window.stderr
    optimistic = mean - config.z * se
    psi = window.psi
    evidence.update(mean_diff=mean, stderr=se, psi=psi)
    if optimistic > config.margin:
        return Verdict("fail", f"log-loss worse than the control by {mean:.4f} nats a label "
                       f"(standard error {se:.4f}; even {optimistic:.4f} exceeds the margin "
                       f"{config.margin:g})", evidence)
    if scores and psi > config.max_psi:
        return Verdict("fail", f"scores moved away from the control's (PSI {psi:.3f} > "
                       f"{config.max_psi:g}), more than labels alone can vouch for", evidence)
    return Verdict("pass", f"log-loss within the margin of the control (difference "
                   f"{mean:+.4f} ± {se:.4f} nats a label)", evidence)


@dataclass(frozen=True)
class GateState:
    """Consecutive verdicts of the current serving version against its control."""

    failures: int = 0
    passes: int = 0
    inconclusive: int = 0

    def step(self, verdict: Verdict, config: GateConfig) -> tuple[GateState, Decision]:
        """The next state and what to do. A decision starts the counts over."""
        if verdict.outcome == "inconclusive":
            return GateState(self.failures, self.passes, self.inconclusive + 1), "hold"
        if verdict.outcome == "fail":
            failures = self.failures + 1
            if failures >= config.failures_to_rollback:
                return GateState(), "rollback"
            return GateState(failures, 0, self.inconclusive), "hold"
        passes = self.passes + 1
        if passes >= config.passes_to_confirm:
            return GateState(), "confirm"
        return GateState(0, passes, self.inconclusive), "hold"

    def to_json(self) -> dict[str, int]:
        return {"failures": self.failures, "passes": self.passes,
                "inconclusive": self.inconclusive}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> GateState:
        return cls(int(doc["failures"]), int(doc["passes"]), int(doc["inconclusive"]))
