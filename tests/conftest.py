"""Shared fixtures: the real backends come from the stack runner (see meshwatch.stack.testing)."""

pytest_plugins = ["meshwatch.stack.testing"]
