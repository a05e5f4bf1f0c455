"""Parsing of selection lists given on the command line or in YAML.

Ranges are inclusive: ``0-9`` is 0..9; comma lists mix ranges and single values (``1,2,6``,
``2-4,7``); ``all`` selects everything present (returned as ``None``).
"""

from __future__ import annotations

from sim.errors import UserError

# Selections index steps, layers, sequences and shards: far below these in any real dump.
MAX_SELECTION = 1_000_000
MAX_INDEX = 2**31 - 1


def parse_int_selection(text: str | int | list[int] | None, what: str) -> list[int] | None:
    """Parse ``'0-9'``, ``'1,2,6'``, ``'all'``, an int or a list of ints; ``None`` means all."""
    if text is None:
        return None
    if isinstance(text, bool):
        raise UserError(f"{what}: expected a range like '0-9' or a list like '1,2,6', got {text!r}")
    if isinstance(text, int):
        return _unique([text], what)
    if isinstance(text, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in text):
            raise UserError(f"{what}: expected a list of integers, got {text!r}")
        return _unique(text, what)
    spec = str(text).strip()
    if spec.lower() == "all":
        return None
    values: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise UserError(
                f"{what}: expected a range like '0-9' or a list like '1,2,6', got {text!r}"
            )
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                a, b = int(lo), int(hi)
                if b < a:
                    raise UserError(f"{what}: range {part!r} ends before it starts")
                if b - a + 1 + len(values) > MAX_SELECTION:
                    raise UserError(
                        f"{what}: expected at most {MAX_SELECTION:,} values, got range {part!r}"
                    )
                values.extend(range(a, b + 1))
            else:
                values.append(int(part))
        except ValueError:
            raise UserError(
                f"{what}: expected a range like '0-9' or a list like '1,2,6', got {text!r}"
            ) from None
    return _unique(values, what)


def format_int_selection(values: tuple[int, ...] | list[int]) -> str:
    """The text `parse_int_selection` reads back: ``2-9`` for a contiguous run, else ``1,2,6``."""
    ordered = sorted(values)
    if len(ordered) > 1 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(map(str, ordered))


def parse_name_list(text: str | list[str] | None, what: str) -> list[str] | None:
    """Parse a comma list of names (e.g. shard names ``0-0,0-1``); ``None``/``all`` means all."""
    if text is None:
        return None
    if isinstance(text, list):
        names = [str(v).strip() for v in text]
    else:
        if str(text).strip().lower() == "all":
            return None
        names = [p.strip() for p in str(text).split(",")]
    if not names or any(not n for n in names):
        raise UserError(f"{what}: expected a comma-separated list of names, got {text!r}")
    return names


def _unique(values: list[int], what: str) -> list[int]:
    if len(values) > MAX_SELECTION or any(v > MAX_INDEX for v in values):
        raise UserError(
            f"{what}: expected at most {MAX_SELECTION:,} values, each at most {MAX_INDEX:,}, "
            f"got {_preview(values)}"
        )
    if len(set(values)) != len(values):
        raise UserError(f"{what}: values repeat in {values!r}")
    if any(v < 0 for v in values):
        raise UserError(f"{what}: expected non-negative integers, got {values!r}")
    return values


def _preview(values: list[int]) -> str:
    head = ", ".join(str(v)[:24] for v in values[:3])
    return f"[{head}{', ...' if len(values) > 3 else ''}] ({len(values):,} values)"
