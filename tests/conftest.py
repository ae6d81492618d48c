"""Shared pytest set-up. Fixture modules live in tests/fixtures/ and are registered here as plugins."""

import os

# Before torch loads (the plugins below import it): its OpenMP threads sleep at barriers instead of spinning.
# On a machine whose cores other processes hold, spinning made a training step of the micro model's size 7x
# slower (1,132-1,280 against 151-180 ms at load average 15 on 2 cores), and training the micro model outlived
# the test run's timeout. The wait policy changes no arithmetic: the trained weights are the same.
# (llama.cpp, in the tests' processes and the servers they start, gets the same: it is the user's own setting.)
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
# llama.cpp's last bits depend on its thread count, and many tests compare greedy output token by token across
# engines and runs: the thread count stays fixed here instead of following the machine's load (the engine's default;
# tests/test_busy_machine.py turns it back on where it tests it).
os.environ.setdefault("CODELLAMA_ADAPTIVE_THREADS", "0")

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
