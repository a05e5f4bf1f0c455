"""Policy-comparison sweeps: a scenario plus a ``sweep:`` block of grid/zip axes and repeats.

``load_sweep`` parses the file, ``expand`` lists its points, ``validate_points`` checks every
point's scenario before anything runs, and ``run_sweep`` runs them (in-process, a local process
pool or Dask), writing each finished point at once and one tidy table at the end.
"""

from sim.sweep.executors import EXECUTORS, default_jobs, execute
from sim.sweep.run import (
    PointOutcome,
    PointTask,
    SweepReport,
    default_out_dir,
    run_point,
    run_sweep,
)
from sim.sweep.spec import (
    SweepAxis,
    SweepPoint,
    SweepSpec,
    expand,
    load_sweep,
    point_document,
    point_id,
    sweep_from_dict,
    validate_points,
)

__all__ = [
    "EXECUTORS",
    "PointOutcome",
    "PointTask",
    "SweepAxis",
    "SweepPoint",
    "SweepReport",
    "SweepSpec",
    "default_jobs",
    "default_out_dir",
    "execute",
    "expand",
    "load_sweep",
    "point_document",
    "point_id",
    "run_point",
    "run_sweep",
    "sweep_from_dict",
    "validate_points",
]
