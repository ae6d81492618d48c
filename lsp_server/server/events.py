"""What the editor tells besides documents: each change's typing rhythm and edited region, shown/accepted events,
and the prefetch of the next completion once a suggestion is accepted.

In: ``didChange`` params after pygls applied them, ``codellama/event`` (``messages.Event``). Out: the pacer's
rhythm (time budget, advised debounce), the ring of edited regions (``neighbors``), local counts that ride along
in the status (nothing is sent anywhere), and a prefetch (``prefetch.Prefetcher``) whose answer a request for the
same place joins.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
from lsprotocol import types

from .. import config, context, messages, pipeline
from .documents import Documents

log = logging.getLogger("lsp_server.server")


class Events(Documents):
    def changed(self, params: types.DidChangeTextDocumentParams) -> None:
        """After pygls applied a change: the typing rhythm, the ring of edited regions, and a prefetch
        when the change is an accepted suggestion."""
        uri = params.text_document.uri
        self.pacer.keystroke(uri)
        doc = self.workspace.text_documents.get(uri)
        if doc is None or self.is_excluded(doc):
            return
        line = next(
            (c.range.start.line for c in params.content_changes if isinstance(c, types.TextDocumentContentChangePartial)), 0
        )
        view = self.neighbor_view(doc)
        self.neighbors.ring.edited(view, line)
        self.prefetch_if_accepted(doc, view.text)

    def event(self, event: messages.Event) -> None:
        """A shown/accepted event counted; an accepted one with its document starts the next completion."""
        self.events[(event.kind, event.language_id)] += 1
        log.debug("event %s (%s): %d so far", event.kind, event.language_id, self.events[(event.kind, event.language_id)])
        doc = self.document(event.uri) if event.kind == "accepted" and event.uri is not None else None
        if doc is not None and not self.is_excluded(doc):
            self.prefetch_if_accepted(doc, context.lf_text(doc.source))

    def prefetch_if_accepted(self, doc: Any, text: str) -> None:
        """When ``text`` is the last suggestion accepted into ``doc``, start the next completion now."""
        engine, offset = self.engine, self.cache.accepted(doc.uri, text)
        if engine is None or offset is None or not self.settings.enabled_for(doc.language_id):
            return
        rid = f"p{next(self._ids)}"
        settings = self.paced_settings()
        log.info("%s: suggestion accepted in %s; prefetching the next one", rid, doc.uri.rsplit("/", 1)[-1])
        self.prefetcher.start(
            doc.uri, text, offset,
            lambda: pipeline.complete(engine, self.cache, doc.uri, text, offset, settings, 1, rid, self.extra_for(doc, text), doc.language_id),
        )  # fmt: skip

    def paced_settings(self) -> config.Settings:
        """The settings with the time budget the user's typing allows (pacing); ``timeBudgetMs`` stays the cap."""
        return attrs.evolve(self.settings, time_budget_ms=self.pacer.budget_ms(self.settings.time_budget_ms))
