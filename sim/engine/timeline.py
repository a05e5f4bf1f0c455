"""Export engine timelines as Chrome trace-event JSON (open in https://ui.perfetto.dev or
chrome://tracing).

One "process" per run (its policy label, plus ``top-k`` when the run says which top-k it
simulated, as a scenario run's `ScenarioRunResult` does), one "thread" per resource (``gpu``,
``md``, ``host``, ``pcie[0]``, ``md_link[1]``, ...); every `TimelineEvent` becomes a complete
event (``"ph": "X"``) with ``ts``/``dur`` in microseconds and ``args`` step, layer, expert and
(when known) topk. The process_name event's args also carry the plain ``label`` and ``topk``,
so readers (`sim.report.load`) match processes to summary rows without parsing names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sim.atomic import write_text
from sim.engine.results import RunResult, TimelineEvent

_US = 1e6


def _resource_rank(resource: str) -> tuple[int, str]:
    """Show compute first, then links, in a stable order."""
    head = resource.split("[", 1)[0]
    order = {"gpu": 0, "md": 1, "host": 2, "pcie": 3, "md_link": 4}
    return order.get(head, 9), resource


def trace_events(results: Iterable[RunResult]) -> list[dict[str, Any]]:
    """The trace-event list for ``results`` (runs without a timeline are skipped)."""
    events: list[dict[str, Any]] = []
    for pid, result in enumerate(results, start=1):
        if result.timeline is None:
            continue
        topk = _topk(result)
        name = result.label if topk is None else f"{result.label} top-{topk}"
        extra = {} if topk is None else {"topk": topk}
        events.append(_meta("process_name", pid, 0, {"name": name, "label": result.label, **extra}))
        resources = sorted({ev.resource for ev in result.timeline}, key=_resource_rank)
        tids = {name: tid for tid, name in enumerate(resources, start=1)}
        for name, tid in tids.items():
            events.append(_meta("thread_name", pid, tid, {"name": name}))
            events.append(_meta("thread_sort_index", pid, tid, {"sort_index": tid}))
        events.extend(_event(ev, pid, tids[ev.resource], extra) for ev in result.timeline)
    return events


def _topk(result: RunResult) -> int | None:
    """The run's top-k: scenario runs carry it; a plain `RunResult` does not."""
    topk = getattr(result, "topk", None)
    return int(topk) if isinstance(topk, int) and topk > 0 else None


def write_chrome_trace(
    path: str | os.PathLike[str],
    results: Iterable[RunResult],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write the runs' timelines as one Chrome trace-event JSON file (atomically; compact,
    since a full run has millions of events). ``metadata`` goes to the format's ``otherData``
    (a scenario run puts its fingerprint there, so a report can tell whose timeline it is)."""
    payload: dict[str, Any] = {"traceEvents": trace_events(results), "displayTimeUnit": "ms"}
    if metadata:
        payload["otherData"] = metadata
    return write_text(path, json.dumps(payload, separators=(",", ":")) + "\n")


def _meta(name: str, pid: int, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ph": "M", "pid": pid, "tid": tid, "args": args}


def _event(ev: TimelineEvent, pid: int, tid: int, extra: dict[str, Any]) -> dict[str, Any]:
    label = ev.kind if ev.expert < 0 else f"{ev.kind} e{ev.expert}"
    return {
        "name": label,
        "cat": ev.kind,
        "ph": "X",
        "pid": pid,
        "tid": tid,
        # 1 ps resolution: small files, and events stay inside their layer's interval to 1e-12 s
        "ts": round(ev.start * _US, 6),
        "dur": round((ev.end - ev.start) * _US, 6),
        "args": {"step": ev.step, "layer": ev.layer, "expert": ev.expert, **extra},
    }
