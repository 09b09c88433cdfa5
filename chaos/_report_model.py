"""Reports of chaos runs: the model and its JSON form (the page is in `chaos._report_html`).

A `Report` is what one chaos run leaves behind: the faults it injected, the invariants and
steady-state checks it evaluated, the job's progress sampled during the run, and a journal of
everything that happened. It has two forms:

* JSON (`write_json` / `read_json`) for machines: indented, sorted keys, and an exact round
  trip (`read_json(write_json(r)) == r`);
* HTML (`render_html` / `write_html`) for people: one page that fetches nothing (no script,
  stylesheet, font or image from anywhere), with its charts drawn as inline SVG.

The verdict is derived, never asserted: `Report.passed` must equal `Report.compute_passed()`
(every invariant and steady-state check passed and the run was not aborted). The constructor
enforces it, so neither a harness bug nor a hand-edited JSON file can produce a report that
claims a pass its evidence does not support. Build reports with `Report.build`, which computes
the verdict.

Times inside a report (`injected_at`, `Sample.t`, `JournalEvent.t`, ...) are seconds since the
start of the run; only `Report.started_at` is a unix timestamp.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from checkpoint import ResilienceError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FaultRecord",
    "InvalidReport",
    "InvariantResult",
    "JournalEvent",
    "Phase",
    "Report",
    "Sample",
    "SteadyStateResult",
    "read_json",
    "write_atomically",
    "write_json",
]

FORMAT = "fusion-resilience/chaos-report"
"""Value of the `format` key of every report written as JSON."""

FORMAT_VERSION = 1
"""Version of the JSON layout; `read_json` refuses any other."""

Phase = Literal["before", "after"]
_PHASES: dict[str, Phase] = {"before": "before", "after": "after"}


class InvalidReport(ResilienceError, ValueError):
    """A report (or its JSON) is inconsistent, malformed or of an unknown format version.

    The message names the offending field (e.g. `faults[2].injected_at`).
    """


# --------------------------------------------------------------------------------------------
# Validation and typed reading of JSON objects


def _check_finite(where: str, value: float) -> None:
    # JSON has no NaN or infinity: a report holding one could be written only as
    # non-standard JSON, which other tools reject.
    if not math.isfinite(value):
        raise InvalidReport(f"{where} must be a finite number, got {value!r}")


class _Fields:
    """Typed access to one decoded JSON object; every error names the offending field."""

    _MISSING: Any = object()

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise InvalidReport(f"{where} must be a JSON object, got {type(data).__name__}")
        self._data: Mapping[str, Any] = data
        self._where = where

    def _get(self, key: str, default: Any) -> Any:
        if key in self._data:
            return self._data[key]
        if default is self._MISSING:
            raise InvalidReport(f"{self._where}.{key} is missing")
        return default

    def _fail(self, key: str, expected: str, value: object) -> InvalidReport:
        return InvalidReport(
            f"{self._where}.{key} must be {expected}, got {type(value).__name__} {value!r:.80}"
        )

    def text(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._fail(key, "a string", value)
        return value

    def optional_text(self, key: str) -> str | None:
        value = self._get(key, None)
        return None if value is None else self.text(key)

    def number(self, key: str) -> float:
        value = self._get(key, self._MISSING)
        # bool is an int in Python, but `true` where a time belongs is a corrupt file.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, "a number", value)
        return float(value)

    def optional_number(self, key: str) -> float | None:
        value = self._get(key, None)
        return None if value is None else self.number(key)

    def integer(self, key: str) -> int:
        value = self._get(key, self._MISSING)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, "an integer", value)
        return value

    def boolean(self, key: str) -> bool:
        value = self._get(key, self._MISSING)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false", value)
        return value

    def mapping(self, key: str, default: Any = _MISSING) -> dict[str, Any]:
        value = self._get(key, default)
        if not isinstance(value, Mapping):
            raise self._fail(key, "an object", value)
        return copy.deepcopy(dict(value))

    def items(self, key: str) -> list[tuple[Any, str]]:
        """The elements of a list, each with its path for error messages."""
        value = self._get(key, self._MISSING)
        if not isinstance(value, list):
            raise self._fail(key, "a list", value)
        return [(item, f"{self._where}.{key}[{i}]") for i, item in enumerate(value)]


# --------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class FaultRecord:
    """One fault the run injected and, if it was, when it was healed.

    `healed_at` is None for a fault still active when the run ended (or one that is never
    healed, such as a SIGKILL); otherwise it is not before `injected_at`.
    """

    kind: str
    target: str
    injected_at: float
    healed_at: float | None
    params: dict[str, Any]
    detail: str = ""

    def __post_init__(self) -> None:
        _check_finite("FaultRecord.injected_at", self.injected_at)
        if self.healed_at is not None:
            _check_finite("FaultRecord.healed_at", self.healed_at)
            if self.healed_at < self.injected_at:
                raise InvalidReport(
                    f"fault {self.kind} on {self.target}: healed_at {self.healed_at} "
                    f"precedes injected_at {self.injected_at}"
                )

    @property
    def duration_s(self) -> float | None:
        """Seconds the fault was active, or None if it was never healed."""
        return None if self.healed_at is None else self.healed_at - self.injected_at

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: a plain dict sharing nothing mutable with this record."""
        return {
            "kind": self.kind,
            "target": self.target,
            "injected_at": self.injected_at,
            "healed_at": self.healed_at,
            "params": copy.deepcopy(self.params),
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "fault") -> FaultRecord:
        """Rebuild from `to_dict()` output. Raises `InvalidReport` naming a bad field."""
        f = _Fields(data, where)
        return cls(
            kind=f.text("kind"),
            target=f.text("target"),
            injected_at=f.number("injected_at"),
            healed_at=f.optional_number("healed_at"),
            params=f.mapping("params", {}),
            detail=f.text("detail", ""),
        )


@dataclass(frozen=True)
class InvariantResult:
    """The outcome of one invariant (e.g. exactly-once) checked after the run."""

    name: str
    passed: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: a plain dict sharing nothing mutable with this result."""
        return {
            "name": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "data": copy.deepcopy(self.data),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "invariant") -> InvariantResult:
        """Rebuild from `to_dict()` output. Raises `InvalidReport` naming a bad field."""
        f = _Fields(data, where)
        return cls(
            name=f.text("name"),
            passed=f.boolean("passed"),
            detail=f.text("detail"),
            data=f.mapping("data", {}),
        )


@dataclass(frozen=True)
class SteadyStateResult:
    """One steady-state check, evaluated before the faults or after they were healed.

    `observed` is the measured value (None when nothing could be measured); `threshold` says
    in words what was required of it (e.g. ">= 500 events/s").
    """

    name: str
    phase: Phase
    passed: bool
    observed: float | None
    threshold: str
    detail: str

    def __post_init__(self) -> None:
        if self.phase not in _PHASES:
            raise InvalidReport(
                f"steady-state check {self.name!r}: phase must be 'before' or 'after', "
                f"got {self.phase!r}"
            )
        if self.observed is not None:
            _check_finite(f"steady-state check {self.name!r}: observed", self.observed)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "name": self.name,
            "phase": self.phase,
            "passed": self.passed,
            "observed": self.observed,
            "threshold": self.threshold,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "steady_state") -> SteadyStateResult:
        """Rebuild from `to_dict()` output. Raises `InvalidReport` naming a bad field."""
        f = _Fields(data, where)
        phase = f.text("phase")
        if phase not in _PHASES:
            raise InvalidReport(f"{where}.phase must be 'before' or 'after', got {phase!r}")
        return cls(
            name=f.text("name"),
            phase=_PHASES[phase],
            passed=f.boolean("passed"),
            observed=f.optional_number("observed"),
            threshold=f.text("threshold"),
            detail=f.text("detail"),
        )


@dataclass(frozen=True)
class Sample:
    """The job's progress at one instant (`t` seconds since the run started).

    `lines_read` and `committed` are cumulative counts of events read by the source and
    committed to the ledger; `lines_read` may go back when the job rolls back to a checkpoint.
    """

    t: float
    lines_read: int
    committed: int
    checkpoints: int
    generation: int
    state: str

    def __post_init__(self) -> None:
        _check_finite("Sample.t", self.t)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "t": self.t,
            "lines_read": self.lines_read,
            "committed": self.committed,
            "checkpoints": self.checkpoints,
            "generation": self.generation,
            "state": self.state,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "sample") -> Sample:
        """Rebuild from `to_dict()` output. Raises `InvalidReport` naming a bad field."""
        f = _Fields(data, where)
        return cls(
            t=f.number("t"),
            lines_read=f.integer("lines_read"),
            committed=f.integer("committed"),
            checkpoints=f.integer("checkpoints"),
            generation=f.integer("generation"),
            state=f.text("state"),
        )


@dataclass(frozen=True)
class JournalEvent:
    """One thing that happened during the run (fault injected, restore began, abort, ...).

    `kind` is a short machine-friendly word; the HTML timeline marks every event whose kind
    starts with "restore" (so "restore", "restore_began" and "restore_ended" all count).
    """

    t: float
    kind: str
    message: str

    def __post_init__(self) -> None:
        _check_finite("JournalEvent.t", self.t)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"t": self.t, "kind": self.kind, "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "journal") -> JournalEvent:
        """Rebuild from `to_dict()` output. Raises `InvalidReport` naming a bad field."""
        f = _Fields(data, where)
        return cls(t=f.number("t"), kind=f.text("kind"), message=f.text("message"))


@dataclass(frozen=True)
class Report:
    """Everything one chaos run produced, and its verdict.

    Construct with `Report.build(...)`, which computes `passed`. The plain constructor
    raises `InvalidReport` when `passed` disagrees with `compute_passed()`, when `aborted`
    is an empty string (None means "not aborted"; an abort must say why), or when a time is
    not finite.
    """

    scenario: str
    scenario_file: str | None
    seed: int
    code_version: str
    started_at: float
    duration_s: float
    passed: bool
    aborted: str | None
    faults: list[FaultRecord]
    invariants: list[InvariantResult]
    steady_state: list[SteadyStateResult]
    samples: list[Sample]
    journal: list[JournalEvent]
    job: dict[str, Any]
    replay: str

    def __post_init__(self) -> None:
        _check_finite("Report.started_at", self.started_at)
        _check_finite("Report.duration_s", self.duration_s)
        if self.duration_s < 0:
            raise InvalidReport(f"Report.duration_s must not be negative, got {self.duration_s}")
        if self.aborted == "":
            raise InvalidReport("Report.aborted must say why the run was aborted, or be None")
        if self.passed != self.compute_passed():
            reasons = "; ".join(self.failure_reasons()) or "every check passed"
            raise InvalidReport(
                f"Report.passed is {self.passed} but the evidence says otherwise ({reasons}); "
                "build reports with Report.build(), which computes the verdict"
            )

    @classmethod
    def build(
        cls,
        *,
        scenario: str,
        seed: int,
        code_version: str,
        started_at: float,
        duration_s: float,
        replay: str,
        scenario_file: str | None = None,
        aborted: str | None = None,
        faults: Iterable[FaultRecord] = (),
        invariants: Iterable[InvariantResult] = (),
        steady_state: Iterable[SteadyStateResult] = (),
        samples: Iterable[Sample] = (),
        journal: Iterable[JournalEvent] = (),
        job: Mapping[str, Any] | None = None,
    ) -> Report:
        """A report whose `passed` is computed from its invariants, checks and abort."""
        invariant_list = list(invariants)
        steady_list = list(steady_state)
        return cls(
            scenario=scenario,
            scenario_file=scenario_file,
            seed=seed,
            code_version=code_version,
            started_at=started_at,
            duration_s=duration_s,
            passed=_verdict(invariant_list, steady_list, aborted),
            aborted=aborted,
            faults=list(faults),
            invariants=invariant_list,
            steady_state=steady_list,
            samples=list(samples),
            journal=list(journal),
            job=dict(job or {}),
            replay=replay,
        )

    def compute_passed(self) -> bool:
        """True iff every invariant and steady-state check passed and the run was not aborted.

        A run that checked nothing passes vacuously; `failure_reasons` and the HTML page say
        so, but the verdict follows the rule above.
        """
        return _verdict(self.invariants, self.steady_state, self.aborted)

    def failure_reasons(self) -> list[str]:
        """One line per reason the run failed (empty when it passed), abort first."""
        reasons = [f"aborted: {self.aborted}"] if self.aborted is not None else []
        reasons += [
            f"invariant {i.name} failed: {i.detail}" for i in self.invariants if not i.passed
        ]
        reasons += [
            f"steady-state check {s.name} ({s.phase}) failed: {s.detail}"
            for s in self.steady_state
            if not s.passed
        ]
        return reasons

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with `format` and `format_version` keys; shares nothing mutable."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "scenario": self.scenario,
            "scenario_file": self.scenario_file,
            "seed": self.seed,
            "code_version": self.code_version,
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "passed": self.passed,
            "aborted": self.aborted,
            "faults": [f.to_dict() for f in self.faults],
            "invariants": [i.to_dict() for i in self.invariants],
            "steady_state": [s.to_dict() for s in self.steady_state],
            "samples": [s.to_dict() for s in self.samples],
            "journal": [e.to_dict() for e in self.journal],
            "job": copy.deepcopy(self.job),
            "replay": self.replay,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """Rebuild from `to_dict()` output.

        Raises `InvalidReport` naming the field when one is missing or mistyped, when the
        format version is not `FORMAT_VERSION`, or when the stored verdict disagrees with the
        stored evidence.
        """
        f = _Fields(data, "report")
        fmt = f.text("format", FORMAT)
        version = data.get("format_version", FORMAT_VERSION)
        if fmt != FORMAT or version != FORMAT_VERSION:
            raise InvalidReport(
                f"not a chaos report this code can read: format {fmt!r} version {version!r} "
                f"(expected {FORMAT!r} version {FORMAT_VERSION})"
            )
        return cls(
            scenario=f.text("scenario"),
            scenario_file=f.optional_text("scenario_file"),
            seed=f.integer("seed"),
            code_version=f.text("code_version"),
            started_at=f.number("started_at"),
            duration_s=f.number("duration_s"),
            passed=f.boolean("passed"),
            aborted=f.optional_text("aborted"),
            faults=[FaultRecord.from_dict(*x) for x in f.items("faults")],
            invariants=[InvariantResult.from_dict(*x) for x in f.items("invariants")],
            steady_state=[SteadyStateResult.from_dict(*x) for x in f.items("steady_state")],
            samples=[Sample.from_dict(*x) for x in f.items("samples")],
            journal=[JournalEvent.from_dict(*x) for x in f.items("journal")],
            job=f.mapping("job", {}),
            replay=f.text("replay"),
        )

    def to_json(self) -> str:
        """The JSON text `write_json` writes: indent 2, sorted keys, standard JSON only.

        Raises `InvalidReport` when a free-form dict (`params`, `data`, `job`) holds a value
        JSON cannot represent (NaN, an object, a non-string key...).
        """
        try:
            return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise InvalidReport(
                f"report {self.scenario!r} cannot be written as JSON: {exc}"
            ) from exc

    @classmethod
    def from_json(cls, text: str) -> Report:
        """Parse `to_json()` output. Raises `InvalidReport` for bad JSON or a bad report."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidReport(f"report is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _verdict(
    invariants: Sequence[InvariantResult],
    steady_state: Sequence[SteadyStateResult],
    aborted: str | None,
) -> bool:
    return (
        aborted is None
        and all(i.passed for i in invariants)
        and all(s.passed for s in steady_state)
    )


# --------------------------------------------------------------------------------------------
# Files


def write_atomically(path: str | os.PathLike[str], text: str) -> Path:
    # A reader (CI, a dashboard) must never see half a report: write a temporary file in the
    # same directory, then rename it over the target.
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
        # mkstemp makes the file private (0600); a report is meant to be read by others
        # (CI artifacts, a web server), as a file written with open() would be.
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write `report.to_json()` to `path` atomically and return the path.

    Raises `InvalidReport` (and writes nothing) when the report cannot be represented as JSON.
    """
    return write_atomically(path, report.to_json())


def read_json(path: str | os.PathLike[str]) -> Report:
    """Read a report written by `write_json`. Raises `InvalidReport` if it is not one."""
    return Report.from_json(Path(path).read_text(encoding="utf-8"))




