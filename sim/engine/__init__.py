"""The discrete-event engine: replay a routing trace on a hardware model under a policy."""

from sim.engine.cost import RooflineCost
from sim.engine.results import (
    PER_LAYER_COLUMNS,
    PER_STEP_COLUMNS,
    RunResult,
    TimelineEvent,
)
from sim.engine.simulate import simulate

__all__ = [
    "PER_LAYER_COLUMNS",
    "PER_STEP_COLUMNS",
    "RooflineCost",
    "RunResult",
    "TimelineEvent",
    "simulate",
]
