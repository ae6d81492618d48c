"""Shared pytest set-up. Fixture modules live in tests/fixtures/ and are registered here as plugins."""

pytest_plugins = [
    "tests.fixtures.checkpoints",
    "tests.fixtures.micro_model",
]


import logging  # noqa: E402

import pytest  # noqa: E402


def _drop_closed_log_handlers() -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and getattr(h.stream, "closed", False):
            root.removeHandler(h)


@pytest.fixture(autouse=True)
def _no_stale_log_handlers():
    """The CLIs configure the root logger on stderr, as a process of their own should. Run in-process by a
    test, that stderr is pytest's capture, closed after the test; a later test's logging (llama.cpp's log
    callback among it) would then print "Logging error" tracebacks into its own captured output."""
    _drop_closed_log_handlers()
    yield
    _drop_closed_log_handlers()
