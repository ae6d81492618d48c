"""Prefill: evaluate the prompt of a place before the first key asks for it, in the background.

In: a document opened (``didOpen``: its first place, whose prompt starts with the other files' chunks that the
document's later places share), the cursor resting at a new place (the clients' ``codellama/event`` of kind
``cursor``: LSP sends no cursor moves, so the editors say where the cursor rests, before the first key there) and
an edit at a new place (``didChange``: the request for it follows after the client's debounce). A place is new when
it is more than ``NEW_PLACE_LINES`` lines from the last place (cursor or edit) or in another document. Out: a
background request to the in-process engine (``GenerationRequest.background``) with the prompt a completion there
would have; what it evaluates stays in the engine's cache (or its kept prompts) for the request that follows.

It never gets in a request's way: nothing is started while a completion runs, any key stops it (``cancel_prefill``:
what it evaluated stays, and the request continues from there; a key at the place being prefilled restarts it on
the text after the key, ``reaim_prefill``, so the client's debounce is not lost), the engine drops a background request while a real
one waits or runs and stops it between two small chunks when one comes (``engines.llama_cpp``), and prompts are
built on a worker thread. Excluded files and disabled languages get none; remote engines neither (a server would
generate for it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from dataclasses import replace

from lsprotocol import types

from .. import config, context, pipeline
from ..engines import GenerationResult
from .documents import Documents, edit_point

log = logging.getLogger("lsp_server.server")

NEW_PLACE_LINES = 32  # an edit this many lines from the last one (or in another document) is at a new place
PREFILL_BUDGET_S = 120.0  # a prefill's own cap; any real request stops it sooner


class Prefilling(Documents):
    _prefill_task: asyncio.Task[None] | None = None
    _last_place: tuple[str, int] | None = None
    _prefill_of: tuple[str, str] | None = None  # the running prefill's document and reason
    prefills = 0  # prefills submitted to the engine

    def paced_settings(self, new_place: bool = False) -> config.Settings:  # events.Events: the settings a request gets now
        raise NotImplementedError

    def prefill_opened(self, uri: str) -> None:
        """``uri`` was opened: prefill its first place."""
        self._prefill(uri, 0, 0, "opened", new_place=True)

    def prefill_if_moved(self, uri: str, line: int, character: int, why: str = "edited at a new place") -> None:
        """The cursor is at ``line:character`` of ``uri`` (after an edit, or resting there): prefill there when that
        is a new place."""
        last, self._last_place = self._last_place, (uri, line)
        if last is not None and last[0] == uri and abs(last[1] - line) < NEW_PLACE_LINES:
            return
        self._prefill(uri, line, character, why, new_place=True)

    def cancel_prefill(self) -> tuple[str, str] | None:
        """A key: the prefill running stops (between two chunks; what it evaluated stays for the request). Returns
        the document and the reason of the one stopped (None: none was running)."""
        if self._prefill_task is not None and not self._prefill_task.done():
            self._prefill_task.cancel()
            return self._prefill_of
        return None

    def reaim_prefill(self, stopped: tuple[str, str] | None, uri: str, line: int, character: int) -> None:
        """A key stopped a prefill of this document's place: evaluate on from the text after the key (what it
        evaluated is reused), so the time until the key's request comes (the client's debounce) is not lost. The
        request supersedes it between two chunks."""
        if stopped is None or stopped[0] != uri or self._last_place is None or self._last_place[0] != uri:
            return
        if abs(self._last_place[1] - line) >= NEW_PLACE_LINES:
            return  # a new place: prefill_if_moved starts its own
        self._prefill(uri, line, character, stopped[1])

    def _prefill(self, uri: str, line: int, character: int, why: str, new_place: bool = False) -> None:
        """``new_place``: the prompt sizes may be chosen again (``Events.sized``)."""
        engine = self.engine
        doc = self.document(uri)
        if engine is None or doc is None or engine.info.kind != "llama.cpp" or self._inflight:
            return
        if not self.settings.enabled_for(doc.language_id) or self.is_excluded(doc):
            return  # privacy: an excluded file never reaches a prompt
        if self._prefill_task is not None and not self._prefill_task.done():
            self._prefill_task.cancel()
        settings = self.paced_settings(new_place)
        encoding = self.workspace.position_encoding or types.PositionEncodingKind.Utf16
        source = doc.source
        # where a request there would point, in the text it would see (a big document: the part its prompt reaches)
        at = edit_point(source, types.Position(line=line, character=character), None, encoding, self.lines.get(uri, source),
                        settings.context_tokens)  # fmt: skip
        before, after = self.cells_around(doc)  # a notebook cell: as its completions will see it
        text, offset, line = before + at.text + after, len(before) + at.offset, at.line + before.count("\n")
        extra = self.extra_for(doc, text)
        del doc, source, at
        rid = f"f{next(self._ids)}"
        name = uri.rsplit("/", 1)[-1]
        self._prefill_of = (uri, why)

        async def run() -> None:
            cur = context.cursor(text, offset, line)
            request, _ctx = await asyncio.to_thread(
                pipeline.build_request, engine, text, offset, settings, 1, rid, cur, None, extra
            )
            if self._inflight or engine is not self.engine:  # a completion started meanwhile: it goes first
                return
            job = engine.submit(replace(request, background=True, time_budget_s=PREFILL_BUDGET_S, request_id=rid))
            self.prefills += 1
            log.info("%s prefill %s (%s): %d prompt tokens submitted", rid, name, why, len(request.prompt))
            # logged when the engine is done with it, also when a key stopped it: what it evaluated is counted
            job.future.add_done_callback(lambda f: _log_result(rid, name, why, f))
            try:  # shielded: a cancelled wait must not cancel the engine's future, whose result says what was evaluated
                await asyncio.shield(asyncio.wrap_future(job.future))
            except asyncio.CancelledError:
                job.cancel("superseded")
                raise

        self._prefill_task = asyncio.get_running_loop().create_task(run())
        self._prefill_task.add_done_callback(_log_failure)


def _log_result(rid: str, name: str, why: str, done: concurrent.futures.Future[GenerationResult]) -> None:
    if done.cancelled() or done.exception() is not None:
        return  # the task's own failure log says why
    r = done.result()
    log.info(
        "%s prefill %s (%s): stop=%s prompt=%d reused=%d evaluated=%d in %.1f ms",
        rid, name, why, r.stop, r.prompt_tokens, r.reused_tokens, r.evaluated_tokens, r.prompt_ms,
    )  # fmt: skip


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("prefill failed: %s", task.exception())
