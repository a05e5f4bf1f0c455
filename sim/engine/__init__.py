"""The discrete-event engine: replay a routing trace on a hardware model under a policy.

See docs/engine.md for the model, every rule and every metric.
"""

from sim.engine.closed_form import StatelessTimes, stateless_layer_times
from sim.engine.cost import RooflineCost
from sim.engine.results import (
    PER_LAYER_COLUMNS,
    PER_STEP_COLUMNS,
    RunResult,
    TimelineEvent,
)
from sim.engine.simulate import run_engine, simulate
from sim.engine.source import Idle, Iteration, IterationSource, LockstepSource
from sim.engine.timeline import write_chrome_trace

__all__ = [
    "PER_LAYER_COLUMNS",
    "PER_STEP_COLUMNS",
    "Idle",
    "Iteration",
    "IterationSource",
    "LockstepSource",
    "RooflineCost",
    "RunResult",
    "StatelessTimes",
    "TimelineEvent",
    "run_engine",
    "simulate",
    "stateless_layer_times",
    "write_chrome_trace",
]
