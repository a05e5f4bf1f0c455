"""``moesim calibrate``: measure this machine's GPU and write a calibrated hardware preset."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from sim.commands._options import int_range
from sim.errors import UserError
from sim.limits import MAX_DIMENSION


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure host-to-device copies and one expert FFN on a CUDA GPU; write a preset",
        description="Time pinned and pageable host-to-device copies (sizes x concurrent streams) "
        "and one expert FFN (token counts) with CUDA events, fit t = L + S/B and a roofline, and "
        "write a preset (docs/calibration.md). Without a CUDA GPU it says so and exits 2.",
    )
    p.add_argument("--out", metavar="FILE.yaml", help="write the preset here (default: stdout)")
    p.add_argument(
        "--sizes",
        metavar="LIST",
        help="copy sizes with units, e.g. '64KiB,1MiB,1GiB' (default 64 KiB .. 1 GiB, x4 steps)",
    )
    p.add_argument("--streams", default="1,2,3", help="concurrent copy streams (default 1,2,3)")
    p.add_argument(
        "--tokens", default="1,8,64,512", help="expert token counts (default 1,8,64,512)"
    )
    p.add_argument(
        "--memory", default="pinned,pageable", help="host memory kinds (default pinned,pageable)"
    )
    p.add_argument(
        "--repeats",
        type=int_range(1, 10_000),
        default=5,
        help="timed repeats per point (default 5)",
    )
    p.add_argument(
        "--hidden",
        type=int_range(1, MAX_DIMENSION),
        default=1024,
        help="expert hidden size (default 1024)",
    )
    p.add_argument(
        "--ffn", type=int_range(1, MAX_DIMENSION), default=704, help="expert FFN size (default 704)"
    )
    p.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("bfloat16", "float16", "float32"),
        help="expert weight type (default bfloat16)",
    )
    p.add_argument("--no-gated", action="store_true", help="plain FFN instead of SwiGLU")
    p.add_argument(
        "--device", type=int_range(0, 1024), default=0, help="CUDA device index (default 0)"
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="FILE.yaml",
        help="no GPU: refit the measurements recorded in FILE (a preset or measurements file)",
    )
    p.set_defaults(func=calibrate_command)


def calibrate_command(args: argparse.Namespace) -> int:
    import yaml

    from sim.calibrate.fit import build_preset
    from sim.calibrate.measure import Measurements

    if args.out and not Path(args.out).parent.is_dir():
        raise UserError(f"--out: expected a file in an existing directory, got {args.out!r}")
    if args.source:
        measurements = Measurements.from_dict(_recorded(args.source), args.source)
    else:
        measurements = _measure(args)
    doc = build_preset(measurements)
    _print_summary(doc)
    text = preset_yaml(doc, yaml)
    if args.out:
        from sim.atomic import write_text

        write_text(args.out, text)
        print(f"preset: {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _recorded(path: str) -> object:
    from sim.yamlio import read_yaml

    data = read_yaml(path, "a measurements YAML file")
    if isinstance(data, dict) and "measurements" in data:
        return data["measurements"]
    return data


def _measure(args: argparse.Namespace) -> object:
    from sim.calibrate.cuda import CudaBackend
    from sim.calibrate.measure import (
        DEFAULT_SIZES,
        MEMORY_KINDS,
        ExpertShape,
        MeasureConfig,
        measure,
    )
    from sim.ranges import parse_int_selection, parse_name_list
    from sim.units import parse_size

    sizes = (
        tuple(int(parse_size(s.strip(), "--sizes")) for s in args.sizes.split(","))
        if args.sizes
        else DEFAULT_SIZES
    )
    if any(s <= 0 for s in sizes) or len(set(sizes)) < 2:
        raise UserError(f"--sizes: expected at least 2 distinct positive sizes, got {args.sizes!r}")
    streams = _positive(parse_int_selection(args.streams, "--streams"), "--streams")
    tokens = _positive(parse_int_selection(args.tokens, "--tokens"), "--tokens")
    memory = tuple(parse_name_list(args.memory, "--memory") or MEMORY_KINDS)
    bad = [m for m in memory if m not in MEMORY_KINDS]
    if bad:
        raise UserError(f"--memory: expected {' or '.join(MEMORY_KINDS)}, got {bad[0]!r}")
    if args.repeats < 1 or args.hidden < 1 or args.ffn < 1:
        raise UserError("--repeats, --hidden, --ffn: expected positive integers")
    bpp = 4 if args.dtype == "float32" else 2
    shape = ExpertShape(args.hidden, args.ffn, not args.no_gated, args.dtype, bpp)
    config = MeasureConfig(sizes, streams, tokens, memory, args.repeats, shape)
    backend = CudaBackend(args.device)  # "no CUDA GPU: ..." -> exit 2
    date = datetime.now(UTC).date().isoformat()
    print(f"calibrating {backend.device_name()} ...", file=sys.stderr)
    return measure(backend, config, date, progress=lambda line: print(line, file=sys.stderr))


def _positive(values: list[int] | None, what: str) -> tuple[int, ...]:
    if not values or any(v < 1 for v in values):
        raise UserError(f"{what}: expected positive integers like '1,2,3', got {values!r}")
    return tuple(values)


def preset_yaml(doc: dict, yaml: object) -> str:
    header = (
        "# Calibrated hardware preset written by `moesim calibrate` (docs/calibration.md).\n"
        "# links/gpus: entries in sim/presets' format; hardware: a partial scenario hardware\n"
        "# section that `moesim fidelity --preset` merges onto a scenario's; measurements: the\n"
        "# raw timings (refit with `moesim calibrate --from THIS_FILE`).\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, width=100)  # type: ignore[attr-defined]


def _print_summary(doc: dict) -> None:
    from sim.units import format_bandwidth, format_duration

    print(f"{doc['source']}", file=sys.stderr)
    for f in doc["fit_links"]:
        print(
            f"  {f['memory']:8s} x{f['streams']}: latency {format_duration(f['latency_s'])}, "
            f"bandwidth {format_bandwidth(f['bandwidth_Bps'])} (max error {f['max_error']:.1%})",
            file=sys.stderr,
        )
    for name, entry in doc["links"].items():
        print(
            f"  {name}: {entry['bandwidth']}, {entry['latency']}, {entry['channels']} channel(s)",
            file=sys.stderr,
        )
    if "gpus" in doc:
        gpu = doc["gpus"]["calibrated-gpu"]
        print(
            f"  expert roofline: {gpu['hbm_bandwidth']} effective, {gpu['peak_flops']} effective",
            file=sys.stderr,
        )
