"""Shared fixtures. Service fixtures live in tests/services.py and load lazily."""

pytest_plugins = ["tests.services"]
