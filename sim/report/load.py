"""Read result directories into plain columnar data for the report.

Three kinds of directory feed a report, each recognised by the files it holds:

- a run (``summary.csv``, ``per_layer.csv``, ``per_step.csv``, ``scenario.resolved.yaml``,
  ``trace.json``, optionally ``timeline.json``), written by ``moesim run``;
- a sweep (``sweep.csv``, ``sweep.resolved.yaml``), written by ``moesim sweep``;
- trace statistics (``gating.csv``, ``meta.json``), written by ``moesim trace stats``;
- a search (``search.csv``, ``search.json``), written by ``moesim search``.

Tables are read with the ``csv`` module into numpy columns: numbers become float64 (blank cells
NaN), ``True``/``False`` columns become bool, anything else stays text. Every problem is a
one-line ``UserError`` naming the file.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sim import opener
from sim.errors import UserError, one_line
from sim.stats.counts import GATING_COLUMNS
from sim.yamlio import read_yaml as load_yaml_file

SUMMARY_REQUIRED = ("label", "policy", "topk", "mean_step")
PER_LAYER_REQUIRED = ("label", "policy", "topk", "step", "layer", "active")
PER_STEP_REQUIRED = ("label", "policy", "topk", "step", "latency")
LINK_USAGE_REQUIRED = ("label", "topk", "link", "t_start", "t_end", "utilisation")
SWEEP_REQUIRED = ("label", "topk")
REQUESTS_REQUIRED = ("label", "topk", "arrival", "first_token", "finish", "output_tokens")
ITERATIONS_REQUIRED = ("label", "topk", "t_start", "t_end", "kv_bytes")
MAX_RESULTS_BYTES = 2**31  # one results file read back (per_step.csv of a long run: ~100 MB)
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})


@dataclass(frozen=True)
class Table:
    """A CSV table as named numpy columns of equal length (header order kept)."""

    columns: Mapping[str, np.ndarray]
    source: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise UserError(f"{self.source}: expected a column {name!r}, got none") from None

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.columns)

    def rows(self, mask: np.ndarray) -> Table:
        """The rows where ``mask`` is true (or at the given indices)."""
        return Table({k: v[mask] for k, v in self.columns.items()}, self.source)

    def where(self, **equals: Any) -> Table:
        """The rows whose columns equal the given values, e.g. ``where(label="lru", topk=2)``."""
        mask = np.ones(len(self), dtype=bool)
        for name, value in equals.items():
            mask &= self[name] == value
        return self.rows(mask)

    def unique(self, name: str) -> list[Any]:
        """Distinct values of a column in first-seen order, as plain Python values."""
        values = self[name]
        _, first = np.unique(values, return_index=True)
        return [plain_value(values[i]) for i in sorted(first)]


@dataclass(frozen=True)
class TimelineEvents:
    """Complete ("X") events of a Chrome trace-event file, one array per field, in seconds."""

    label: np.ndarray  # policy label (the trace's process)
    resource: np.ndarray  # "pcie[0]", "md_link[1]", "gpu", "md", "host" (the trace's thread;
    #                       "gpu1/pcie[0]" etc. in a run of several GPUs)
    kind: np.ndarray  # "fetch", "prefetch", "activation", "compute", "non_expert"
    start: np.ndarray  # s
    end: np.ndarray  # s
    step: np.ndarray  # int, -1 when unknown
    layer: np.ndarray  # int, -1 when unknown
    expert: np.ndarray  # int, -1 for layer-level events
    topk: np.ndarray  # int, -1 when the event does not say
    process: np.ndarray  # the trace's pid, as text

    def __len__(self) -> int:
        return len(self.start)

    def rows(self, mask: np.ndarray) -> TimelineEvents:
        return TimelineEvents(**{k: getattr(self, k)[mask] for k in _EVENT_FIELDS})

    @property
    def link(self) -> np.ndarray:
        """The resource without its channel index: ``pcie[1]`` -> ``pcie``."""
        # "gpu1/pcie[0]" (a run of several GPUs) is link "pcie" too
        return np.array(
            [r.rsplit("/", 1)[-1].split("[", 1)[0] for r in self.resource], dtype=object
        )


_EVENT_FIELDS = (
    "label",
    "resource",
    "kind",
    "start",
    "end",
    "step",
    "layer",
    "expert",
    "topk",
    "process",
)


@dataclass(frozen=True)
class RunResults:
    """One ``moesim run`` results directory."""

    path: Path
    summary: Table
    per_layer: Table | None
    per_step: Table | None
    scenario: dict[str, Any]
    trace: dict[str, Any] | None
    timeline: TimelineEvents | None
    timeline_path: Path
    requests: Table | None = None  # requests.csv of a serving run
    iterations: Table | None = None  # per_iteration.csv of a serving run
    link_usage: Table | None = None  # link_usage.csv (runs since issue 21)

    @property
    def baseline(self) -> str | None:
        """The baseline label: the summary's ``is_baseline`` row, else the scenario's ``baseline``."""
        if "is_baseline" in self.summary:
            flagged = self.summary.rows(self.summary["is_baseline"].astype(bool))
            if len(flagged):
                return str(flagged["label"][0])
        name = self.scenario.get("baseline")
        return str(name) if name is not None else None

    def bound_labels(self) -> set[str]:
        return bound_labels(self.summary)

    def kinds(self) -> dict[str, str]:
        return label_kinds(self.summary)


@dataclass(frozen=True)
class SweepResults:
    """One ``moesim sweep`` output directory."""

    path: Path
    table: Table
    fields: tuple[str, ...]  # the swept fields (dotted paths), in column order
    resolved: dict[str, Any]
    baseline: str | None

    @property
    def axes(self) -> tuple[str, ...]:
        """The swept fields to plot against: ``policies`` is already the label column."""
        return tuple(f for f in self.fields if f != "policies")


@dataclass(frozen=True)
class StatsResults:
    """One ``moesim trace stats`` output directory."""

    path: Path
    gating: Table
    meta: dict[str, Any]


@dataclass(frozen=True)
class SearchResults:
    """One ``moesim search`` output directory: every evaluated point and the answers."""

    path: Path
    table: Table  # search.csv
    answers: dict[str, Any]  # search.json, checked by sim.report.search.check_answers
    resolved: dict[str, Any]  # search.resolved.yaml (may be empty)


Results = RunResults | SweepResults | StatsResults | SearchResults


def read_table(path: Path, required: Sequence[str] = ()) -> Table:
    """Read a CSV file into a ``Table``; ``required`` columns must be present."""
    text = opener.read_text(path, "a CSV table", limit=MAX_RESULTS_BYTES)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        rows = list(reader)
    except csv.Error as err:
        raise UserError(f"{path}: expected a CSV table, got {err}") from None
    if not header:
        raise UserError(f"{path}: expected a CSV header row, got an empty file")
    if len(set(header)) != len(header):
        raise UserError(f"{path}: expected unique column names, got {header}")
    missing = [c for c in required if c not in header]
    if missing:
        raise UserError(f"{path}: expected columns {list(required)}, missing {missing}")
    bad = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if bad is not None:
        raise UserError(
            f"{path}: expected {len(header)} cells in every row, got {len(rows[bad])} on line {bad + 2}"
        )
    cells = list(zip(*rows)) if rows else [() for _ in header]
    return Table(
        {name: checked_column(path, name, values) for name, values in zip(header, cells)},
        str(path),
    )


@dataclass(frozen=True)
class ColumnRule:
    """What a results column written by moesim holds: ``int``, ``float``, ``bool`` or
    ``text``; numbers finite within ``[lo, hi]``; ``blank`` when an empty cell is allowed."""

    kind: str
    lo: float = -math.inf
    hi: float = math.inf
    blank: bool = False


@functools.cache
def column_rules() -> dict[str, ColumnRule]:
    """The rule of every column the writers define (their own column lists, so a column they
    add is checked too): counts and indices are integers >= 0, times, bytes and rates finite
    numbers >= 0, shares in [0, 1], flags True/False, names text."""
    from sim.engine.results import INT_COLUMNS, PER_LAYER_COLUMNS, PER_STEP_COLUMNS, TOTAL_KEYS
    from sim.scenario.run import SUMMARY_COLUMNS

    # A blank cell is what the writers put for "does not apply" (None, NaN); it is refused only
    # in the columns every row has (the keys, the counts and the step latency).
    # Ranges only where they are definitional (times and bytes are never negative, a stall
    # and the compute it is measured from included: docs/engine.md, a rate is a share); other
    # measures (a gap closed) are any finite number.
    count = ColumnRule("int", 0, 2**53)
    measure = ColumnRule("float", blank=True)
    rules = {name: measure for name in (*TOTAL_KEYS, *PER_STEP_COLUMNS, *PER_LAYER_COLUMNS)}
    rules.update({name: count for name in (*INT_COLUMNS, *GATING_COLUMNS, "point", "repeat")})
    rules.update({n: ColumnRule("float", blank=True) for n in SUMMARY_COLUMNS if n not in rules})
    rules.update({name: ColumnRule("float", 0) for name in ("mean_step", "latency", "total_time")})
    never_negative = ColumnRule("float", 0, blank=True)
    rules.update({n: never_negative for n in rules if n.startswith(("bytes_", "p50", "p99"))})
    rules.update({n: never_negative for n in ("stall", "compute_only")})
    rules.update(
        label=ColumnRule("text"),
        policy=ColumnRule("text"),
        kind=ColumnRule("text"),
        point_id=ColumnRule("text"),
        is_bound=ColumnRule("bool"),
        is_baseline=ColumnRule("bool"),
        topk=ColumnRule("int", 1, 2**15),
        seed=ColumnRule("int", 0, 2**63),
        hit_rate=ColumnRule("float", 0, 1),
        speedup=ColumnRule("float", 0, blank=True),
        gap_closed=ColumnRule("float", blank=True),
        cycles=ColumnRule("float", 0),
    )
    return rules


def checked_column(path: Path, name: str, values: Sequence[str]) -> np.ndarray:
    """A column read back, checked against its rule (columns without one are inferred): the
    first bad cell is refused naming the file, its line and the column."""
    rule = column_rules().get(name)
    if rule is None or rule.kind == "text":
        return _column(values) if rule is None else np.array(values, dtype=object)
    if rule.kind == "bool":
        bad = next((i for i, v in enumerate(values) if v not in _TRUE | _FALSE), None)
        if bad is not None:
            raise _cell_error(path, bad, name, "True or False", values[bad])
        return np.array([v in _TRUE for v in values], dtype=bool)
    blank = np.array([not v.strip() for v in values], dtype=bool)
    try:
        out = np.array([v if v.strip() else "nan" for v in values], dtype=np.float64)
    except ValueError:  # text in a number column: find the cell for the message
        bad = next(i for i, v in enumerate(values) if v.strip() and not _is_number(v))
        raise _cell_error(path, bad, name, _expected(rule), values[bad]) from None
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(out) & (out >= rule.lo) & (out <= rule.hi)
        if rule.kind == "int":
            ok &= out == np.floor(out)
    ok |= blank & rule.blank
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise _cell_error(path, bad, name, _expected(rule), values[bad])
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _expected(rule: ColumnRule) -> str:
    what = "an integer" if rule.kind == "int" else "a finite number"
    if rule.lo > -math.inf and rule.hi < math.inf:
        what += f" in [{rule.lo:g}, {rule.hi:g}]"
    elif rule.lo > -math.inf:
        what += f" >= {rule.lo:g}"
    return what + (" or blank" if rule.blank else "")


def _cell_error(path: Path, index: int, name: str, expected: str, found: str) -> UserError:
    shown = repr(found[:40]) if found.strip() else "a blank cell"
    return UserError(f"{path}: line {index + 2}, column {name}: expected {expected}, got {shown}")


def _column(values: Sequence[str]) -> np.ndarray:
    """Numbers as float64 (blank -> NaN), booleans as bool, anything else as text."""
    distinct = set(values)
    if distinct and distinct <= (_TRUE | _FALSE):
        return np.array([v in _TRUE for v in values], dtype=bool)
    try:
        return np.array([v if v.strip() else "nan" for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=object)


def read_json(path: Path) -> Any:
    text = opener.read_text(path, "a JSON file", limit=MAX_RESULTS_BYTES)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as err:
        raise UserError(f"{path}: expected JSON, got {one_line(err, 200)}") from None


def read_yaml(path: Path) -> dict[str, Any]:
    data = load_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    return data


def read_timeline(path: Path) -> TimelineEvents:
    """Read a Chrome trace-event file (JSON object with ``traceEvents``, or a bare list).

    Only complete events (``ph == "X"``) are kept; ``ts``/``dur`` are microseconds. Process and
    thread ids may be names already, or numbers named by ``process_name``/``thread_name``
    metadata events, as Perfetto expects.
    """
    return timeline_events(path, read_json(path))


def timeline_events(path: Path, data: Any) -> TimelineEvents:
    """`read_timeline` on JSON already read from ``path`` (named in errors)."""
    events = data.get("traceEvents") if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise UserError(f"{path}: expected a trace-event list or {{'traceEvents': [...]}}")
    process_names: dict[Any, str] = {}
    thread_names: dict[tuple[Any, Any], str] = {}
    complete: list[dict[str, Any]] = []
    for event in events:
        if not isinstance(event, dict):
            raise UserError(f"{path}: expected every trace event to be an object, got {event!r}")
        phase = event.get("ph")
        name = (event.get("args") or {}).get("name")
        if phase == "M" and event.get("name") == "process_name" and name is not None:
            # moesim names a process "label top-k" and gives the plain label in args.label
            process_names[event.get("pid")] = str(event["args"].get("label", name))
        elif phase == "M" and event.get("name") == "thread_name" and name is not None:
            thread_names[(event.get("pid"), event.get("tid"))] = str(name)
        elif phase == "X":
            complete.append(event)
    try:
        return _events_to_columns(complete, process_names, thread_names)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"{path}: expected 'X' events with numeric ts/dur and pid/tid, got a bad field ({err})"
        ) from None


def _events_to_columns(
    events: Iterable[dict[str, Any]],
    process_names: Mapping[Any, str],
    thread_names: Mapping[tuple[Any, Any], str],
) -> TimelineEvents:
    cols: dict[str, list[Any]] = {k: [] for k in _EVENT_FIELDS}
    for ev in events:
        args = ev.get("args") or {}
        pid, tid = ev["pid"], ev["tid"]
        start, duration = float(ev["ts"]) * 1e-6, float(ev.get("dur", 0.0)) * 1e-6
        if not (math.isfinite(start) and math.isfinite(duration) and duration >= 0):
            raise ValueError(f"ts {ev['ts']!r}, dur {ev.get('dur')!r}: expected finite, dur >= 0")
        cols["label"].append(process_names.get(pid, str(pid)))
        cols["process"].append(str(pid))
        cols["resource"].append(thread_names.get((pid, tid), str(tid)))
        cols["kind"].append(str(args.get("kind", ev.get("cat", ev.get("name", "")))))
        cols["start"].append(start)
        cols["end"].append(start + duration)
        for key in ("step", "layer", "expert", "topk"):
            value = args.get(key, -1)
            if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 2**53:
                raise ValueError(f"args.{key} {value!r}: expected an integer >= -1")
            cols[key].append(value)
    return TimelineEvents(
        label=np.array(cols["label"], dtype=object),
        resource=np.array(cols["resource"], dtype=object),
        kind=np.array(cols["kind"], dtype=object),
        start=np.array(cols["start"], dtype=np.float64),
        end=np.array(cols["end"], dtype=np.float64),
        step=np.array(cols["step"], dtype=np.int64),
        layer=np.array(cols["layer"], dtype=np.int64),
        expert=np.array(cols["expert"], dtype=np.int64),
        topk=np.array(cols["topk"], dtype=np.int64),
        process=np.array(cols["process"], dtype=object),
    )


def load_results(path: str | Path, *, timeline: str | Path | None = None) -> Results:
    """Read a run, sweep or stats directory, recognised by the files it holds."""
    root = Path(path)
    opener.check_dir(root, "a results directory")
    if opener.exists(root / "summary.csv"):
        return load_run(root, timeline=timeline)
    if opener.exists(root / "sweep.csv"):
        return load_sweep(root)
    if opener.exists(root / "gating.csv"):
        return load_stats(root)
    if (root / "search.json").is_file():
        return load_search(root)
    raise UserError(
        f"{root}: expected a results directory with summary.csv (run), sweep.csv (sweep), "
        "gating.csv (trace stats) or search.json (search), got none of them"
    )


def load_run(root: Path, *, timeline: str | Path | None = None) -> RunResults:
    summary = read_table(root / "summary.csv", SUMMARY_REQUIRED)
    per_layer_path, per_step_path = root / "per_layer.csv", root / "per_step.csv"
    present = opener.exists
    per_layer = read_table(per_layer_path, PER_LAYER_REQUIRED) if present(per_layer_path) else None
    per_step = read_table(per_step_path, PER_STEP_REQUIRED) if present(per_step_path) else None
    scenario_path, trace_path = root / "scenario.resolved.yaml", root / "trace.json"
    scenario = read_yaml(scenario_path) if present(scenario_path) else {}
    trace = read_json(trace_path) if present(trace_path) else None
    if trace is not None and not isinstance(trace, dict):
        raise UserError(f"{trace_path}: expected a JSON object, got {type(trace).__name__}")
    timeline_path = Path(timeline) if timeline is not None else root / "timeline.json"
    if timeline is not None:
        opener.check_file(timeline_path, "a timeline JSON file")
    events = None
    if opener.exists(timeline_path):
        data = read_json(timeline_path)
        events = timeline_events(timeline_path, data)
        check_timeline_belongs(root, timeline_path, data, events, summary)
        events = _with_topk(events, [int(k) for k in summary.unique("topk")])
    requests = _optional_table(root / "requests.csv", REQUESTS_REQUIRED)
    iterations = _optional_table(root / "per_iteration.csv", ITERATIONS_REQUIRED)
    usage = _optional_table(root / "link_usage.csv", LINK_USAGE_REQUIRED)
    return RunResults(
        root,
        summary,
        per_layer,
        per_step,
        scenario,
        trace,
        events,
        timeline_path,
        requests,
        iterations,
        usage,
    )


def _optional_table(path: Path, required: Sequence[str]) -> Table | None:
    return read_table(path, required) if opener.exists(path) else None


def check_timeline_belongs(
    root: Path, timeline_path: Path, data: Any, events: TimelineEvents, summary: Table
) -> None:
    """Refuse another run's timeline: its fingerprint (``otherData.scenario_sha256``, written
    by ``moesim run``) must be that of ``root``'s scenario.resolved.yaml; a timeline without
    one (older moesim, other tools) must at least hold only the summary's policy labels."""
    from sim.scenario.run import resolved_sha256

    other = data.get("otherData") if isinstance(data, dict) else None
    wanted = other.get("scenario_sha256") if isinstance(other, dict) else None
    resolved = root / "scenario.resolved.yaml"
    if isinstance(wanted, str) and opener.exists(resolved):
        if resolved_sha256(opener.read_bytes(resolved, "a resolved scenario")) != wanted:
            raise UserError(
                f"{timeline_path}: expected the timeline of the run in {resolved}, got one "
                f"written by another run (scenario {other.get('scenario', '?')!r}, "
                f"{wanted[:19]}...); pass the timeline that run wrote"
            )
        return
    labels = {str(x) for x in summary.unique("label")}
    foreign = sorted({str(x) for x in events.label} - labels)
    if foreign:
        raise UserError(
            f"{timeline_path}: expected timelines of the policies in {summary.source or root} "
            f"({', '.join(sorted(labels))}), got other runs too ({', '.join(foreign)})"
        )


def _with_topk(events: TimelineEvents, run_order: list[int]) -> TimelineEvents:
    """Give events without a ``topk`` arg the top-k of their run.

    A run with several top-k values has one trace process per (top-k, label), all named by the
    label; ``write_results`` writes runs top-k-major, in the order of summary.csv, so a label's
    i-th process (by pid) is its run at the i-th top-k of that order.
    """
    if (events.topk >= 0).any() or len(run_order) < 2:
        return events
    topk = events.topk.copy()
    for label in np.unique(events.label):
        mine = events.label == label
        pids = sorted(set(events.process[mine]), key=_pid_order)
        if len(pids) != len(run_order):
            continue
        for pid, k in zip(pids, run_order):
            topk[mine & (events.process == pid)] = k
    return replace(events, topk=topk)


def _pid_order(pid: str) -> tuple[int, str]:
    return (int(pid), "") if pid.lstrip("-").isdigit() else (0, pid)


def load_sweep(root: Path) -> SweepResults:
    table = read_table(root / "sweep.csv", SWEEP_REQUIRED)
    resolved_path = root / "sweep.resolved.yaml"
    resolved = read_yaml(resolved_path) if opener.exists(resolved_path) else {}
    fields = swept_fields(table, resolved)
    scenario = resolved.get("scenario")
    baseline = scenario.get("baseline") if isinstance(scenario, Mapping) else None
    if "is_baseline" in table:
        flagged = table["label"][table["is_baseline"].astype(bool)]
        baseline = str(flagged[0]) if len(flagged) else baseline
    table = _with_speedup(table, baseline, root / "sweep.csv")
    return SweepResults(root, table, fields, resolved, None if baseline is None else str(baseline))


def swept_fields(table: Table, resolved: Mapping[str, Any]) -> tuple[str, ...]:
    """The swept fields: columns named in the resolved ``sweep:`` block's grid and zip groups,
    else the dotted columns that are not results."""
    block = resolved.get("sweep")
    named: set[str] = set()
    if isinstance(block, Mapping):
        grid, zips = block.get("grid"), block.get("zip")
        groups = [grid, *(zips if isinstance(zips, list) else [zips])]
        for group in groups:
            if isinstance(group, Mapping):
                named |= {str(k) for k in group}
    if named & set(table.names):
        return tuple(c for c in table.names if c in named)
    return tuple(c for c in table.names if "." in c)  # swept fields are dotted paths; results not


def _with_speedup(table: Table, baseline: Any, where: Path) -> Table:
    """Add ``speedup`` (baseline mean_step / mean_step per point) when the sweep lacks it."""
    if "speedup" in table:
        return table
    if baseline is None or not {"point", "mean_step"} <= set(table.names):
        raise UserError(
            f"{where}: expected a 'speedup' column (or 'point', 'mean_step' and a baseline), got none"
        )
    base_rows = table.where(label=str(baseline))
    base = {
        (p, k): m for p, k, m in zip(base_rows["point"], base_rows["topk"], base_rows["mean_step"])
    }
    speedup = np.array(
        [
            base.get((p, k), np.nan) / m if m > 0 else np.nan
            for p, k, m in zip(table["point"], table["topk"], table["mean_step"])
        ],
        dtype=np.float64,
    )
    return Table({**table.columns, "speedup": speedup}, table.source)


def load_stats(root: Path) -> StatsResults:
    gating = read_table(root / "gating.csv", GATING_COLUMNS)
    meta_path = root / "meta.json"
    meta = read_json(meta_path) if opener.exists(meta_path) else {}
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    return StatsResults(root, gating, meta)


def load_search(root: Path) -> SearchResults:
    from sim.report.search import check_answers

    path = root / "search.json"
    answers = check_answers(path, read_json(path))
    paths = [f["path"] for f in answers["question"]["fields"]]
    table = read_table(root / "search.csv", ("policy", *paths))
    resolved_path = root / "search.resolved.yaml"
    resolved = read_yaml(resolved_path) if resolved_path.is_file() else {}
    return SearchResults(root, table, answers, resolved)


def bound_labels(table: Table) -> set[str]:
    """Labels flagged ``is_bound`` (offline bounds) in a summary or sweep table."""
    return {label for label, kind in label_kinds(table).items() if kind == "bound"}


def label_kinds(table: Table) -> dict[str, str]:
    """Each label's run kind (``online``, ``oracle``, ``bound``) in a summary or sweep table;
    tables written before the ``kind`` column: ``bound`` where ``is_bound``, else ``online``.
    A label with several kinds (a sweep that profiles some points elsewhere) takes the least
    online one."""
    rank = {"online": 0, "oracle": 1, "bound": 2}
    kinds: dict[str, str] = {}
    for i, label in enumerate(table["label"]):
        if "kind" in table and str(table["kind"][i]) in rank:
            kind = str(table["kind"][i])
        elif "is_bound" in table and bool(table["is_bound"][i]):
            kind = "bound"
        else:
            kind = "online"
        current = kinds.get(str(label), "online")
        kinds[str(label)] = kind if rank[kind] >= rank[current] else current
    return kinds


def offline_labels(table: Table) -> set[str]:
    """Labels that are not online (oracles and bounds): never "best online"."""
    return {label for label, kind in label_kinds(table).items() if kind != "online"}


def find_key(data: Any, key: str) -> Any:
    """The first value stored under ``key`` anywhere in nested mappings (breadth-first)."""
    queue = [data]
    while queue:
        node = queue.pop(0)
        if isinstance(node, Mapping):
            if key in node:
                return node[key]
            queue.extend(node.values())
    return None


def plain_value(value: Any) -> Any:
    """A numpy scalar as a plain Python value; integral floats as int (CSV reads ints as float)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
