"""Policy-comparison sweeps: a scenario plus a ``sweep:`` block of grid/zip axes and repeats.

``load_sweep`` parses the file, ``expand`` lists its points, ``validate_points`` checks every
point's scenario before anything runs, and ``run_sweep`` runs them (in-process, a local process
pool or Dask), writing each finished point at once and one tidy table at the end.
"""

from sim.sweep.executors import EXECUTORS, Session, default_jobs, execute
from sim.sweep.run import (
    PointOutcome,
    PointTask,
    SweepReport,
    cached_trace,
    default_out_dir,
    finished_ids,
    prepare_dir,
    read_rows,
    run_point,
    run_sweep,
    write_point,
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
    "Session",
    "SweepAxis",
    "SweepPoint",
    "SweepReport",
    "SweepSpec",
    "cached_trace",
    "default_jobs",
    "default_out_dir",
    "execute",
    "expand",
    "finished_ids",
    "load_sweep",
    "point_document",
    "point_id",
    "prepare_dir",
    "read_rows",
    "run_point",
    "run_sweep",
    "sweep_from_dict",
    "validate_points",
    "write_point",
]
