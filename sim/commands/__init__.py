"""CLI command modules: each defines ``register(subparsers)``; `sim.cli` discovers them."""
