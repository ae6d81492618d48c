"""Speculative prefetch after an accepted suggestion: compute the next completion before it is asked for.

In: document changes (the LF text after each change) and ``codellama/event`` "accepted" reports. Out: a
background completion at the cursor after the accepted text, whose answer the next request gets.

When the user accepts a suggestion, the editor asks for the next one at once, at the end of the
inserted text. The server sees the change first: if the new text is the last request's text with one of
its completions inserted at its cursor (``TypeThroughCache.accepted``; the client's "accepted" event
says the same), the completion at the new cursor starts right away. The request that follows waits for
it (``join``) instead of starting over, and is answered with the prefetch's result: a cache hit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from .engines import EngineError

log = logging.getLogger(__name__)


class Prefetcher:
    def __init__(self) -> None:
        self._task: asyncio.Task[Any] | None = None
        self._key: tuple[str, str, int] | None = None
        self.started = 0  # prefetches started
        self.hits = 0  # requests that found their prefetch (finished or still running)

    def start(self, uri: str, text: str, offset: int, run: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Start ``run()`` (the completion of ``uri`` at ``offset`` in ``text``) in the background."""
        if self._key == (uri, text, offset):
            return  # the same prefetch is on its way (a change and an "accepted" event both saw it)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._key = (uri, text, offset)
        self.started += 1
        self._task = asyncio.get_running_loop().create_task(run())
        self._task.add_done_callback(_log_failure)

    async def join(self, uri: str, text: str, offset: int) -> Any:
        """Before a request for ``uri`` at ``offset`` in ``text``: wait for the prefetch of exactly that
        request, if there is one, and return what it returned (a ``pipeline.Completion``; its texts are
        in the type-through cache too); None when there was none, or it was cancelled or failed."""
        task = self._task
        if self._key != (uri, text, offset) or task is None:
            return None
        self._key = None
        try:
            done = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # this request itself was cancelled
            return None
        except EngineError:  # the prefetch failed: the request runs on its own
            return None
        if done.result is not None and done.result.stop in ("cancelled", "superseded"):
            return None
        self.hits += 1
        return done

    @property
    def hit_rate(self) -> float:
        return self.hits / self.started if self.started else 0.0


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("prefetch failed: %s", task.exception())
