"""Scenario files: load and validate a YAML scenario, build the engine's inputs, run, save.

See docs/scenarios.md. The public names are re-exported here (CONTRACTS.md).
"""

from __future__ import annotations

from sim.scenario.build import (
    OutputSpec,
    PolicySpec,
    Scenario,
    TraceSpec,
    load_scenario,
    load_scenario_trace,
    scenario_from_dict,
    set_dotted,
)
from sim.scenario.run import run_scenario, write_results

__all__ = [
    "OutputSpec",
    "PolicySpec",
    "Scenario",
    "TraceSpec",
    "load_scenario",
    "load_scenario_trace",
    "run_scenario",
    "scenario_from_dict",
    "set_dotted",
    "write_results",
]
