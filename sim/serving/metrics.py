"""Per-request records of a serving run and their summaries (latency percentiles, goodput).

Definitions (docs/serving.md), all times in seconds:

* queueing delay = admitted - arrival (admitted: start of the request's first iteration);
* TTFT = first_token - arrival;
* TPOT = (finish - first_token) / (output_tokens - 1), for requests with at least 2 output
  tokens;
* end-to-end = finish - arrival.

Percentiles are numpy's default (linear interpolation) over the measured requests: every
request after the first ``warmup``. Throughput is counted over the measured window, from the
first measured arrival to the last measured finish.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sim.serving.spec import Slo

# requests.csv: the columns, in order, then what tells runs and requests apart
REQUEST_COLUMNS = (
    "policy",
    "request_id",
    "gpu",
    "arrival",
    "admitted",
    "first_token",
    "finish",
    "prompt_tokens",
    "output_tokens",
    "preempted",
    "label",
    "topk",
    "sequence",
    "wrapped",
    "measured",
)
RUN_KEYS = ("policy", "label", "topk")  # which run a row belongs to, added when writing
REQUEST_ARRAYS = tuple(c for c in REQUEST_COLUMNS if c not in RUN_KEYS)  # what a run produces
PERCENTILES = (50, 90, 99)
LATENCIES = ("queue", "ttft", "tpot", "e2e")
SERVING_SUMMARY_KEYS = (
    "requests",
    "measured",
    *(f"{m}_p{q}" for m in LATENCIES for q in PERCENTILES),
    *(f"{m}_mean" for m in LATENCIES),
    "output_tokens_per_s",
    "requests_per_s",
    "goodput",
    "slo_attainment",
    "preemptions",
    "iterations",
    "mean_batch",
    "kv_peak_share",
    "kv_mean_share",
)


def latencies(requests: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each request's queueing delay, TTFT, TPOT (NaN with one output token) and end-to-end
    time."""
    arrival = requests["arrival"]
    first, finish = requests["first_token"], requests["finish"]
    out_tokens = requests["output_tokens"].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out_tokens > 1, (finish - first) / (out_tokens - 1.0), np.nan)
    return {
        "queue": requests["admitted"] - arrival,
        "ttft": first - arrival,
        "tpot": tpot,
        "e2e": finish - arrival,
    }


def meets_slo(lat: Mapping[str, np.ndarray], slo: Slo) -> np.ndarray:
    """Per request: TTFT and TPOT within their bounds (an absent TPOT, one output token,
    passes the TPOT bound)."""
    ok = np.ones(lat["ttft"].shape, dtype=bool)
    if slo.ttft is not None:
        ok &= lat["ttft"] <= slo.ttft
    if slo.tpot is not None:
        ok &= ~(lat["tpot"] > slo.tpot)  # NaN (one output token) passes
    return ok


def summarize(
    requests: Mapping[str, np.ndarray], iterations: Mapping[str, np.ndarray], slo: Slo
) -> dict[str, float]:
    """The serving summary (`SERVING_SUMMARY_KEYS`) over the measured requests."""
    measured = requests["measured"].astype(bool)
    lat = {k: v[measured] for k, v in latencies(requests).items()}
    out: dict[str, float] = {
        "requests": float(requests["arrival"].size),
        "measured": float(np.count_nonzero(measured)),
    }
    for name, values in lat.items():
        ok = values[~np.isnan(values)]
        at = (
            np.percentile(ok, PERCENTILES).tolist()
            if ok.size
            else [float("nan")] * len(PERCENTILES)
        )
        for q, value in zip(PERCENTILES, at, strict=True):
            out[f"{name}_p{q}"] = float(value)
        out[f"{name}_mean"] = float(ok.mean()) if ok.size else float("nan")
    arrival = requests["arrival"][measured]
    finish = requests["finish"][measured]
    window = float(finish.max() - arrival.min()) if arrival.size else 0.0
    tokens = float(requests["output_tokens"][measured].sum())
    good = meets_slo(lat, slo)
    out["output_tokens_per_s"] = tokens / window if window > 0 else float("nan")
    out["requests_per_s"] = arrival.size / window if window > 0 else float("nan")
    out["goodput"] = float(np.count_nonzero(good)) / window if window > 0 else float("nan")
    out["slo_attainment"] = float(good.mean()) if good.size else float("nan")
    out["preemptions"] = float(requests["preempted"].sum())
    batch = iterations["requests"]
    out["iterations"] = float(batch.size)
    out["mean_batch"] = float(batch.mean()) if batch.size else 0.0
    budget = iterations["kv_budget_blocks"].astype(np.float64)
    share = np.divide(iterations["kv_blocks"], budget, out=np.zeros_like(budget), where=budget > 0)
    duration = iterations["t_end"] - iterations["t_start"]
    out["kv_peak_share"] = float(share.max()) if share.size else 0.0
    busy = float(duration.sum())
    out["kv_mean_share"] = float((share * duration).sum() / busy) if busy > 0 else 0.0
    return out


def time_average_in_system(iterations: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """(integral over time of the number of requests in the system, the span it covers) from
    the per-iteration record: an iteration holds its ``in_system`` requests (counted at its
    start) throughout and its ``arrivals`` half of it on average; the GPU is idle between
    iterations only when nobody is in the system."""
    if not iterations["t_start"].size:
        return 0.0, 0.0
    t0, t1 = iterations["t_start"], iterations["t_end"]
    n = iterations["in_system"] + 0.5 * iterations["arrivals"]  # per GPU: their sum is the
    return float((n * (t1 - t0)).sum()), float(t1.max() - t0.min())  # system's (one owner each)
