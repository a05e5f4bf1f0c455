"""Serving workloads: requests arrive, are batched iteration by iteration, and are measured.

A scenario's ``workload: serving`` section (docs/serving.md) replaces today's lockstep batch
by a stream of requests. The parts, each with one job:

* `sim.serving.spec`: the resolved workload (arrivals, lengths, scheduler, memory, SLO);
* `sim.serving.requests`: the request list (Poisson, Gamma or a CSV such as the Azure traces);
* `sim.serving.routing`: each request's routing from one trace sequence, and an iteration's
  expert demand (the union of its tokens' experts, with token counts);
* `sim.serving.memory`: HBM accounting (non-expert weights, KV cache, expert cache, staging);
* `sim.serving.scheduler`: continuous batching as a deterministic state machine;
* `sim.serving.metrics`: per-request and per-iteration records and their summaries.
"""
