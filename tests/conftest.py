"""Shared pytest set-up. Fixture modules live in tests/fixtures/ and are registered here as plugins."""

pytest_plugins = [
    "tests.fixtures.checkpoints",
    "tests.fixtures.micro_model",
]
