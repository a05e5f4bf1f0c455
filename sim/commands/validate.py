"""``moesim validate FILE...``: check scenario files without running or writing anything."""

from __future__ import annotations

import argparse

from sim.commands._options import add_set_option


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check scenario YAML files (schema, units, presets, policies, trace paths)",
        description="Validate scenario files, every one of them: each file's first problem is "
        "one line with its YAML path; exit code 2 if any file failed. Nothing is written.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="scenario YAML files")
    add_set_option(p)
    p.add_argument(
        "--no-trace",
        action="store_true",
        help="skip loading the trace (only check that its path exists)",
    )
    p.set_defaults(func=validate_command)


def validate_command(args: argparse.Namespace) -> int:
    """Check every file, report each (ok on stdout, problems on stderr), exit 2 if any failed."""
    import sys

    from sim.errors import EXIT_USER_ERROR, UserError

    failed = 0
    for file in args.files:
        try:
            _validate_one(file, args)
        except UserError as err:
            failed += 1
            text = str(err)
            if len(args.files) > 1 and file not in text:
                text = f"{file}: {text}"
            print(f"moesim: error: {text}", file=sys.stderr)
    if failed and len(args.files) > 1:
        print(f"moesim: {failed} of {len(args.files)} files failed", file=sys.stderr)
    return EXIT_USER_ERROR if failed else 0


def _validate_one(file: str, args: argparse.Namespace) -> None:
    from sim.scenario import load_scenario, load_scenario_trace

    if _is_sweep_file(file):
        _validate_sweep(file, args.overrides)
        return
    scenario = load_scenario(file, args.overrides)
    detail = ""
    if not args.no_trace:
        trace = load_scenario_trace(scenario)
        detail = (
            f"; trace {trace.num_steps} steps x {trace.num_layers} layers x {trace.num_seqs} seqs"
        )
        if scenario.serving:
            from sim.serving.run import prepare

            setup = prepare(scenario, trace)  # requests read, lengths and HBM checked
            detail += f"; {len(setup.requests)} requests, KV {setup.hbm.kv_blocks} blocks"
    labels = ", ".join(p.label for p in scenario.policies)
    print(
        f"{file}: ok ({scenario.name}: top-k {scenario.topk}, policies {labels}, "
        f"baseline {scenario.baseline}{detail})"
    )


def _is_sweep_file(file: str) -> bool:
    """A sweep file is a scenario with a top-level ``sweep:`` block."""
    from sim.yamlio import read_yaml

    data = read_yaml(file, "a scenario YAML file")
    return isinstance(data, dict) and "sweep" in data


def _validate_sweep(file: str, overrides: list[str]) -> None:
    """Check the base scenario and every point of a sweep, as `moesim sweep` does first."""
    from sim.sweep.spec import expand, load_sweep, validate_points

    spec = load_sweep(file, overrides)
    points = expand(spec)
    validate_points(spec, points)
    print(f"{file}: ok (sweep: {len(points)} points, each a valid scenario)")
