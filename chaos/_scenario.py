"""Scenario files: YAML, validated against a schema, with errors that name file and line.

A scenario says what to run, what "healthy" means, what to break and when, when to
give up, and what must hold afterwards (chaostoolkit's steady-state hypothesis, method
and rollbacks; Jepsen's independent checkers)::

    title: Balances worker crash
    job: {kind: payments, events: 60000, parallelism: 2, checkpoint_interval: 0.5}
    steady_state:
      - {probe: throughput, min_events_per_s: 500}
    method:
      - {fault: kill, target: "task:balances-0", at: {lines: 20000}}
    abort:
      - {probe: no_progress, seconds: 90}
    invariants: [exactly_once, no_split_brain, {rpo: {max_lost: 0}}]

A `schedule` draws faults at random from a seeded distribution, in addition to the
fixed ones of `method` (if any).
Every injected fault is healed at the end, whatever happens (the rollback is implicit
and cannot be switched off).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from chaos._faults import FAULT_KINDS, SITE_FAULTS, FaultStep, check_fault
from chaos._jobs import JobSpec
from resilience import ResilienceError

__all__ = [
    "INVARIANTS",
    "PROBES",
    "InvalidScenario",
    "JobSpec",
    "RandomSchedule",
    "Scenario",
    "SteadyCheck",
    "load_scenario",
    "parse_scenario",
    "scenario_to_yaml",
]

INVARIANTS = {
    "exactly_once": "the independent checker: every valid transfer applied once, bad lines "
                    "dead-lettered once, balance chains and balances exact",
    "no_split_brain": "one leader at a time: fencing epochs only grow, checkpoints are "
                      "committed in epoch order, the sink never saw an older epoch",
    "rpo": "committed output is never lost: every event committed before a fault is in "
           "the final ledger (max_lost: 0)",
    "recovery_time": "after each fault, output is committed again within max_seconds",
    "rollback_time": "a bad model is rolled back within max_seconds (needs model rollback)",
    "replication_lag": "two sites: the standby was at most max_seconds behind when the fault "
                       "struck",
}
_AVAILABLE_INVARIANTS = {"exactly_once", "no_split_brain", "rpo", "recovery_time",
                         "replication_lag"}
_SITES_ONLY_INVARIANTS = {"replication_lag"}

PROBES = {
    "throughput": "events/s over a window: min_events_per_s",
    "commit_lag": "seconds between reading an event and committing it: max_seconds",
    "no_progress": "(abort condition) nothing committed for `seconds`",
    "restores": "(abort condition) more than `max` restores",
}


class InvalidScenario(ResilienceError, ValueError):
    """A scenario file that does not validate: says which file, which line, and what."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.line, self.message))


@dataclass(frozen=True)
class SteadyCheck:
    """A probe with its threshold: checked before faults and after healing."""

    probe: str
    threshold: float
    window_s: float = 2.0
    line: int | None = None


@dataclass(frozen=True)
class AbortCheck:
    probe: str
    limit: float
    line: int | None = None


@dataclass(frozen=True)
class RandomSchedule:
    """Faults drawn at random, replayably: the seed decides everything."""

    seed: int
    count: int
    kinds: tuple[str, ...]
    targets: tuple[str, ...]
    window_s: tuple[float, float]
    max_duration_s: float = 3.0

    def draw(self, seed: int | None = None) -> list[FaultStep]:
        rng = random.Random(self.seed if seed is None else seed)
        steps = []
        for _ in range(self.count):
            kind = rng.choice(self.kinds)
            ftype = FAULT_KINDS[kind]
            target = rng.choice(ftype.targets_among(self.targets)) if ftype.targeted else ""
            at = round(rng.uniform(*self.window_s), 2)
            low = ftype.min_duration_s
            duration = (round(rng.uniform(low, max(low, self.max_duration_s)), 2)
                        if ftype.has_duration else None)
            params = dict(rng.choice(ftype.random_params)) if ftype.random_params else {}
            steps.append(FaultStep(kind=kind, target=target, at_seconds=at, duration=duration,
                                   params=params))
        return sorted(steps, key=lambda s: s.at_seconds or 0.0)


@dataclass(frozen=True)
class InvariantSpec:
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    line: int | None = None


@dataclass(frozen=True)
class Scenario:
    """A parsed, validated scenario."""

    title: str
    description: str
    job: JobSpec
    steady_state: tuple[SteadyCheck, ...]
    method: tuple[FaultStep, ...]
    schedule: RandomSchedule | None
    abort: tuple[AbortCheck, ...]
    invariants: tuple[InvariantSpec, ...]
    source: str = "<string>"

    def plan(self, seed: int | None = None) -> list[FaultStep]:
        """The faults this run injects: the method's, plus the schedule's drawn with `seed`."""
        drawn = self.schedule.draw(seed) if self.schedule is not None else []
        return sorted([*self.method, *drawn],
                      key=lambda s: (s.at_seconds is None, s.at_seconds or 0, s.at_lines or 0))

    def needs(self) -> set[str]:
        """Environment features the faults need (etcd_cluster, etcd_proxy, nodes)."""
        kinds = {s.kind for s in self.method}
        if self.schedule is not None:
            kinds |= set(self.schedule.kinds)
        out: set[str] = set()
        for k in kinds:
            out |= set(FAULT_KINDS[k].needs)
        return out

    def with_method(self, steps: Sequence[FaultStep], title: str | None = None) -> Scenario:
        """The same scenario with a fixed timeline instead of a random schedule."""
        return replace(self, method=tuple(steps), schedule=None, title=title or self.title)


# -- validation -----------------------------------------------------------------------------

def _check_kind(kind: str) -> str | None:
    import chaos._broken  # noqa: F401 - the harness-only kinds register themselves
    from chaos._jobs import ADAPTERS

    if kind not in ADAPTERS:
        return f"must be one of {', '.join(sorted(ADAPTERS))}"
    return None


_JOB_FIELDS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    # name: (type, check) ; check returns an error string or None
    "kind": (str, _check_kind),
    "events": (int, lambda v: None if 1_000 <= v <= 50_000_000 else "must be 1000..50000000"),
    "accounts": (int, lambda v: None if v >= 2 else "must be >= 2"),
    "parallelism": (int, lambda v: None if 1 <= v <= 16 else "must be 1..16"),
    "checkpoint_interval": ((int, float), lambda v: None if v > 0 else "must be > 0"),
    "seed": (int, lambda v: None),
    "alignment_timeout": ((int, float, type(None)),
                          lambda v: None if v is None or v >= 0 else "must be >= 0 or null"),
    "timeout_s": ((int, float), lambda v: None if v > 0 else "must be > 0"),
    "balances_stage": (str, lambda v: None if v in ("python", "java")
                       else "must be python or java"),
    "sites": (int, lambda v: None if v in (1, 2) else "must be 1 or 2"),
    "replication": (str, lambda v: None if v in ("sync", "async") else "must be sync or async"),
    "on_standby_loss": (str, lambda v: None if v in ("fail-closed", "degrade")
                        else "must be fail-closed or degrade"),
}


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node | None, message: str) -> InvalidScenario:
        line = node.start_mark.line + 1 if node is not None else None
        return InvalidScenario(self.source, line, message)

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.fail(k, f"{what}: keys must be names")
            if key in out:
                raise self.fail(k, f"{what}: {key!r} appears twice")
            out[key] = (k, v)
        return out

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return list(node.value)

    def unknown(self, fields: Mapping[str, tuple[yaml.Node, yaml.Node]], allowed: Sequence[str],
                what: str) -> None:
        for name, (knode, _) in fields.items():
            if name not in allowed:
                raise self.fail(knode, f"{what}: unknown key {name!r} "
                                       f"(allowed: {', '.join(sorted(allowed))})")

    def value(self, node: yaml.Node, what: str, types: type | tuple[type, ...]) -> Any:
        data = yaml.safe_load(yaml.serialize(node))
        if isinstance(data, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.fail(node, f"{what} must be {_type_name(types)}, got {data!r}")
        if not isinstance(data, types):
            raise self.fail(node, f"{what} must be {_type_name(types)}, got {data!r}")
        return data


def _type_name(types: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", type(None): "null",
             list: "a list", dict: "a mapping", bool: "true or false"}
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in ts if t is not float or int not in ts)


def parse_scenario(text: str, *, source: str = "<string>") -> Scenario:
    """Parse and validate; raises `InvalidScenario` (file, line, reason) on any problem."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InvalidScenario(source, line, f"not valid YAML: {getattr(e, 'problem', e)}") from e
    c = _Checker(source)
    if root is None:
        raise InvalidScenario(source, None, "the file is empty")
    top = c.mapping(root, "a scenario")
    c.unknown(top, ["title", "description", "job", "steady_state", "method", "schedule",
                    "abort", "invariants"], "scenario")
    if "title" not in top:
        raise c.fail(root, "missing 'title'")
    title = c.value(top["title"][1], "title", str)
    description = c.value(top["description"][1], "description", str) if "description" in top \
        else ""
    job = _job(c, top["job"][1]) if "job" in top else JobSpec()
    steady = tuple(_steady(c, n) for n in c.sequence(top["steady_state"][1], "steady_state")) \
        if "steady_state" in top else ()
    method = tuple(_fault(c, n) for n in c.sequence(top["method"][1], "method")) \
        if "method" in top else ()
    schedule = _schedule(c, top["schedule"][1]) if "schedule" in top else None
    abort = tuple(_abort(c, n) for n in c.sequence(top["abort"][1], "abort")) \
        if "abort" in top else ()
    if "invariants" not in top:
        raise c.fail(root, "missing 'invariants': a scenario must check something")
    invariants = tuple(_invariant(c, n) for n in c.sequence(top["invariants"][1], "invariants"))
    if not invariants:
        raise c.fail(top["invariants"][1], "'invariants' is empty: a scenario must check "
                                           "something")
    _check_sites(c, job, method, schedule, invariants, top)
    for step in method:
        if step.at_lines is not None and step.at_lines >= job.events:
            raise InvalidScenario(source, step.line, f"fault at line {step.at_lines} but the "
                                                      f"job has only {job.events} events")
    return Scenario(title=title, description=description, job=job, steady_state=steady,
                    method=method, schedule=schedule, abort=abort, invariants=invariants,
                    source=source)


def _check_sites(c: _Checker, job: JobSpec, method: Sequence[FaultStep],
                 schedule: RandomSchedule | None, invariants: Sequence[InvariantSpec],
                 top: Mapping[str, tuple[yaml.Node, yaml.Node]]) -> None:
    """A two-site scenario is one drill: one site-level fault, judged by the drill."""
    kinds = [(s.kind, s.line) for s in method]
    if schedule is not None:
        kinds += [(k, top["schedule"][1].start_mark.line + 1) for k in schedule.kinds]
    if job.sites == 1:
        for kind, line in kinds:
            if "sites" in FAULT_KINDS[kind].needs:
                raise InvalidScenario(c.source, line, f"fault {kind!r} needs a job on two "
                                                      "sites (job: {sites: 2, ...})")
        for inv in invariants:
            if inv.name in _SITES_ONLY_INVARIANTS:
                raise InvalidScenario(c.source, inv.line, f"invariant {inv.name!r} needs a "
                                                          "job on two sites")
        return
    if job.kind != "payments":
        raise c.fail(top["job"][1], "a job on two sites is the payments job (kind: payments)")
    for kind, line in kinds:
        if "sites" not in FAULT_KINDS[kind].needs:
            raise InvalidScenario(c.source, line, f"fault {kind!r} acts inside one site; a "
                                                  "two-site scenario takes "
                                                  f"{', '.join(SITE_FAULTS)}")
    planned = len(method) + (schedule.count if schedule is not None else 0)
    if planned != 1:
        raise c.fail(top.get("schedule", top.get("method", top["job"]))[1],
                     f"a two-site scenario is one drill: exactly one fault, got {planned}")
    for name in ("steady_state", "abort"):
        if name in top:
            raise c.fail(top[name][0], f"a two-site scenario takes no {name}: its drill "
                                       "waits for the standby to catch up and bounds "
                                       "every wait itself")


def _job(c: _Checker, node: yaml.Node) -> JobSpec:
    fields = c.mapping(node, "job")
    c.unknown(fields, list(_JOB_FIELDS), "job")
    values: dict[str, Any] = {}
    for name, (knode, vnode) in fields.items():
        types, check = _JOB_FIELDS[name]
        v = c.value(vnode, f"job.{name}", types)
        problem = check(v)
        if problem:
            raise c.fail(vnode, f"job.{name} {problem}, got {v!r}")
        values[name] = float(v) if name in ("checkpoint_interval", "timeout_s") else v
        del knode
    return JobSpec(**values)


def _steady(c: _Checker, node: yaml.Node) -> SteadyCheck:
    f = c.mapping(node, "a steady-state check")
    if "probe" not in f:
        raise c.fail(node, "a steady-state check needs 'probe'")
    probe = c.value(f["probe"][1], "probe", str)
    if probe == "throughput":
        c.unknown(f, ["probe", "min_events_per_s", "window_s"], "throughput probe")
        if "min_events_per_s" not in f:
            raise c.fail(node, "probe throughput needs min_events_per_s")
        threshold = float(c.value(f["min_events_per_s"][1], "min_events_per_s", (int, float)))
    elif probe == "commit_lag":
        c.unknown(f, ["probe", "max_seconds", "window_s"], "commit_lag probe")
        if "max_seconds" not in f:
            raise c.fail(node, "probe commit_lag needs max_seconds")
        threshold = float(c.value(f["max_seconds"][1], "max_seconds", (int, float)))
    else:
        raise c.fail(f["probe"][1], f"unknown steady-state probe {probe!r} "
                                    "(known: throughput, commit_lag)")
    window = float(c.value(f["window_s"][1], "window_s", (int, float))) if "window_s" in f \
        else 2.0
    return SteadyCheck(probe, threshold, window, node.start_mark.line + 1)


def _abort(c: _Checker, node: yaml.Node) -> AbortCheck:
    f = c.mapping(node, "an abort condition")
    if "probe" not in f:
        raise c.fail(node, "an abort condition needs 'probe'")
    probe = c.value(f["probe"][1], "probe", str)
    if probe == "no_progress":
        c.unknown(f, ["probe", "seconds"], "no_progress")
        limit = float(c.value(f["seconds"][1], "seconds", (int, float))) if "seconds" in f \
            else 60.0
    elif probe == "restores":
        c.unknown(f, ["probe", "max"], "restores")
        limit = float(c.value(f["max"][1], "max", int)) if "max" in f else 20.0
    else:
        raise c.fail(f["probe"][1], f"unknown abort probe {probe!r} "
                                    "(known: no_progress, restores)")
    return AbortCheck(probe, limit, node.start_mark.line + 1)


def _fault(c: _Checker, node: yaml.Node) -> FaultStep:
    f = c.mapping(node, "a fault")
    c.unknown(f, ["fault", "target", "at", "duration", "params"], "fault")
    if "fault" not in f:
        raise c.fail(node, "a fault needs 'fault' (its kind)")
    kind = c.value(f["fault"][1], "fault", str)
    target = c.value(f["target"][1], "target", str) if "target" in f else ""
    at_s = at_lines = None
    if "at" in f:
        at = c.mapping(f["at"][1], "at")
        c.unknown(at, ["seconds", "lines"], "at")
        if len(at) != 1:
            raise c.fail(f["at"][1], "at: give one of seconds or lines")
        if "seconds" in at:
            at_s = float(c.value(at["seconds"][1], "at.seconds", (int, float)))
            if at_s < 0:
                raise c.fail(at["seconds"][1], "at.seconds must be >= 0")
        else:
            at_lines = int(c.value(at["lines"][1], "at.lines", int))
            if at_lines < 0:
                raise c.fail(at["lines"][1], "at.lines must be >= 0")
    duration = float(c.value(f["duration"][1], "duration", (int, float))) \
        if "duration" in f else None
    params = c.value(f["params"][1], "params", dict) if "params" in f else {}
    step = FaultStep(kind=kind, target=target, at_seconds=at_s, at_lines=at_lines,
                     duration=duration, params=params, line=node.start_mark.line + 1)
    problem = check_fault(step)
    if problem:
        raise c.fail(node, problem)
    return step


def _schedule(c: _Checker, node: yaml.Node) -> RandomSchedule:
    f = c.mapping(node, "schedule")
    c.unknown(f, ["seed", "faults", "kinds", "targets", "window_s", "max_duration_s"],
              "schedule")
    for need in ("faults", "kinds", "window_s"):
        if need not in f:
            raise c.fail(node, f"schedule needs {need!r}")
    kinds = tuple(c.value(n, "schedule.kinds[]", str)
                  for n in c.sequence(f["kinds"][1], "kinds"))
    for k, n in zip(kinds, c.sequence(f["kinds"][1], "kinds"), strict=True):
        if k not in FAULT_KINDS:
            raise c.fail(n, f"unknown fault kind {k!r} (known: {', '.join(sorted(FAULT_KINDS))})")
        if not FAULT_KINDS[k].available:
            raise c.fail(n, f"fault {k!r}: {FAULT_KINDS[k].unavailable_reason}")
    target_nodes = c.sequence(f["targets"][1], "targets") if "targets" in f else []
    targets = tuple(c.value(n, "schedule.targets[]", str) for n in target_nodes)
    for k, n in zip(kinds, c.sequence(f["kinds"][1], "kinds"), strict=True):
        ftype = FAULT_KINDS[k]
        if ftype.targeted and not ftype.targets_among(targets):
            raise c.fail(n, f"fault {k!r} needs a target starting with "
                            f"{' or '.join(ftype.target_prefixes)} in schedule.targets")
    for t, n in zip(targets, target_nodes, strict=True):
        if not any(FAULT_KINDS[k].targeted and FAULT_KINDS[k].targets_among([t])
                   for k in kinds):
            raise c.fail(n, f"target {t!r} suits none of the schedule's kinds")
        for prefix in ("etcd:", "node:"):
            if t.startswith(prefix) and not t[len(prefix):].isdigit():
                raise c.fail(n, f"target {t!r}: {prefix}<index>")
    window = c.value(f["window_s"][1], "window_s", list)
    if len(window) != 2 or not all(isinstance(x, int | float) for x in window) \
            or not 0 <= window[0] < window[1]:
        raise c.fail(f["window_s"][1], "window_s must be [start, end] seconds, start < end")
    count = int(c.value(f["faults"][1], "faults", int))
    if not 1 <= count <= 50:
        raise c.fail(f["faults"][1], "faults must be 1..50")
    seed = int(c.value(f["seed"][1], "seed", int)) if "seed" in f else 0
    max_d = float(c.value(f["max_duration_s"][1], "max_duration_s", (int, float))) \
        if "max_duration_s" in f else 3.0
    return RandomSchedule(seed=seed, count=count, kinds=kinds, targets=targets,
                          window_s=(float(window[0]), float(window[1])), max_duration_s=max_d)


def _invariant(c: _Checker, node: yaml.Node) -> InvariantSpec:
    params: dict[str, Any]
    if isinstance(node, yaml.ScalarNode):
        name, params = c.value(node, "an invariant", str), {}
    else:
        f = c.mapping(node, "an invariant")
        if len(f) != 1:
            raise c.fail(node, "an invariant is a name, or {name: {params}}")
        (name, (_, pnode)), = f.items()
        params = c.value(pnode, f"{name} parameters", dict) if not (
            isinstance(pnode, yaml.ScalarNode) and pnode.value in ("", "null", "~")) else {}
    if name not in INVARIANTS:
        raise c.fail(node, f"unknown invariant {name!r} (known: {', '.join(sorted(INVARIANTS))})")
    if name not in _AVAILABLE_INVARIANTS:
        raise c.fail(node, f"invariant {name!r} needs a capability that is not built yet: "
                           f"{INVARIANTS[name]}")
    allowed = {"rpo": {"max_lost"}, "recovery_time": {"max_seconds"},
               "replication_lag": {"max_seconds"}}.get(name, set())
    for k in params:
        if k not in allowed:
            raise c.fail(node, f"invariant {name}: unknown parameter {k!r}")
    if name in ("recovery_time", "replication_lag") and "max_seconds" not in params:
        raise c.fail(node, f"invariant {name} needs max_seconds")
    return InvariantSpec(name, params, node.start_mark.line + 1)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; `InvalidScenario` names file and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidScenario(str(p), None, f"cannot read: {e.strerror}") from e
    return parse_scenario(text, source=str(p))


def scenario_to_yaml(s: Scenario) -> str:
    """A scenario file that reproduces `s` (its method as a fixed timeline)."""
    job = dict(vars(s.job))
    doc: dict[str, Any] = {"title": s.title, "description": s.description, "job": job}
    if s.steady_state:
        doc["steady_state"] = [
            {"probe": c.probe,
             ("min_events_per_s" if c.probe == "throughput" else "max_seconds"): c.threshold,
             "window_s": c.window_s} for c in s.steady_state]
    doc["method"] = [step.to_yaml() for step in s.method]
    if s.abort:
        doc["abort"] = [{"probe": a.probe, ("seconds" if a.probe == "no_progress" else "max"):
                         a.limit if a.probe == "no_progress" else int(a.limit)} for a in s.abort]
    doc["invariants"] = [i.name if not i.params else {i.name: dict(i.params)}
                         for i in s.invariants]
    return yaml.safe_dump(doc, sort_keys=False)
