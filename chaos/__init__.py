"""Chaos-injection harness. Uses only the public names of `checkpoint` and `resilience`.

* `load_scenario` / `parse_scenario`: YAML scenario files, validated (file, line, reason);
* `run_scenario`: run one, inject and heal faults, check invariants, write the report;
* `explore`: Hypothesis-generated fault schedules, shrunk to a minimal failure;
* `FAULT_KINDS`, `INVARIANTS`: the vocabulary;
* `ChaosProxy`: a toxiproxy-style TCP proxy for network faults;
* `run_drill` / `DrillOptions`: a disaster-recovery drill over two sites (`resilience
  drill`); `LocalSites`: two local sites and a witness, as the drill stands them up;
* `chaos.report`: the report model, JSON and HTML.
"""

from chaos._drill import DrillError, DrillOptions, LocalSites, run_drill
from chaos._explore import ExploreResult, explore, schedules
from chaos._faults import FAULT_KINDS, SITE_FAULTS, FaultStep, FaultType
from chaos._runner import RunOptions, code_version, run_scenario
from chaos._scenario import (
    INVARIANTS,
    InvalidScenario,
    JobSpec,
    RandomSchedule,
    Scenario,
    load_scenario,
    parse_scenario,
    scenario_to_yaml,
)
from chaos.proxy import ChaosProxy

__all__ = [
    "FAULT_KINDS",
    "INVARIANTS",
    "SITE_FAULTS",
    "ChaosProxy",
    "DrillError",
    "DrillOptions",
    "ExploreResult",
    "FaultStep",
    "FaultType",
    "InvalidScenario",
    "JobSpec",
    "LocalSites",
    "RandomSchedule",
    "RunOptions",
    "Scenario",
    "code_version",
    "explore",
    "load_scenario",
    "parse_scenario",
    "run_drill",
    "run_scenario",
    "scenario_to_yaml",
    "schedules",
]
