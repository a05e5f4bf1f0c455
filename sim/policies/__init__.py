"""Placement policies. Importing this package registers every built-in policy."""

from sim.policies.base import (
    GateDecision,
    GateView,
    Path,
    Policy,
    PolicyContext,
    PolicyError,
    available_policies,
    make_policy,
    register_policy,
)

__all__ = [
    "GateDecision",
    "GateView",
    "Path",
    "Policy",
    "PolicyContext",
    "PolicyError",
    "available_policies",
    "make_policy",
    "register_policy",
]
