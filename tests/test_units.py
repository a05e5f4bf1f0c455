"""Units in YAML: parsed once into SI floats; bad ones are one-line errors naming the field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.errors import UserError
from sim.units import (
    QUANTITIES,
    format_exact,
    parse_bandwidth,
    parse_duration,
    parse_flops,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("32 GB/s", 32e9),
        ("32GB/s", 32e9),
        ("400 Gbit/s", 50e9),
        ("25 Gbps", 3.125e9),
        ("32 Gbps", 4e9),
        ("512 Gb/s", 64e9),
        ("1 GiB/s", 2.0**30),
        ("100 MB/s", 1e8),
        ("3.35 TB/s", 3.35e12),
    ],
)
def test_bandwidth(text: str, expected: float) -> None:
    assert parse_bandwidth(text, "f") == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2 us", 2e-6),
        ("2 µs", 2e-6),
        ("10 ms", 1e-2),
        ("1 s", 1.0),
        ("250 ns", 2.5e-7),
        ("0", 0.0),
        (0, 0.0),
        ("10 us", 1e-5),
    ],
)
def test_duration(text: object, expected: float) -> None:
    assert parse_duration(text, "f") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80 GiB", 80 * 2**30),
        ("4.33 MB", 4.33e6),
        ("24 MiB", 24 * 2**20),
        ("512 B", 512.0),
        ("1 KB", 1e3),
        ("1 KiB", 1024.0),
        ("0 B", 0.0),
        (0, 0.0),
    ],
)
def test_size(text: object, expected: float) -> None:
    assert parse_size(text, "f") == pytest.approx(expected, rel=1e-15)


def test_flops() -> None:
    assert parse_flops("989 TFLOP/s", "f") == 989e12
    assert parse_flops("2.25 PFLOPS", "f") == 2.25e15


@pytest.mark.parametrize(
    ("parse", "value", "fragment"),
    [
        (parse_bandwidth, "fast", "expected a bandwidth like '32 GB/s', got 'fast'"),
        (parse_bandwidth, 32, "(with a unit)"),
        (parse_bandwidth, "32", "(with a unit)"),
        (parse_bandwidth, "0 GB/s", "positive bandwidth"),
        (parse_bandwidth, "-3 GB/s", "positive bandwidth"),
        (parse_bandwidth, "32 GB", "unknown unit 'GB'"),
        (parse_bandwidth, "32 mb/s", "unknown unit"),
        (parse_bandwidth, True, "got True"),
        (parse_bandwidth, [1], "got a list"),
        (parse_duration, "-1 us", "non-negative duration"),
        (parse_duration, "2 weeks", "unknown unit"),
        (parse_duration, 5, "(with a unit)"),
        (parse_size, "lots", "expected a size like '80 GiB'"),
        (parse_size, "1e999 B", "finite"),
        (parse_flops, "0 TFLOP/s", "positive compute"),
    ],
)
def test_bad_values_are_one_line_errors(parse, value: object, fragment: str) -> None:
    with pytest.raises(UserError) as err:
        parse(value, "hardware.links.pcie.bandwidth")
    message = str(err.value)
    assert message.startswith("hardware.links.pcie.bandwidth: expected")
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("kind", ["bandwidth", "size", "duration", "compute"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_format_exact_round_trips(kind: str, data: st.DataObject) -> None:
    parse = {
        "bandwidth": parse_bandwidth,
        "size": parse_size,
        "duration": parse_duration,
        "compute": parse_flops,
    }[kind]
    quantity = QUANTITIES[kind]  # values within the quantity's finite range
    low, high = max(1e-9, quantity.minimum), min(1e16, quantity.maximum)
    value = data.draw(st.floats(min_value=low, max_value=high))
    assert parse(format_exact(kind, value), "f") == value


def test_format_exact_is_readable() -> None:
    assert format_exact("size", 4325376.0) == "4.325376 MB"
    assert format_exact("bandwidth", 4e9) == "4 GB/s"
    assert format_exact("duration", 1e-5) == "10 us"
    assert format_exact("compute", 989e12) == "989 TFLOP/s"
