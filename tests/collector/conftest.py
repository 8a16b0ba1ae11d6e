"""Fixtures for collector tests: ``collector_factory`` starts real meshwatch-collector processes."""

from meshwatch.collector.testing import collector_factory  # noqa: F401 - re-exported fixture
