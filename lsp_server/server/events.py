"""What the editor tells besides documents: each change's typing rhythm and edited region, shown/accepted events,
where the cursor rests, and the prefetch of the next completion once a suggestion is accepted.

In: ``didChange`` params after pygls applied them, ``codellama/event`` (``messages.Event``). Out: the pacer's
rhythm (time budget, advised debounce), the ring of edited regions (``neighbors``), local counts that ride along
in the status (nothing is sent anywhere), a prefetch (``prefetch.Prefetcher``) whose answer a request for the
same place joins, and prefills (``prefill``): of a place where the cursor rests, stopped by any key.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
from lsprotocol import types

from .. import config, context, messages, pipeline
from .documents import VIEW_FROM
from .prefill import Prefilling

log = logging.getLogger("lsp_server.server")


class Events(Prefilling):
    def changed(self, params: types.DidChangeTextDocumentParams) -> None:
        """After pygls applied a change: the typing rhythm, the ring of edited regions, and a prefetch
        when the change is an accepted suggestion."""
        uri = params.text_document.uri
        self.pacer.keystroke(uri)
        stopped = self.cancel_prefill()  # any key: a prefill of the old text stops (what it evaluated stays)
        doc = self.workspace.text_documents.get(uri)
        if doc is None or self.is_excluded(doc):
            return
        partial = [c for c in params.content_changes if isinstance(c, types.TextDocumentContentChangePartial)]
        line = partial[0].range.start.line if partial else 0
        # the ring cuts the edited block from the text as sent (found through the line index, normalised to LF
        # itself): a keystroke in a big CRLF document does not normalise the whole text
        source = doc.source
        self.neighbors.ring.edited(self.neighbor_view(doc, source), line, self.lines.get(uri, source))
        accepted = len(source) <= VIEW_FROM and self.prefetch_if_accepted(doc, context.lf_text(source))
        if not accepted and partial:
            encoding = self.workspace.position_encoding or types.PositionEncodingKind.Utf16
            at = _after(partial[-1], encoding)
            self.reaim_prefill(stopped, uri, *at)
            self.prefill_if_moved(uri, *at)

    def opened(self, uri: str) -> None:
        """A document was opened (pygls holds it already): the privacy check of ``Documents.opened``, then its
        first place prefilled."""
        super().opened(uri)
        self.prefill_opened(uri)

    def event(self, event: messages.Event) -> None:
        """A shown/accepted event counted; an accepted one with its document starts the next completion; a cursor
        resting at a new place prefills it."""
        if event.kind == "cursor":
            if event.uri is not None and event.position is not None and self.document(event.uri) is not None:
                self.prefill_if_moved(event.uri, event.position.line, event.position.character, "cursor rests at a new place")
            return
        self.events[(event.kind, event.language_id)] += 1
        log.debug("event %s (%s): %d so far", event.kind, event.language_id, self.events[(event.kind, event.language_id)])
        doc = self.document(event.uri) if event.kind == "accepted" and event.uri is not None else None
        if doc is not None and not self.is_excluded(doc):
            self.prefetch_if_accepted(doc, context.lf_text(doc.source))

    def prefetch_if_accepted(self, doc: Any, text: str) -> bool:
        """When ``text`` is the last suggestion accepted into ``doc``, start the next completion now (True)."""
        if len(text) > VIEW_FROM:
            return False  # a big document's requests see a view of it (documents.view_around), its cache entries too
        engine, offset = self.engine, self.cache.accepted(doc.uri, text)
        if engine is None or offset is None or not self.settings.enabled_for(doc.language_id):
            return False
        rid = f"p{next(self._ids)}"
        settings = self.paced_settings()
        log.info("%s: suggestion accepted in %s; prefetching the next one", rid, doc.uri.rsplit("/", 1)[-1])
        self.prefetcher.start(
            doc.uri, text, offset,
            lambda: pipeline.complete(engine, self.cache, doc.uri, text, offset, settings, 1, rid, self.extra_for(doc, text), doc.language_id),
        )  # fmt: skip
        return True

    def paced_settings(self, new_place: bool = False) -> config.Settings:
        """The settings with the time budget the user's typing allows (pacing; ``timeBudgetMs`` stays the cap) and
        the prompt sizes the engine's measured speed allows (``coldJumpMs``; chosen again only for a ``new_place``)."""
        s = attrs.evolve(self.settings, time_budget_ms=self.pacer.budget_ms(self.settings.time_budget_ms))
        return self.sized(s, new_place)

    def sized(self, s: config.Settings, resize: bool = True) -> config.Settings:
        """``s`` with ``contextTokens``/``extraContextTokens`` chosen so that a cold jump fits ``coldJumpMs`` (or three
        quarters of a larger ``timeBudgetMs``) on this engine (its ``speed``), where the user left them at their
        defaults; what was chosen and why is logged.

        Sizes are chosen again only when ``resize`` (the prefill of a new place: its prompt is evaluated anew anyway);
        between two new places the last sizes hold. A size that changed while the user typed at one place would move
        the windows under the keys, and each key would evaluate the place's prompt again: on a busy machine, where the
        measured speed swings 2-3x, the 92 M model's keys evaluated 13.3 tokens on average instead of 1 that way."""
        speed = getattr(self.engine, "speed", None)
        defaults = config.Settings()
        auto_ctx = s.context_tokens == defaults.context_tokens
        auto_extra = s.extra_context_tokens == defaults.extra_context_tokens
        if s.cold_jump_ms <= 0 or speed is None or speed.prompt_tps <= 0 or not (auto_ctx or auto_extra):
            return s
        before = self.sizer.sizes
        # a time budget raised above the default says slower answers are welcome: the target follows it
        target = max(s.cold_jump_ms, self.settings.time_budget_ms * 3 // 4)
        got = before if before is not None and not resize else self.sizer.choose(
            speed.prompt_tps, speed.gen_ms, target, s.context_tokens, s.extra_context_tokens,
            getattr(speed, "ms_per_position", 0.0),
        )  # fmt: skip
        if got != before:
            log.info(
                "prompt size: contextTokens %d, extraContextTokens %d (%s)", got.context_tokens, got.extra_context_tokens, got.why
            )
        return attrs.evolve(
            s,
            context_tokens=got.context_tokens if auto_ctx else s.context_tokens,
            extra_context_tokens=got.extra_context_tokens if auto_extra else s.extra_context_tokens,
        )


def _after(change: types.TextDocumentContentChangePartial, encoding: str) -> tuple[int, int]:
    """Where the cursor is after ``change``: the end of its inserted text (line, character in ``encoding`` units)."""
    start, text = change.range.start, change.text
    if "\n" not in text:
        return start.line, start.character + context.units_of(text, encoding)
    return start.line + text.count("\n"), context.units_of(text.rsplit("\n", 1)[-1], encoding)
