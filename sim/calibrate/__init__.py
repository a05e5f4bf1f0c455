"""Calibration on a real GPU and the fidelity harness (docs/calibration.md, docs/fidelity.md).

* `sim.calibrate.measure`: what is measured (host-to-device copies, one expert's FFN) and the
  records that hold it; the measuring itself goes through a `Backend`.
* `sim.calibrate.fit`: least-squares fits (``t = L + S/B`` per memory kind and stream count, a
  roofline for the expert) and the preset document `moesim calibrate` writes.
* `sim.calibrate.fidelity`: replay a short trace for real and compare each step's measured
  latency with the simulator's prediction.
* `sim.calibrate.backend`: the `Backend` interface, the replay plan, and `FakeBackend` (a
  deterministic synthetic machine that tests everything above without a GPU);
  `sim.calibrate.cuda`: the CUDA backend (torch, imported only when used).
"""
