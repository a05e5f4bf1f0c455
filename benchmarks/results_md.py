"""benchmarks/RESULTS.md: each benchmark owns one ``## ...`` section and replaces only that,
and says which machine it ran on."""

from __future__ import annotations

import platform
import re
from pathlib import Path

from sim.atomic import write_text

RESULTS = Path(__file__).with_name("RESULTS.md")


def record_section(section: str, text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section headed ``section`` with ``text``, keeping the others."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = f"{section}\n\n{text.strip()}\n\n"
    if pattern.search(old):
        new = pattern.sub(lambda _m: block, old)
    else:
        new = old.rstrip() + "\n\n" + block
    write_text(path, new.rstrip() + "\n")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
