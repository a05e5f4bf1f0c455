"""``moesim fidelity SCENARIO --preset FILE``: replay a short trace on the GPU vs the simulator."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from sim.commands._options import add_set_option, int_range
from sim.errors import UserError
from sim.limits import MAX_EXPERTS, MAX_SEQ_LEN


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fidelity",
        help="replay a short trace for real on a CUDA GPU and compare with the simulator",
        description="Replay the first steps of a scenario's trace on a CUDA GPU (experts in "
        "pinned host memory, the PCIe fetches of each policy, real expert matmuls) and compare "
        "each step's measured latency with the simulator's prediction from a calibrated preset "
        "(docs/fidelity.md). Without a CUDA GPU it exits 2 (unless --dry-run).",
    )
    p.add_argument("scenario", help="scenario YAML (e.g. scenarios/default.yaml)")
    p.add_argument("--preset", required=True, metavar="FILE.yaml", help="from moesim calibrate")
    p.add_argument("--out", required=True, metavar="DIR", help="results directory (new or empty)")
    p.add_argument(
        "--steps",
        type=int_range(1, MAX_SEQ_LEN),
        default=16,
        help="decode steps to replay (default 16)",
    )
    p.add_argument(
        "--policies",
        default=",".join(("seed-split", "lru")),
        help="policy labels of the scenario, or policy names (default seed-split,lru)",
    )
    p.add_argument(
        "--topk",
        type=int_range(1, MAX_EXPERTS),
        help="routing top-k (default the scenario's first)",
    )
    p.add_argument(
        "--repeats", type=int_range(1, 10_000), default=3, help="timed passes, median (default 3)"
    )
    p.add_argument(
        "--device", type=int_range(0, 1024), default=0, help="CUDA device index (default 0)"
    )
    add_set_option(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU: replay on a synthetic machine with the preset's own parameters (checks "
        "the harness; its numbers are not measurements)",
    )
    p.set_defaults(func=fidelity_command)


def fidelity_command(args: argparse.Namespace) -> int:
    from sim.calibrate import fidelity as fid
    from sim.ranges import parse_name_list
    from sim.scenario import load_scenario, load_scenario_trace, scenario_from_dict
    from sim.scenario.run import check_out_dir

    base = load_scenario(args.scenario, args.overrides)
    preset = fid.load_preset(args.preset)
    scenario = scenario_from_dict(
        fid.merge_hardware(base.raw, preset["hardware"]),
        base.source,
        base_dir=Path(args.scenario).parent,
    )
    out = check_out_dir(args.out)
    _warn_on_shape(preset, scenario.model)
    if args.steps < 1 or args.repeats < 1:
        raise UserError(f"--steps, --repeats: expected >= 1, got {args.steps}, {args.repeats}")
    topk = args.topk if args.topk is not None else scenario.topk[0]
    labels = parse_name_list(args.policies, "--policies") or []
    policies = fid.select_policies(scenario, labels)
    trace = load_scenario_trace(scenario)
    if args.steps > trace.num_steps:
        raise UserError(
            f"--steps: expected at most {trace.num_steps} (the trace's), got {args.steps}"
        )
    trace = trace.select(steps=slice(0, args.steps))
    if args.dry_run:
        from sim.calibrate.backend import FakeBackend

        hw = fid.replay_hardware(scenario.hardware)
        backend = FakeBackend(fid.fake_machine(hw, "dry run: synthetic machine, not a GPU"))
    else:
        from sim.calibrate.cuda import CudaBackend

        backend = CudaBackend(args.device)  # "no CUDA GPU: ..." -> exit 2
    device = backend.device_name()
    print(f"fidelity on {device}: {args.steps} steps, top-{topk}", file=sys.stderr)
    results = fid.run_fidelity(
        trace,
        scenario.hardware,
        scenario.model,
        policies,
        backend,
        topk=topk,
        repeats=args.repeats,
        seed=scenario.seed,
        progress=lambda line: print(line, file=sys.stderr),
    )
    info = {
        "device": device,
        "backend": backend.name,
        "measured": not args.dry_run,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "scenario": str(args.scenario),
        "overrides": list(args.overrides),
        "preset": str(args.preset),
        "preset_source": preset.get("source"),
        "steps": args.steps,
        "repeats": args.repeats,
        "topk": topk,
        "trace": trace.describe(),
        "hardware": scenario.hardware_doc,
        "note": "md_link ideal and non_expert_time 0 on both sides (docs/fidelity.md)",
    }
    path = fid.write_fidelity(out, results, info)
    sys.stdout.write(fid.markdown_table(results, measured=not args.dry_run))
    print(f"results: {path}")
    return 0


def _warn_on_shape(preset: dict, model: object) -> None:
    """The roofline was fitted on one expert shape; say so when the scenario's differs."""
    expert = (preset.get("measurements") or {}).get("expert") or {}
    measured = (expert.get("hidden_size"), expert.get("ffn_size"))
    wanted = (model.hidden_size, model.expert_ffn_size)  # type: ignore[attr-defined]
    if expert.get("points") and measured != wanted:
        print(
            f"warning: the preset's expert roofline was measured on a {measured[0]} x "
            f"{measured[1]} expert, the scenario's model has {wanted[0]} x {wanted[1]}",
            file=sys.stderr,
        )
