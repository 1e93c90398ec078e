"""Shared fixtures live in tests/fixtures/, one module per real peer."""

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.board",
    "tests.fixtures.cloud",
    "tests.fixtures.rig",
    "tests.browser",
]
