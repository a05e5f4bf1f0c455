"""Import a NeuPIMs-style directory of per-expert cost tables and the routing they were run on.

Layout (docs/cost-tables.md; the shipped example is ``neupims-decoder-bs16``)::

    {pos}/layer{L}.txt              routing of step {pos} at MoE layer L: ``Expert <id> <count>
                                    <pct>%`` lines, most tokens first, ties by lower id
    {pos}/npu/{L}/SA_stage_E.txt    Expert Number, param_load, fc1, gelu, fc2, total compute
    {pos}/pim/{L}/SA_stage_E.txt    Expert Number, fc1, gelu, fc2, total compute, plus
                                    ``activation_movement_1/2: N cycles`` lines

``{pos}`` is ``1st``, ``2nd``, ... (step = ordinal - 1). All values are integer cycles. The
``.tsv`` files next to the tables (per-operation traces) are not read.

Malformed files are one-line `UserError`s. Two kinds of defect are *reported, not fatal*, since
the shipped data has them: a missing table file, and a table whose experts are not the cell's
active experts (the shipped ``1st/pim/4`` is a copy of ``1st/pim/3``). Each becomes a line in
``NeupimsData.defects``; the cell's table is then not used for that side (the modes that need
it skip the cell, the engine's cost model falls back to the roofline there).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim import opener
from sim.costs.table import CostTable
from sim.errors import UserError
from sim.limits import INT32_MAX, MAX_EXPERTS, checked_int, int_array
from sim.trace.cuts import ordinal_dirs
from sim.trace.routing import RoutingTrace, TraceMeta

TABLE_FILE = "SA_stage_E.txt"
NPU_COLUMNS = ("Expert Number", "param_load", "fc1", "gelu", "fc2", "total compute")
PIM_COLUMNS = ("Expert Number", "fc1", "gelu", "fc2", "total compute")
SIDES = ("npu", "pim")
MAX_TABLE_BYTES = 64 * 2**20  # one table or routing file; the shipped ones are a few kB
MAX_CYCLES = 2**53  # cycle counts stay exact as float64 (the cost model's unit)

_LAYER_FILE = re.compile(r"^layer(\d+)\.txt$")
_ROUTING_LINE = re.compile(r"^Expert\s+(\d+)\s+(\d+)\s+([0-9.]+)%\s*$")
_TOTAL_TOKENS = re.compile(r"^Total tokens:\s*(\d+)\s*$", re.M)
_EXPECTED_TOTAL = re.compile(r"^Expected total \(tokens\s*\S\s*(\d+)\):\s*(\d+)\s*$", re.M)
_ACTIVATION = re.compile(r"activation_movement_(\d+):\s*(\d+)\s*cycles")
_ACTIVATION_TOTAL = re.compile(r"^Total activation movement cycles:\s*(\d+)\s*$", re.M)
_INT_ROW = re.compile(r"^\s*\d+(\s+-?\d+)+\s*$")


# -- one file -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Routing:
    """One ``layer{L}.txt``: expert ids in file order (most tokens first) and their counts."""

    experts: np.ndarray  # int64, every listed expert (inactive ones too)
    counts: np.ndarray  # int64
    tokens: int  # "Total tokens"
    topk: int  # k of "Expected total (tokens x k)"

    @property
    def active(self) -> np.ndarray:
        """Active expert ids in file order (the README's A)."""
        return self.experts[self.counts > 0]


@dataclass(frozen=True)
class Table:
    """One ``SA_stage_E.txt``: rows by expert id (file order), the columns, activation lines."""

    experts: np.ndarray  # int64
    columns: dict[str, np.ndarray]  # column name -> int64 values aligned with experts
    activation: tuple[int, int] | None  # (movement_1, movement_2), PIM tables only


def read_routing(path: Path, num_experts: int) -> Routing:
    """Parse a routing file; every problem is a one-line `UserError` naming the file."""
    text = _read(path)
    tokens_m = _TOTAL_TOKENS.search(text)
    expected_m = _EXPECTED_TOTAL.search(text)
    if not tokens_m or not expected_m:
        raise UserError(
            f"{path}: expected 'Total tokens: N' and 'Expected total (tokens x k): M' lines, "
            "got none"
        )
    tokens = checked_int(_int(tokens_m[1], path), f"{path}: Total tokens", 1, INT32_MAX)
    where = f"{path}: Expected total (tokens x k)"
    topk = checked_int(_int(expected_m[1], path), where, 1, MAX_EXPERTS)
    expected = _int(expected_m[2], path)
    rows = [m.groups() for m in map(_ROUTING_LINE.match, text.splitlines()) if m]
    if not rows:
        raise UserError(f"{path}: expected 'Expert <id> <count> <pct>%' lines, got none")
    experts = int_array([_int(r[0], path) for r in rows], f"{path}: expert ids", hi=MAX_EXPERTS)
    counts = int_array([_int(r[1], path) for r in rows], f"{path}: token counts", hi=INT32_MAX)
    _check_ids(path, experts, num_experts, "expert ids")
    if tokens * topk != expected or int(counts.sum()) != expected:
        raise UserError(
            f"{path}: expected token counts summing to tokens x k = {tokens} x {topk} = "
            f"{tokens * topk} (file says {expected}), got {int(counts.sum())}"
        )
    if counts.max() > tokens:
        raise UserError(
            f"{path}: expected counts <= {tokens} tokens, got {int(counts.max())} for expert "
            f"{int(experts[counts.argmax()])}"
        )
    order = np.lexsort((experts, -counts))
    if not np.array_equal(order, np.arange(experts.size)):
        first = int(np.flatnonzero(order != np.arange(experts.size))[0])
        raise UserError(
            f"{path}: expected lines sorted by token count (descending), ties by expert id, got "
            f"'Expert {int(experts[first])}  {int(counts[first])}' at line {first + 1} of the list"
        )
    return Routing(experts, counts, tokens, topk)


def read_table(path: Path, columns: tuple[str, ...], num_experts: int) -> Table:
    """Parse an NPU (``NPU_COLUMNS``) or PIM (``PIM_COLUMNS``) table file."""
    text = _read(path)
    lines = text.splitlines()
    header = next((i for i, line in enumerate(lines) if line.strip().startswith(columns[0])), None)
    if header is None:
        raise UserError(f"{path}: expected a header line '{'  '.join(columns)}', got none")
    found = tuple(re.split(r"\s{2,}", lines[header].strip()))
    if found != columns:
        raise UserError(f"{path}: expected columns {list(columns)}, got {list(found)}")
    values: list[list[int]] = []
    for number, line in enumerate(lines[header + 1 :], start=header + 2):
        if not line.strip():
            continue
        if not _INT_ROW.match(line) or len(line.split()) != len(columns):
            raise UserError(
                f"{path}:{number}: expected {len(columns)} integers per row, got {line.strip()!r}"
            )
        values.append([_int(v, f"{path}:{number}") for v in line.split()])
    if not values:
        raise UserError(f"{path}: expected at least one expert row, got none")
    arr = int_array(values, f"{path}: table values", lo=-MAX_CYCLES, hi=MAX_CYCLES)
    experts = arr[:, 0]
    _check_ids(path, experts, num_experts, "'Expert Number' values")
    if arr[:, 1:].min() < 0:
        raise UserError(f"{path}: expected cycle counts >= 0, got {int(arr[:, 1:].min())}")
    cols = {name: arr[:, i] for i, name in enumerate(columns) if i > 0}
    parts = cols["fc1"] + cols["gelu"] + cols["fc2"]
    bad = np.flatnonzero(parts != cols["total compute"])
    if bad.size:
        i = int(bad[0])
        raise UserError(
            f"{path}: expected 'total compute' = fc1 + gelu + fc2, got {int(cols['total compute'][i])}"
            f" != {int(parts[i])} for expert {int(experts[i])}"
        )
    activation = _read_activation(path, text) if columns == PIM_COLUMNS else None
    return Table(experts, cols, activation)


def _read_activation(path: Path, text: str) -> tuple[int, int]:
    found: dict[int, int] = {}
    for index, cycles in _ACTIVATION.findall(text):
        if _int(index, path) in found:
            raise UserError(f"{path}: expected one activation_movement_{index} line, got several")
        where = f"{path}: activation_movement_{index}"
        found[_int(index, path)] = checked_int(_int(cycles, where), where, 0, MAX_CYCLES)
    if sorted(found) != [1, 2]:
        raise UserError(
            f"{path}: expected activation_movement_1 and activation_movement_2 lines, "
            f"got {['activation_movement_' + str(i) for i in sorted(found)]}"
        )
    total = _ACTIVATION_TOTAL.search(text)
    if total and _int(total[1], path) != found[1] + found[2]:
        raise UserError(
            f"{path}: expected 'Total activation movement cycles' = {found[1] + found[2]}, "
            f"got {int(total[1])}"
        )
    return found[1], found[2]


def _int(text: str, where: object) -> int:
    """A decimal integer from a table; more digits than int64 holds is a UserError (Python
    would convert up to 4300 digits and then fail with ValueError)."""
    if len(text.lstrip("+-")) > 19:
        raise UserError(f"{where}: expected an integer within int64, got {len(text)} digits")
    return int(text)


def _read(path: Path) -> str:
    return opener.read_text(path, "a cost-table text file", limit=MAX_TABLE_BYTES)


def _check_ids(path: Path, experts: np.ndarray, num_experts: int, what: str) -> None:
    if experts.min() < 0 or experts.max() >= num_experts:
        raise UserError(
            f"{path}: expected {what} in 0..{num_experts - 1}, got {int(experts.max())}"
        )
    uniq, n = np.unique(experts, return_counts=True)
    if (n > 1).any():
        raise UserError(
            f"{path}: expected each of the {what} once, got {int(uniq[n > 1][0])} twice"
        )


# -- the whole directory ------------------------------------------------------------------------
@dataclass(frozen=True)
class NeupimsData:
    """Every cell (step, layer) of a NeuPIMs directory, as integer-cycle arrays.

    ``-1`` marks "no value" in the per-expert arrays (``[steps, layers, num_experts]``) and in
    ``activation_1/2`` (``[steps, layers]``). ``npu_ok`` / ``pim_ok`` say whether the cell's
    table exists *and* lists exactly the cell's active experts; ``npu_rows`` / ``pim_rows`` mark
    the rows a file holds (even when it does not match the routing, for the README's literal
    formulas). ``order[s, l, :active[s, l]]`` is the README's A (file order)."""

    root: Path
    position_names: tuple[str, ...]  # "1st", ...
    positions: tuple[int, ...]  # ordinal - 1
    layer_ids: tuple[int, ...]
    num_experts: int
    tokens: int  # sequences in the batch ("Total tokens")
    topk: int
    counts: np.ndarray  # int64 [S, L, E]
    order: np.ndarray  # int64 [S, L, E]: file order, active experts first
    active: np.ndarray  # int64 [S, L]
    param_load: np.ndarray
    npu_compute: np.ndarray
    pim_compute: np.ndarray
    activation_1: np.ndarray
    activation_2: np.ndarray
    npu_rows: np.ndarray  # bool [S, L, E]
    pim_rows: np.ndarray
    npu_ok: np.ndarray  # bool [S, L]
    pim_ok: np.ndarray
    defects: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.positions), len(self.layer_ids)

    def checksum(self) -> str:
        """sha256 of every value read from the tables (routing counts, costs, which cells are
        usable): names the exact cost input of a run, as `trace_checksum` names its routing."""
        digest = hashlib.sha256()
        for name in sorted(self.__dataclass_fields__):
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                digest.update(f"{name}{value.dtype.str}{value.shape}".encode())
                digest.update(np.ascontiguousarray(value).tobytes())
            elif name != "root":
                digest.update(f"{name}={value!r}".encode())
        return "sha256:" + digest.hexdigest()

    def cell_name(self, s: int, layer: int) -> str:
        return f"{self.position_names[s]}/layer{self.layer_ids[layer]}"

    def active_order(self, s: int, layer: int) -> np.ndarray:
        """The README's A: active experts of the cell, in the routing file's order."""
        return self.order[s, layer, : self.active[s, layer]]

    def cost_table(self, clock_hz: float) -> CostTable:
        """The cells' costs in cycles at ``clock_hz``; tables that do not match their cell's
        routing (or are missing) are left out (NaN), so the engine falls back there."""
        npu = self.npu_ok[:, :, None]
        pim = self.pim_ok[:, :, None]
        act = np.where(self.pim_ok, self.activation_1 + self.activation_2, -1)
        return CostTable(
            transfer=_nan_where(self.param_load, npu),
            gpu_compute=_nan_where(self.npu_compute, npu),
            near_compute=_nan_where(self.pim_compute, pim),
            activation=_nan_where(act, self.pim_ok),
            unit="cycles",
            clock_hz=float(clock_hz),
            source=f"NeuPIMs tables {self.root}",
            notes=self.defects,
        )

    def routing_trace(self, model: str = "flame-moe-290m") -> RoutingTrace:
        """A `RoutingTrace` whose top-k token counts are exactly the routing files' counts.

        The files give counts per expert, not which token chose which experts, so the
        assignment is reconstructed (marked in the provenance): each cell's expert slots, in
        file order, are dealt to the batch's tokens column by column (slot j -> token j mod B,
        rank j // B), which never gives a token one expert twice since no count exceeds B.
        Scores are rank placeholders (strictly decreasing), so any top-k <= k keeps each
        token's first picks; only top-k = k reproduces the files."""
        steps, layers = self.shape
        b, k = self.tokens, self.topk
        experts = np.empty((steps, layers, b, k), dtype=np.int16)
        for s in range(steps):
            for layer in range(layers):
                ids = self.order[s, layer]
                flat = np.repeat(ids, self.counts[s, layer, ids])  # b * k slots, file order
                experts[s, layer] = flat.reshape(k, b).T
        ranks = np.arange(k, 0, -1, dtype=np.float32) / np.float32(k * (k + 1) / 2)
        scores = np.broadcast_to(ranks, experts.shape).astype(np.float32)
        meta = TraceMeta(
            model=model,
            runid="neupims",
            epoch="neupims",
            layout="megatron",
            source=str(self.root),
            provenance=(
                "routing counts from NeuPIMs layer{L}.txt files; token-to-expert assignment "
                "reconstructed from the counts, scores are rank placeholders"
            ),
            synthetic=False,
            micro_batch_size=b,
            extra={"cost_tables": "neupims", "defects": list(self.defects)},
        )
        return RoutingTrace(
            experts=experts,
            scores=scores,
            tokens=np.full((steps, b), -1, dtype=np.int64),
            num_experts=self.num_experts,
            layer_ids=self.layer_ids,
            positions=self.positions,
            meta=meta,
        )


def _nan_where(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    out = values.astype(np.float64)
    out[~np.broadcast_to(ok, values.shape) | (values < 0)] = np.nan
    return out


def load_neupims(root: Path, num_experts: int = 64) -> NeupimsData:
    """Read every position directory, routing file and table under ``root``."""
    root = opener.check_dir(Path(root), "a NeuPIMs cost-table directory")
    dirs = ordinal_dirs(root)
    if not dirs:
        raise UserError(f"{root}: expected position directories 1st, 2nd, ..., got none")
    pdirs = list(dirs.values())
    layer_ids = _layer_ids(pdirs[0])
    routings: dict[tuple[int, int], Routing] = {}
    tables: dict[str, dict[tuple[int, int], Table]] = {side: {} for side in SIDES}
    missing: list[str] = []
    for s, pdir in enumerate(pdirs):
        if _layer_ids(pdir) != layer_ids:
            raise UserError(
                f"{pdir}: expected layer files for layers {list(layer_ids)} like "
                f"{pdirs[0].name}/, got {list(_layer_ids(pdir))}"
            )
        for li, lid in enumerate(layer_ids):
            routings[s, li] = _same_batch(
                read_routing(pdir / f"layer{lid}.txt", num_experts),
                routings,
                pdir / f"layer{lid}.txt",
            )
            for side, columns in (("npu", NPU_COLUMNS), ("pim", PIM_COLUMNS)):
                path = pdir / side / str(lid) / TABLE_FILE
                if opener.describe(path) != "nothing (missing)":
                    tables[side][s, li] = read_table(path, columns, num_experts)
                else:
                    missing.append(
                        f"{path.relative_to(root)}: missing; cell {pdir.name}/layer{lid} has no "
                        f"{side} costs"
                    )
    names = tuple(p.name for p in pdirs)
    grid = _Grid(len(pdirs), layer_ids, num_experts)
    grid.add_routing(routings)
    mismatched = grid.add_tables(tables, names)
    first = routings[0, 0]
    return NeupimsData(
        root=root,
        position_names=names,
        positions=tuple(dirs),
        layer_ids=layer_ids,
        num_experts=num_experts,
        tokens=first.tokens,
        topk=first.topk,
        defects=tuple(missing + mismatched),
        **grid.arrays,
    )


def _same_batch(routing: Routing, seen: dict[tuple[int, int], Routing], path: Path) -> Routing:
    """Every routing file must describe the same batch (tokens and k) as the first one."""
    if seen:
        first = seen[0, 0]
        if (routing.tokens, routing.topk) != (first.tokens, first.topk):
            raise UserError(
                f"{path}: expected {first.tokens} tokens x top-{first.topk} like the other "
                f"files, got {routing.tokens} x top-{routing.topk}"
            )
    return routing


class _Grid:
    """Builds `NeupimsData`'s arrays from the parsed files, cell by cell."""

    def __init__(self, steps: int, layer_ids: tuple[int, ...], num_experts: int) -> None:
        self.layer_ids = layer_ids
        shape = (steps, len(layer_ids), num_experts)
        cells = shape[:2]
        self.arrays: dict[str, np.ndarray] = {
            "counts": np.zeros(shape, dtype=np.int64),
            "order": np.zeros(shape, dtype=np.int64),
            "active": np.zeros(cells, dtype=np.int64),
            "param_load": np.full(shape, -1, dtype=np.int64),
            "npu_compute": np.full(shape, -1, dtype=np.int64),
            "pim_compute": np.full(shape, -1, dtype=np.int64),
            "activation_1": np.full(cells, -1, dtype=np.int64),
            "activation_2": np.full(cells, -1, dtype=np.int64),
            "npu_rows": np.zeros(shape, dtype=bool),
            "pim_rows": np.zeros(shape, dtype=bool),
            "npu_ok": np.zeros(cells, dtype=bool),
            "pim_ok": np.zeros(cells, dtype=bool),
        }

    def add_routing(self, routings: dict[tuple[int, int], Routing]) -> None:
        a = self.arrays
        everyone = np.arange(a["counts"].shape[2])
        for (s, li), routing in routings.items():
            a["counts"][s, li, routing.experts] = routing.counts
            active = routing.active
            a["order"][s, li] = np.concatenate([active, np.setdiff1d(everyone, active)])
            a["active"][s, li] = active.size

    def add_tables(
        self, tables: dict[str, dict[tuple[int, int], Table]], names: tuple[str, ...]
    ) -> list[str]:
        """Store every table; returns a defect line for each whose experts are not the cell's
        active experts (and marks only the others ``*_ok``)."""
        a = self.arrays
        defects = []
        for side, by_cell in tables.items():
            for (s, li), table in by_cell.items():
                e = table.experts
                a[f"{side}_rows"][s, li, e] = True
                if side == "npu":
                    a["param_load"][s, li, e] = table.columns["param_load"]
                    a["npu_compute"][s, li, e] = table.columns["total compute"]
                else:
                    a["pim_compute"][s, li, e] = table.columns["total compute"]
                    assert table.activation is not None
                    a["activation_1"][s, li], a["activation_2"][s, li] = table.activation
                lid = self.layer_ids[li]
                active = a["order"][s, li, : a["active"][s, li]]
                mismatch = _mismatch(e, active, f"layer{lid}.txt")
                if not mismatch:
                    a[f"{side}_ok"][s, li] = True
                    continue
                twin = _identical_table(table, by_cell, (s, li))
                if twin is not None:
                    other = f"{names[twin[0]]}/{side}/{self.layer_ids[twin[1]]}/{TABLE_FILE}"
                    mismatch += f" (its rows are identical to {other}'s)"
                defects.append(f"{names[s]}/{side}/{lid}/{TABLE_FILE}: {mismatch}")
        return defects


def _layer_ids(pdir: Path) -> tuple[int, ...]:
    ids = sorted(int(m[1]) for m in (_LAYER_FILE.match(p.name) for p in pdir.iterdir()) if m)
    if not ids:
        raise UserError(f"{pdir}: expected routing files layer<L>.txt, got none")
    return tuple(ids)


def _mismatch(rows: np.ndarray, active: np.ndarray, routing_name: str) -> str:
    """'' when the table lists exactly the active experts, else what differs."""
    missing = np.setdiff1d(active, rows)
    extra = np.setdiff1d(rows, active)
    if not missing.size and not extra.size:
        return ""
    parts = []
    if missing.size:
        parts.append(f"no row for {missing.size} active expert(s) {missing.tolist()}")
    if extra.size:
        parts.append(f"rows for {extra.size} expert(s) inactive in {routing_name} {extra.tolist()}")
    return "expert rows do not match the routing: " + "; ".join(parts)


def _identical_table(
    table: Table, tables: dict[tuple[int, int], Table], cell: tuple[int, int]
) -> tuple[int, int] | None:
    """Another cell whose table has exactly the same rows and activation lines (a copy)."""
    for other_cell, other in tables.items():
        if other_cell == cell or not np.array_equal(other.experts, table.experts):
            continue
        same = all(np.array_equal(other.columns[c], table.columns[c]) for c in table.columns)
        if same and other.activation == table.activation:
            return other_cell
    return None
