"""Daemon threads for what cannot be interrupted (a llama.cpp load, an engine's close), as event-loop futures.

In: a blocking function. Out: an ``asyncio.Future`` of its result; the thread never keeps the process alive, so
Ctrl-C, SIGTERM or a load timeout never wait for llama.cpp. ``busy_threads`` tells the CLI whether any still run.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_THREADS: set[threading.Thread] = set()  # loads and closes still running (the CLI does not wait for them)


def in_daemon_thread(fn: Callable[..., T], *args: Any, orphan: Callable[[T], None] | None = None) -> asyncio.Future[T]:
    """``fn(*args)`` on a daemon thread, as a future of the event loop.

    Unlike ``asyncio.to_thread`` the thread never keeps the process alive: a llama.cpp load cannot be
    interrupted, and Ctrl-C, SIGTERM or a timeout must not wait for it. When the future was cancelled
    meanwhile (a timeout), ``orphan`` gets the result instead (to close an engine nobody will use).
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if fut.cancelled():
            if ok and orphan is not None:
                threading.Thread(target=orphan, args=(value,), daemon=True).start()
        elif ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)

    def run() -> None:
        try:
            result: tuple[bool, Any] = (True, fn(*args))
        except Exception as exc:
            result = (False, exc)
        finally:
            _THREADS.discard(threading.current_thread())
        try:
            loop.call_soon_threadsafe(deliver, *result)
        except RuntimeError:  # the loop has closed: the server is ending
            pass

    thread = threading.Thread(target=run, name=getattr(fn, "__name__", "worker"), daemon=True)
    _THREADS.add(thread)
    thread.start()
    return fut


def busy_threads() -> int:
    """Loads or closes still running on daemon threads."""
    return sum(t.is_alive() for t in list(_THREADS))
