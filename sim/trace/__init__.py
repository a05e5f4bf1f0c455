"""Routing traces: the one in-memory type (`RoutingTrace`) and everything that makes one."""

from sim.trace.routing import RoutingTrace, TraceMeta

__all__ = ["RoutingTrace", "TraceMeta"]
