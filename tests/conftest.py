"""Fixtures shared by test modules: ``world``, the inputs of the reliability tests
(tests/attack_world.py), built once per test process."""

from attack_world import world  # noqa: F401 (a fixture: pytest finds it here)
