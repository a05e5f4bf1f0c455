"""``moesim costs neupims DIR``: the four NPU/PIM modes on per-expert cycle tables, and the engine.

Prints every cell's cycles under NPU-only, PIM-only, MoNDE and DynaNDE (the formulas of the
data's README, docs/cost-tables.md), the per-mode totals, and with ``--scenario`` runs that
scenario's policies in the engine with the tables as cost model (roofline fallback) and checks
the four mode policies against the formulas cell by cell. Defects in the data (missing or
mismatched tables) are printed as warnings and recorded in the outputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.commands._options import int_range
from sim.limits import MAX_EXPERTS

if TYPE_CHECKING:  # the cost modules load torch: imported by the handler, not at --help
    from sim.costs.compare import ModeCheck, PolicyRun
    from sim.costs.modes import ModeResult
    from sim.costs.neupims import NeupimsData


def mode_columns() -> tuple[str, ...]:
    from sim.costs.modes import MODES

    return ("step", "position", "layer_id", "active", *MODES, "monde_npu", "dynande_npu")


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("costs", help="per-expert cost tables: import, modes, engine")
    sub = group.add_subparsers(dest="costs_command", metavar="COSTS_COMMAND")
    group.set_defaults(func=lambda _args: group.print_help() or 2)
    p = sub.add_parser(
        "neupims",
        help="NPU-only / PIM-only / MoNDE / DynaNDE cycles of a NeuPIMs table directory",
        description=__doc__,
    )
    p.add_argument("dir", type=Path, help="NeuPIMs directory ({pos}/layer{L}.txt, npu/, pim/)")
    p.add_argument(
        "--scenario",
        type=Path,
        metavar="FILE",
        help="also run this scenario's policies in the engine on the tables "
        "(e.g. scenarios/neupims-decoder-bs16.yaml; its trace section is ignored)",
    )
    p.add_argument(
        "--clock",
        default="1 GHz",
        help="clock of the tables' cycles, to convert to the engine's seconds: '1 GHz', "
        "'800 MHz' or Hz (default 1 GHz)",
    )
    p.add_argument(
        "--num-experts",
        type=int_range(1, MAX_EXPERTS),
        default=64,
        help="experts per layer (default 64)",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="write modes.csv, costs.json, engine/")
    p.add_argument("--no-cells", action="store_true", help="print totals only")
    p.set_defaults(func=neupims_command)


def neupims_command(args: argparse.Namespace) -> int:
    from sim.costs.compare import check_modes, run_policies
    from sim.costs.modes import compute_modes
    from sim.costs.neupims import load_neupims
    from sim.costs.source import parse_clock

    clock_hz = parse_clock(_number_or_text(args.clock), "--clock")
    if args.out is not None:
        from sim.scenario.run import check_out_dir

        check_out_dir(args.out)
    scenario = runs = checks = None
    if args.scenario is not None:  # read before anything is printed: a bad file is one line
        from sim.scenario import load_scenario

        scenario = load_scenario(args.scenario)
    data = load_neupims(args.dir, num_experts=args.num_experts)
    literal = compute_modes(data)
    consistent = compute_modes(data, consistent_only=True)
    if scenario is not None:
        runs = run_policies(data, scenario, clock_hz)
        checks = check_modes(data, consistent, runs)
    if args.out is not None:  # written before printing: a write error is the only output
        from sim import atomic

        with atomic.staged_dir(args.out, "new") as staging:  # all files appear, or none
            _write(staging, data, literal, consistent, scenario, runs, checks, clock_hz)
    for line in data.defects:
        print(f"warning: {line}", file=sys.stderr)
    steps, layers = data.shape
    print(
        f"NeuPIMs tables {data.root}: {steps} steps x {layers} layers "
        f"{list(data.layer_ids)}, {data.tokens} tokens, top-{data.topk}"
    )
    if not args.no_cells:
        print()
        print(_cells_text(data, literal))
    print()
    print("Mode totals, cycles (the README's formulas as written; defective files: see warnings)")
    print(_totals_text(literal, consistent))
    if scenario is not None and runs is not None and checks is not None:
        print()
        print(f"Engine ({scenario.name}, table costs at {clock_hz:g} Hz, roofline fallback)")
        print(_engine_text(runs, checks, data))
    if args.out is not None:
        print(f"\nwrote {args.out}")
    return 0


def _number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


# -- text ---------------------------------------------------------------------------------------
def _cells_text(data: NeupimsData, modes: dict[str, ModeResult]) -> str:
    from sim.costs.modes import MODES

    steps, layers = data.shape
    head = f"{'cell':<12} {'|A|':>3} " + " ".join(f"{m:>11}" for m in MODES)
    lines = [head + f" {'MoNDE n':>7} {'DynaNDE k':>9}"]
    for s in range(steps):
        for layer in range(layers):
            values = [modes[m].cycles[s, layer] for m in MODES]
            shown = " ".join(f"{v:>11}" if v >= 0 else f"{'-':>11}" for v in values)
            n = modes["monde"].npu_experts[s, layer]
            k = modes["dynande"].npu_experts[s, layer]
            lines.append(
                f"{data.cell_name(s, layer):<12} {data.active[s, layer]:>3} {shown} "
                f"{_dash(n):>7} {_dash(k):>9}"
            )
    return "\n".join(lines)


def _dash(value: int) -> str:
    return str(int(value)) if value >= 0 else "-"


def _totals_text(literal: dict[str, ModeResult], consistent: dict[str, ModeResult]) -> str:
    from sim.costs.modes import MODES

    dyna = consistent["dynande"]
    best = dyna.total
    lines = [
        f"{'mode':<9} {'cells':>5} {'total':>13}   {'consistent':>5} {'total':>13} "
        f"{'x DynaNDE':>9} {'NPU experts':>11}"
    ]
    footnotes = []
    for mode in MODES:
        lit, con = literal[mode], consistent[mode]
        same_cells = (con.computed == dyna.computed).all()
        ratio = f"{con.total / best:9.3f}" if best and same_cells else f"{'':>9}"
        if best and not same_cells and (con.computed | ~dyna.computed).all():
            # more cells than DynaNDE: compare on DynaNDE's cells only, and say so
            on_dyna = int(con.cycles[dyna.computed].sum())
            ratio = f"{on_dyna / best:8.3f}*"
            footnotes.append(
                f"* {mode}: on DynaNDE's {dyna.cells} cells, {on_dyna} cycles (its total above "
                f"is over {con.cells} cells)"
            )
        npu = int(con.npu_experts[con.computed].sum())
        lines.append(
            f"{mode:<9} {lit.cells:>5} {lit.total:>13}   {con.cells:>5} {con.total:>13} "
            f"{ratio} {npu:>11}"
        )
    lines.append(
        "(consistent: only cells whose tables list exactly the active experts; "
        "NPU experts: summed over those cells)"
    )
    return "\n".join([*lines, *footnotes])


def _engine_text(runs: list[PolicyRun], checks: list[ModeCheck], data: NeupimsData) -> str:
    from sim.costs.compare import npu_only_readme_gap

    clean = data.npu_ok & data.pim_ok
    lines = [
        f"{'label':<28} {'policy':<20} {'all cells':>13} {'table cells':>13} {'hits':>6} "
        f"{'late':>5}  mode"
    ]
    for run in runs:
        hits = int(run.result.totals.get("hits", 0))
        late = int(run.result.totals.get("late_prefetches", 0))
        mode = run.mode or f"- ({run.mode_note})"
        lines.append(
            f"{run.label:<28} {run.policy:<20} {run.total:>13} "
            f"{int(run.cycles[clean].sum()):>13} {hits:>6} {late:>5}  {mode}"
        )
    lines.append(
        f"(cycles; all cells: {clean.size}, some with roofline-fallback costs; table cells: the "
        f"{int(clean.sum())} whose NPU and PIM tables both match the routing; hits: experts in "
        "HBM at the gate; late: prefetches still in flight at the gate)"
    )
    lines.append("")
    lines.append(
        f"{'mode':<9} {'label':<12} {'cells':>5} {'formula':>13} {'engine':>13} {'diff':>7}  exact"
    )
    for c in checks:
        diff = c.engine_total - c.formula_total
        lines.append(
            f"{c.mode:<9} {c.label:<12} {c.cells:>5} {c.formula_total:>13} {c.engine_total:>13} "
            f"{diff:>7}  {'yes' if c.exact else f'no ({c.cells_differing} cells)'}"
            + ("" if not c.split_differing else f"; other split in {c.split_differing} cells")
        )
        if c.mode == "npu-only" and not c.exact:
            gap = npu_only_readme_gap(data)
            lines.append(
                f"  npu-only: the engine adds the compute of the last expert loaded (most tokens "
                f"first); the README adds expert 63's, 0 when inactive: "
                f"{gap['cells_without_63']} cells without 63 ({gap['cycles_without_63']:+d}), "
                f"{gap['cells_63_not_last']} with 63 not last ({gap['cycles_63_not_last']:+d}); "
                f"predicted difference {c.explained}"
            )
    return "\n".join(lines)


# -- files --------------------------------------------------------------------------------------
def _write(
    out: Path,
    data: NeupimsData,
    literal: dict[str, ModeResult],
    consistent: dict[str, ModeResult],
    scenario: Any,
    runs: list[PolicyRun] | None,
    checks: list[ModeCheck] | None,
    clock_hz: float,
) -> None:
    from sim import atomic
    from sim.costs.compare import npu_only_readme_gap
    from sim.costs.modes import MODES

    steps, layers = data.shape
    rows = []
    for s in range(steps):
        for layer in range(layers):
            cycles = [_blank(literal[m].cycles[s, layer]) for m in MODES]
            rows.append(
                [s, data.positions[s], data.layer_ids[layer], int(data.active[s, layer]), *cycles]
                + [_blank(literal[m].npu_experts[s, layer]) for m in ("monde", "dynande")]
            )
    atomic.write_csv(out / "modes.csv", mode_columns(), rows)
    doc: dict[str, Any] = {
        "source": str(data.root),
        "shape": {"steps": steps, "layers": layers, "tokens": data.tokens, "topk": data.topk},
        "defects": list(data.defects),
        "modes": {m: {"cells": literal[m].cells, "total": literal[m].total} for m in MODES},
        "modes_consistent_cells": {
            m: {"cells": consistent[m].cells, "total": consistent[m].total} for m in MODES
        },
        "npu_only_readme_gap": npu_only_readme_gap(data),
        "clock_hz": clock_hz,
    }
    if scenario is not None and runs is not None and checks is not None:
        from sim.scenario.run import ScenarioRunResult, write_results

        doc["engine"] = {
            run.label: {
                "policy": run.policy,
                "total_cycles": run.total,
                "mode": run.mode,
                "costs": run.costs,
            }
            for run in runs
        }
        doc["checks"] = [c.to_dict() for c in checks]
        results = [
            ScenarioRunResult(
                **{f: getattr(run.result, f) for f in run.result.__dataclass_fields__},
                topk=data.topk,
                is_baseline=run.label == scenario.baseline,
            )
            for run in runs
        ]
        write_results(out / "engine", scenario, data.routing_trace(), results)
    atomic.write_json(out / "costs.json", doc)


def _blank(value: int) -> int | str:
    return int(value) if value >= 0 else ""
