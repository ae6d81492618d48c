"""One completion request: document and position -> texts, the range they replace, the word before the cursor.

In: a URI, a position and an item count (``inlineCompletion`` asks for ``maxItems`` when invoked, 1 otherwise).
Out: completions in the document's newline style, or None. Files matching ``exclude`` are refused (privacy: they
never reach a prompt); a prefetched answer for the same place is joined; otherwise ``pipeline.complete`` runs (it
awaits the engine's worker thread, so the event loop stays free). A reply is dropped when the document's text
changed while the model ran, so stale text never reaches the editor. A notebook cell is completed with the
notebook's other code cells around it (``Documents.cells_around``). One log line per request gives the timings.
"""

from __future__ import annotations

import asyncio
import logging
import time

from lsprotocol import types

from .. import context, pipeline
from ..engines import EngineError, GenerationResult
from ..engines.remote import RemoteEngine
from .documents import edit_point
from .events import Events

log = logging.getLogger("lsp_server.server")


class Completing(Events):
    async def complete_at(
        self, uri: str, position: types.Position, n: int, selected: types.SelectedCompletionInfo | None = None
    ) -> tuple[list[str], types.Range, str] | None:
        """Completions at ``position`` (texts in the document's newline style), the range they replace and
        the identifier characters just before the cursor (for ``textDocument/completion`` items)."""
        rid = f"r{next(self._ids)}"
        doc = self.document(uri)
        if doc is None:
            why = "too big to follow (no completions for it)" if self.is_too_big(uri) else "not open"
            log.info("%s: %s is %s; nothing to complete", rid, uri, why)
            return None
        if not self.settings.enabled_for(doc.language_id) or self.is_excluded(doc):
            return None  # privacy: an excluded file never gets a completion (so never reaches a prompt)
        engine = self.engine
        if engine is None:
            log.info("%s: no model (%s)", rid, self.error or self.state)
            return None
        t0 = time.perf_counter()
        generation = self.protocol.text_generation(uri)
        source = doc.source
        newline = context.document_newline(source)
        encoding = self.workspace.position_encoding or types.PositionEncodingKind.Utf16
        settings = self.paced_settings()
        # A big document goes on as the part a prompt can reach: no request holds (or walks) the whole text while it
        # waits, and the text's changes are told by the generation, not by comparing it.
        at = edit_point(source, position, selected, encoding, self.lines.get(uri, source), settings.context_tokens)
        before, after = self.cells_around(doc)  # a notebook cell: the other cells around it
        text, offset = before + at.text + after, len(before) + at.offset
        head, rng, word, line = at.head, at.range, at.word, at.line + before.count("\n")
        extra, language_id = self.extra_for(doc, text), doc.language_id
        del source, at, doc
        t_in = (time.perf_counter() - t0) * 1e3
        try:
            with self.running() as job:
                prefetched = await self.prefetcher.join(uri, text, offset) if selected is None else None
                if prefetched is not None:  # computed after the accepted suggestion, before this request came
                    result = pipeline.Completion(
                        texts=prefetched.texts[: max(1, n)], source="cache" if prefetched.texts else "none"
                    )
                else:
                    result = await pipeline.complete(
                        engine,
                        self.cache,
                        uri,
                        text,
                        offset,
                        settings,
                        n,
                        rid,
                        extra,
                        language_id,
                        line,
                    )
                r = result.result
                # the model's answer (a cache hit or a superseded job has no latency worth showing)
                if r is not None and r.stop not in ("cancelled", "superseded"):
                    job.answered = True
                    self.last_latency_ms = r.total_ms
                    self.cuts.finished(r.stop, settings.time_budget_ms, self.settings.time_budget_ms)
                # a prefetch's answer is news too: the status shows its hit (prefetchHits), though not a latency
                if prefetched is not None:
                    job.answered = True
        except EngineError as exc:
            log.log(logging.INFO if isinstance(engine, RemoteEngine) and engine.down else logging.ERROR, "%s: %s", rid, exc)
            self.send_status("error", str(exc))
            return None
        except asyncio.CancelledError:  # $/cancelRequest: the engine job was cancelled on the way out
            log.info("%s: cancelled by the client after %.1f ms", rid, (time.perf_counter() - t0) * 1e3)
            raise
        t1 = time.perf_counter()
        if self.protocol.text_generation(uri) != generation:  # the text changed (not only the version), or it closed
            log.debug("%s: document changed while completing; dropped", rid)
            return None
        texts = [context.to_document_newlines(head + t, newline) for t in result.texts]
        if r is not None and result.source != "cache":
            self.pacer.finished(r.total_ms)
        cells = f"; notebook cells around: {len(before)} chars above, {len(after)} below" if before or after else ""
        log.info(
            "%s %s: %d item(s) from %s; handler %.2f ms + pipeline %.2f ms; engine %s%s%s",
            rid, uri.rsplit("/", 1)[-1], len(texts), result.source, t_in, result.pipeline_ms, engine_summary(r),
            cut_reason(r, settings.time_budget_ms, self.settings.time_budget_ms), cells,
        )  # fmt: skip
        self.overhead_ms = t_in + result.pipeline_ms + (time.perf_counter() - t1) * 1e3
        return texts, rng, word


def engine_summary(r: GenerationResult | None) -> str:
    """The engine's part of a request's log line: timings, why it stopped, the prompt tokens reused (of them moved by
    KV shifting) and evaluated, and the tokens of a kept prompt restored from host memory."""
    if r is None:
        return "-"
    return (
        f"{r.total_ms:.1f} ms (prompt {r.prompt_ms:.1f}, generation {r.generate_ms:.1f}), stop={r.stop}, "
        f"prompt={r.prompt_tokens} reused={r.reused_tokens} "
        f"evaluated={r.evaluated_tokens} generated={r.generated_tokens} moved={r.moved_tokens} restored={r.restored_tokens}"
        + (f" threads={r.threads}" if r.threads else "")
    )


def cut_reason(r: GenerationResult | None, budget_ms: int, configured_ms: int) -> str:
    """For the log line of a request the time budget cut: which budget, and where it came from."""
    if r is None or r.stop != "time":
        return ""
    if budget_ms < configured_ms:
        return f"; cut by the adaptive time budget, {budget_ms} ms (typing pauses; timeBudgetMs {configured_ms} is its cap)"
    return f"; cut by the time budget, timeBudgetMs {budget_ms}"
