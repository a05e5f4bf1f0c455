"""The pre-rewrite engine (issue 21), kept verbatim as the test oracle.

`simulate` here is the engine as it was before the per-GPU processes, iteration sources and
named links: tests/test_engine_oracle.py asserts the new engine gives its results bit for bit
on random traces, hardware and policies. Only the imports were changed (to this package), and
`Hardware.link(name)` is the one accessor it needs from the hardware. Changes of the model
that landed while the engine was rewritten are applied here as they were to the old engine
(issue 15: late prefetches counted apart from hits, per-step non-expert time), so that the
oracle stays the old engine with today's rules. Otherwise: do not edit.
"""

from oracle_engine.simulate import simulate

__all__ = ["simulate"]
