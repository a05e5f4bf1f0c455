"""``moesim validate FILE...``: check scenario files without running or writing anything."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check scenario YAML files (schema, units, presets, policies, trace paths)",
        description="Validate scenario files; the first problem is one line with its YAML path "
        "and exit code 2. Nothing is written.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="scenario YAML files")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a field as `moesim run --set` does (repeatable)",
    )
    p.add_argument(
        "--no-trace",
        action="store_true",
        help="skip loading the trace (only check that its path exists)",
    )
    p.set_defaults(func=validate_command)


def validate_command(args: argparse.Namespace) -> int:
    from sim.scenario import load_scenario, load_scenario_trace

    for file in args.files:
        scenario = load_scenario(file, args.overrides)
        detail = ""
        if not args.no_trace:
            trace = load_scenario_trace(scenario)
            detail = f"; trace {trace.num_steps} steps x {trace.num_layers} layers x {trace.num_seqs} seqs"
        labels = ", ".join(p.label for p in scenario.policies)
        print(
            f"{file}: ok ({scenario.name}: top-k {scenario.topk}, policies {labels}, "
            f"baseline {scenario.baseline}{detail})"
        )
    return 0
