"""The one boundary where a command-line tool turns what went wrong into one line on stderr and an exit status.

Every command runs its body through ``run_tool``: ``codellama-lsp`` (serve, ``complete``, ``eval``),
``codellama-convert``, ``codellama-verify``, ``codellama-quantize`` and ``python -m quantize.pipeline``,
``quantize.report``, ``quantize.imatrix``, ``model_train.train|eval|ship``. What goes in: the tool's name (its argparse ``prog``), the body, and
the package's exception types that carry a user-facing ``expected ..., got ...`` message. What comes out
(documented for users in docs/cli.md):

- the body's own status: 0, or ``FAILURE`` where the body reports a failed check (``codellama-verify``);
- ``FAILURE`` (1) with ``NAME: error: expected ..., got ...`` for a package error (a bad input file, a model
  that does not load, an engine that does not answer, an output that cannot be written);
- ``USAGE`` (2) with the same kind of line for bad usage: argparse's own errors, and ``UsageError`` for a value
  argparse cannot check (an empty token file, a non-positive timeout);
- 130 / 143 with ``NAME: interrupted, no output written`` for Ctrl-C / SIGTERM (SIGTERM raises ``Terminated``
  while the body runs, so ``finally`` blocks remove temporary files as they do for Ctrl-C).

A traceback means a bug: anything else propagates.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

FAILURE = 1
USAGE = 2  # argparse's own status for bad usage


class UsageError(Exception):
    """A command-line value argparse cannot check itself; reported like argparse's errors, status ``USAGE``."""


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as Ctrl-C raises ``KeyboardInterrupt`` (not an ``Exception``:
    ``except Exception`` blocks must not swallow it)."""


def exit_code(exc: BaseException) -> int:
    """The shell's exit status for a run ended by a signal: 128 + SIGINT = 130, 128 + SIGTERM = 143."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises ``Terminated`` in the main thread, so ``finally`` blocks (temporary
    files) run as they do for Ctrl-C. Outside the main thread (where Python cannot install handlers) a no-op."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def error_line(name: str, message: object) -> None:
    """Print the one ``NAME: error: MESSAGE`` line every tool uses (argparse's format)."""
    print(f"{name}: error: {message}", file=sys.stderr, flush=True)


def run_tool(
    name: str,
    body: Callable[[], int | None],
    errors: tuple[type[Exception], ...],
    *,
    interrupted: Callable[[BaseException], int] = exit_code,
) -> int:
    """Run ``body`` and return the exit status (see the module docstring).

    ``interrupted`` maps the Ctrl-C / SIGTERM exception to the status; the quantizer passes one that ends the
    process at once when llama.cpp still runs in a worker thread.
    """
    try:
        with sigterm_raises():
            code = body()
    except UsageError as exc:
        error_line(name, exc)
        return USAGE
    except errors as exc:
        error_line(name, exc)
        return FAILURE
    except (KeyboardInterrupt, Terminated) as exc:
        print(f"{name}: interrupted, no output written", file=sys.stderr, flush=True)
        return interrupted(exc)
    return code or 0


__all__ = ["FAILURE", "USAGE", "Terminated", "UsageError", "error_line", "exit_code", "run_tool", "sigterm_raises"]
