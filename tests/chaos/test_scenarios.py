"""Scenario files: every shipped one validates; a bad one is refused with file, line, reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chaos import FAULT_KINDS, InvalidScenario, load_scenario, parse_scenario, scenario_to_yaml
from chaos._explore import schedules
from chaos._faults import check_fault
from resilience.cli import main

SCENARIOS = sorted((Path(__file__).resolve().parents[2] / "scenarios").glob("*.yaml"))
REQUIRED = ["actor-crash", "repeated-crashes", "coordinator-crash", "node-loss",
            "sink-crash-mid-commit", "storage-full", "corrupt-checkpoint", "etcd-member-loss",
            "java-actor-crash"]


def test_the_required_scenarios_ship() -> None:
    names = {p.stem for p in SCENARIOS}
    assert set(REQUIRED) <= names, sorted(set(REQUIRED) - names)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_shipped_scenario_validates_and_round_trips(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.invariants
    assert scenario.plan(0) or scenario.schedule is not None
    again = parse_scenario(scenario_to_yaml(scenario.with_method(scenario.plan(3))))
    assert [s.to_yaml() for s in again.plan(0)] == [s.to_yaml() for s in scenario.plan(3)]
    assert again.job == scenario.job
    assert again.invariants == tuple(
        type(i)(i.name, i.params, again.invariants[n].line)
        for n, i in enumerate(scenario.invariants))


BAD = [
    ("title: x\ninvariants: [exactly_once]\nmethod:\n  - {fault: explode, at: {seconds: 1}}\n",
     4, "unknown fault kind 'explode'"),
    ("title: x\ninvariants: [exactly_once]\nmethod:\n  - {fault: kill, at: {seconds: 1}}\n",
     4, "needs a target"),
    ("title: x\ninvariants: [exactly_once]\nmethod:\n  - {fault: pause, target: 'task:a', "
     "at: {seconds: 1}}\n", 4, "needs a duration"),
    ("title: x\njob: {events: 10}\ninvariants: [exactly_once]\n", 2, "job.events must be"),
    ("title: x\njob: {colour: red}\ninvariants: [exactly_once]\n", 2, "unknown key 'colour'"),
    ("title: x\ninvariants: [consistency]\n", 2, "unknown invariant 'consistency'"),
    ("title: x\ninvariants: []\n", 2, "is empty"),
    ("title: x\n", 1, "missing 'invariants'"),
    ("title: x\ninvariants: [exactly_once]\nmethod:\n  - {fault: site_loss, "
     "at: {seconds: 1}}\n", 4, "needs a job on two sites"),
    ("title: x\ninvariants: [{replication_lag: {max_seconds: 1}}]\n", 2, "needs a job on two"),
    ("title: x\ninvariants: [rollback_time]\n", 2, "not built yet"),
    ("title: x\njob: {sites: 2}\ninvariants: [exactly_once]\nmethod:\n  - {fault: kill, "
     "target: 'task:a', at: {seconds: 1}}\n", 5, "acts inside one site"),
    ("title: x\njob: {sites: 2}\ninvariants: [exactly_once]\nmethod:\n  - {fault: site_loss, "
     "at: {seconds: 1}}\n  - {fault: switchover, at: {seconds: 2}}\n", 5, "exactly one fault"),
    ("title: x\njob: {sites: 2}\ninvariants: [exactly_once]\n", 2, "exactly one fault, got 0"),
    ("title: x\njob: {sites: 2, kind: keyed_sums}\ninvariants: [exactly_once]\nmethod:\n"
     "  - {fault: site_loss, at: {seconds: 1}}\n", 2, "is the payments job"),
    ("title: x\njob: {sites: 2}\ninvariants: [exactly_once]\nmethod:\n  - {fault: "
     "replication_partition, at: {seconds: 1}, duration: 1}\n", 5, "lasts at least 4s"),
    ("title: x\njob: {sites: 2}\ninvariants: [exactly_once]\nmethod:\n  - {fault: "
     "site_loss, at: {seconds: 1}, params: {mode: eventual}}\n", 5, "mode must be sync or"),
    ("title: x\njob: {sites: 2}\ninvariants: [exactly_once]\nmethod:\n  - {fault: "
     "site_loss, at: {seconds: 1}}\nabort:\n  - {probe: no_progress}\n", 6, "takes no abort"),
    ("title: x\njob: {sites: 3}\ninvariants: [exactly_once]\n", 2, "job.sites must be 1 or 2"),
    ("title: [unclosed\n", 2, "not valid YAML"),
    ("title: x\ninvariants: [exactly_once]\nmethod:\n  - {fault: kill, target: 'task:a', "
     "at: {seconds: 1, lines: 4}}\n", 4, "give one of seconds or lines"),
    ("title: x\ninvariants: [exactly_once]\nsteady_state:\n  - {probe: latency}\n", 4,
     "unknown steady-state probe"),
    ("title: x\ninvariants: [exactly_once]\nmethod: []\nschedule: {faults: 1}\n", 4,
     "schedule needs 'kinds'"),
    ("title: x\ninvariants: [exactly_once]\nmethod:\n  - {fault: clock_skew, target: coordinator, "
     "duration: 2, at: {seconds: 1}}\n", 4, "clock_skew needs params rate"),
    ("title: x\ninvariants: [exactly_once]\nmethod:\n  - {fault: clock_skew, target: coordinator, "
     "duration: 2, at: {seconds: 1}, params: {rate: -2}}\n", 4, "rate must be >= 0"),
    ("title: x\ninvariants: [exactly_once]\nmethod:\n  - {fault: clock_skew, target: coordinator, "
     "duration: 2, at: {seconds: 1}, params: {rate: fast}}\n", 4, "rate must be a number"),
    ("title: x\ninvariants: [exactly_once]\nmethod:\n  - {fault: clock_skew, target: 'etcd:0', "
     "duration: 2, at: {seconds: 1}, params: {rate: 2}}\n", 4, "must start with task: or coord"),
    ("title: x\ninvariants: [exactly_once]\nschedule:\n  faults: 1\n  kinds:\n    - kill\n"
     "    - etcd_pause\n  targets: ['task:*']\n  window_s: [0, 1]\n", 7,
     "fault 'etcd_pause' needs a target starting with etcd: in schedule.targets"),
    ("title: x\ninvariants: [exactly_once]\nschedule:\n  faults: 1\n  kinds: [etcd_kill]\n"
     "  targets:\n    - etcd:0\n    - 'etcd:one'\n  window_s: [0, 1]\n", 8,
     "target 'etcd:one': etcd:<index>"),
    ("title: x\ninvariants: [exactly_once]\nschedule:\n  faults: 1\n  kinds: [kill]\n"
     "  targets:\n    - coordinator\n    - etcd:0\n  window_s: [0, 1]\n", 8,
     "target 'etcd:0' suits none of the schedule's kinds"),
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD)
def test_a_bad_scenario_names_file_line_and_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(InvalidScenario) as info:
        parse_scenario(text, source="bad.yaml")
    assert info.value.line == line, str(info.value)
    assert reason in str(info.value)
    assert str(info.value).startswith(f"bad.yaml:{line}: ")


def test_the_cli_refuses_an_invalid_file_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD[0][0])
    assert main(["chaos", "run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: unknown fault kind 'explode'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("option", ["--json", "--html"])
def test_a_report_into_a_missing_directory_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    path = Path(__file__).resolve().parents[2] / "scenarios" / "actor-crash.yaml"
    target = tmp_path / "missing" / "report.out"
    assert main(["chaos", "run", str(path), option, str(target),
                 "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert f"error: {option}: the directory {target.parent} of report.out does not exist" in err
    assert not (tmp_path / "w").exists()  # nothing started


def test_dry_run_prints_the_plan_and_injects_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(__file__).resolve().parents[2] / "scenarios" / "random-kills.yaml"
    assert main(["chaos", "run", str(path), "--seed", "5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing injected" in out
    assert out.count("  - ") == 3  # the three faults drawn from seed 5


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000))
def test_a_random_schedule_replays_from_its_seed(seed: int) -> None:
    path = Path(__file__).resolve().parents[2] / "scenarios" / "random-kills.yaml"
    scenario = load_scenario(path)
    assert scenario.plan(seed) == scenario.plan(seed)
    for step in scenario.plan(seed):
        assert step.kind in FAULT_KINDS
        assert 0.5 <= (step.at_seconds or 0) <= 6


MIXED = parse_scenario("""
title: mixed targets
invariants: [exactly_once]
schedule:
  faults: 6
  kinds: [kill, etcd_pause, storage, etcd_kill, clock_skew]
  targets: ["task:*", coordinator, "etcd:0", "etcd:2"]
  window_s: [0.5, 3]
""", source="mixed.yaml")


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000))
def test_a_random_schedule_gives_each_fault_a_target_of_its_own_kind(seed: int) -> None:
    steps = MIXED.plan(seed)
    assert len(steps) == 6
    for step in steps:
        assert check_fault(step) is None, step
        if step.kind.startswith("etcd_"):
            assert step.target in ("etcd:0", "etcd:2")


@settings(max_examples=50, deadline=None)
@given(schedules(MIXED))
def test_explored_schedules_give_each_fault_a_target_of_its_own_kind(steps: list[Any]) -> None:
    for step in steps:
        assert check_fault(step) is None, step


@pytest.mark.parametrize("command", ["run", "explore"])
def test_a_workdir_with_an_earlier_run_is_refused_before_anything_starts(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A new job would append to the earlier run's ledger (the checker would count every
    # event twice), so the runner refuses rather than mixing two experiments.
    earlier = tmp_path / "runs"
    (earlier / ("job" if command == "run" else "run-001")).mkdir(parents=True)
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / (
        "actor-crash.yaml" if command == "run" else "random-campaign.yaml")
    runs = ["--runs", "3"] if command == "explore" else []
    assert main(["chaos", command, str(scenario), "--workdir", str(earlier), *runs]) == 2
    err = capsys.readouterr().err
    assert f"workdir {earlier}" in err
    assert "holds an earlier" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in earlier.iterdir()) == (
        ["job"] if command == "run" else ["run-001"])  # nothing written, nothing started


def test_a_two_site_schedule_draws_every_case_of_fault_mode_and_failback() -> None:
    scenario = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" /
                             "random-sites.yaml")
    cases = set()
    for seed in range(300):
        (step,) = scenario.plan(seed)
        cases.add((step.kind, step.params["mode"], step.params["failback"]))
        if step.kind == "replication_partition":
            assert step.duration is not None
            assert 4 <= step.duration <= 8
        assert check_fault(step) is None
    assert len(cases) == 12, sorted(cases)


def test_a_two_site_step_becomes_the_drill_it_describes(tmp_path: Path) -> None:
    from chaos._environment import RunOptions
    from chaos._sites_run import drill_options

    scenario = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" /
                             "replication-partition.yaml")
    (step,) = scenario.plan(0)
    drill = drill_options(scenario, step, tmp_path, RunOptions(progress=False))
    assert (drill.fault, drill.mode, drill.failback, drill.partition_s) == (
        "partition", "sync", True, 6.0)
    assert drill.fault_at == 150_000 / 1_000_000
    assert drill.fault_after_s is None
    timed = scenario.with_method([type(step)(kind="site_loss", at_seconds=2.5,
                                             params={"mode": "async"})])
    drill = drill_options(timed, timed.plan(0)[0], tmp_path, RunOptions(progress=False))
    assert (drill.fault, drill.mode, drill.failback, drill.fault_after_s) == (
        "site-kill", "async", False, 2.5)
