"""The language server: pygls plumbing around ``pipeline.complete``.

In: JSON-RPC over stdio or TCP from an editor. Out: inline completions (``textDocument/inlineCompletion``),
the same completion as a single ``textDocument/completion`` item, ``codellama/status`` notifications
(loading with a percentage, ready, busy, error, with the model name, the latency of the last model answer
and the number of cached tokens), ``$/progress`` with percentages while a model loads, and
``window/showMessage`` for bad settings and model errors. "busy" is sent only when a request has waited
for the engine longer than ``BUSY_AFTER_S``, so a status bar does not flicker on every key.

Handlers are adapters: they read the document and position, call ``pipeline.complete`` (which awaits
the engine's worker thread, so the event loop stays free), and shape the reply. Documents are kept by
pygls with incremental sync; positions arrive in the negotiated encoding (UTF-16 unless the client
offered UTF-8/32) and are converted by ``context.offset_at``. A reply is dropped when the document
changed while the model was running, so stale text never reaches the editor.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer

from . import config, context, models, pipeline
from .cache import TypeThroughCache
from .engines import EngineError
from .engines.llama_cpp import EngineOptions, LlamaCppEngine

log = logging.getLogger(__name__)

STATUS = "codellama/status"
EVENT = "codellama/event"  # client -> server: {kind: "shown" | "accepted", languageId?}; counted locally only
_WORD_BEFORE = re.compile(r"\w+\Z")
VERSION = "0.1.0"
BUSY_AFTER_S = 0.3  # a request running longer than this shows "busy"; shorter ones leave "ready" alone


@dataclass(frozen=True)
class ServerOptions:
    model: str = "demo"  # the default model; the client's `model` setting overrides it
    engine: EngineOptions = EngineOptions()


class CodeLlamaServer(LanguageServer):
    def __init__(self, options: ServerOptions) -> None:
        super().__init__("codellama-lsp", VERSION, text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.options = options
        self.settings = config.Settings(model=options.model)
        self.engine: LlamaCppEngine | None = None
        self.cache = TypeThroughCache()
        self.state = "starting"
        self.error: str | None = None
        self.last_latency_ms: float | None = None
        self.overhead_ms: float | None = None  # last request's time in this process outside the engine
        self._loaded_model: str | None = None
        self._load_generation = 0
        self._load_task: asyncio.Task[None] | None = None
        self._loading_spec: str | None = None  # the model spec the newest load task is loading
        self._load_lock: asyncio.Lock | None = None  # one load at a time (created on the event loop)
        self.events: collections.Counter[tuple[str, str]] = collections.Counter()  # (kind, language) -> count
        self._ids = itertools.count(1)
        self._inflight = 0  # completion requests awaiting the engine
        self._busy_timer: asyncio.TimerHandle | None = None  # shows "busy" once a request runs BUSY_AFTER_S
        self._busy_shown = False

    # ---- status ----------------------------------------------------------------------------------
    def send_status(self, state: str, message: str | None = None, percentage: int | None = None) -> None:
        self.state = state
        params: dict[str, Any] = {
            "state": state,
            "model": self._loaded_model or self.settings.model,
            "lastLatencyMs": None if self.last_latency_ms is None else round(self.last_latency_ms, 1),
            "cachedTokens": self.engine.cached_tokens if self.engine else 0,
            "lastOverheadMs": None if self.overhead_ms is None else round(self.overhead_ms, 3),
            "shown": sum(n for (kind, _), n in self.events.items() if kind == "shown"),
            "accepted": sum(n for (kind, _), n in self.events.items() if kind == "accepted"),
        }
        if message:
            params["message"] = message
        if percentage is not None:
            params["percentage"] = percentage
        self.protocol.notify(STATUS, params)

    def show(self, kind: types.MessageType, message: str) -> None:
        self.window_show_message(types.ShowMessageParams(type=kind, message=f"codellama-lsp: {message}"))

    # ---- settings and model lifecycle ------------------------------------------------------------
    def apply_settings(self, raw: Any) -> None:
        before = self.settings
        self.settings, problems = config.parse(raw, before)
        for p in problems:
            log.warning("settings: %s", p)
            self.show(types.MessageType.Warning, p)
        if self.settings.model == self._loaded_model and self.engine is not None:
            return
        loading = self._load_task is not None and not self._load_task.done()
        if loading and self._loading_spec == self.settings.model:
            return  # that very model is loading already; a second load would only compete with it
        self.start_loading()

    def start_loading(self) -> None:
        self._load_generation += 1
        self._loading_spec = self.settings.model
        self._load_task = asyncio.get_running_loop().create_task(self._load(self._load_generation, self.settings.model))

    async def _load(self, generation: int, spec: str) -> None:
        # Loads run one after another: two llama.cpp models initialising at once on two threads only
        # slow each other down (and a superseded load is skipped once the lock is ours).
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:
            if generation != self._load_generation:
                return
            await self._load_locked(generation, spec)

    async def _load_locked(self, generation: int, spec: str) -> None:
        token = f"codellama-load-{generation}"
        self.send_status("loading", f"loading {spec}")
        progress = await self._progress_begin(token, f"Loading {spec}")
        loop = asyncio.get_running_loop()

        last_pct: list[int | None] = [None]

        def report(message: str, pct: int | None) -> None:
            # called from the loading thread, many times per percent: forward each new percentage once
            if pct is not None and pct == last_pct[0]:
                return
            last_pct[0] = pct
            if progress:
                value = types.WorkDoneProgressReport(message=message, percentage=pct)
                loop.call_soon_threadsafe(self.work_done_progress.report, token, value)
            if pct is not None:
                loop.call_soon_threadsafe(self._loading_percentage, generation, message, pct)

        try:
            resolved = await asyncio.to_thread(models.resolve, spec, report)
            message = f"loading {resolved.name}"
            report(message, 0)
            engine = await asyncio.to_thread(
                # 99 at most: "ready" (after the warm-up decode) is the 100
                LlamaCppEngine, resolved.path, resolved.name, self.options.engine, lambda v: report(message, min(99, int(v * 100)))
            )
        except (models.ModelError, EngineError) as exc:
            if generation == self._load_generation:
                self.error = str(exc)
                log.error("model %s: %s", spec, exc)
                old, self.engine, self._loaded_model = self.engine, None, None
                if old is not None:
                    await asyncio.to_thread(old.close)
                self.show(types.MessageType.Error, str(exc))
            if progress:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="failed"))
            if generation == self._load_generation:
                self.send_status("error", str(exc))  # last: clients may treat the status as "done"
            return
        if generation != self._load_generation:  # a newer load started meanwhile
            await asyncio.to_thread(engine.close)
            return
        old, self.engine = self.engine, engine
        self._loaded_model, self.error = spec, None
        self.cache = TypeThroughCache()
        if old is not None:
            await asyncio.to_thread(old.close)
        info = engine.info
        log.info("model %s ready: n_ctx=%d (trained %d), fim=%s", info.name, info.n_ctx, info.n_ctx_train, info.has_fim)
        msg = None if info.has_fim else "the model has no FIM tokens: completing from the prefix only"
        if msg:
            self.show(types.MessageType.Warning, msg)
        if progress:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="ready"))
        self.send_status("ready", msg)

    def _loading_percentage(self, generation: int, message: str, pct: int) -> None:
        if generation == self._load_generation and self.state == "loading":
            self.send_status("loading", message, pct)

    async def _progress_begin(self, token: str, title: str) -> bool:
        if not (self.client_capabilities.window and self.client_capabilities.window.work_done_progress):
            return False
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), timeout=5)
        except (asyncio.TimeoutError, JsonRpcException) as exc:  # a client that refuses progress: go on without
            log.debug("no $/progress: %s", exc)
            return False
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=title, cancellable=False))
        return True

    # ---- completion --------------------------------------------------------------------------------
    async def complete_at(
        self, uri: str, position: types.Position, n: int, selected: types.SelectedCompletionInfo | None = None
    ) -> tuple[list[str], types.Range, str] | None:
        """Completions at ``position`` (texts in the document's newline style), the range they replace and
        the identifier characters just before the cursor (for ``textDocument/completion`` items)."""
        rid = f"r{next(self._ids)}"
        doc = self.workspace.text_documents.get(uri)
        if doc is None:
            log.info("%s: %s is not open; nothing to complete", rid, uri)
            return None
        if not self.settings.enabled_for(doc.language_id):
            return None
        engine = self.engine
        if engine is None:
            log.info("%s: no model (%s)", rid, self.error or self.state)
            return None
        t0 = time.perf_counter()
        version, source = doc.version, doc.source
        encoding = self.workspace.position_encoding or types.PositionEncodingKind.Utf16
        text = context.lf_text(source)
        offset = context.offset_at(text, position.line, position.character, encoding)
        line = text.count("\n", 0, offset)
        line_start = text.rfind("\n", 0, offset) + 1
        start = types.Position(line=line, character=context.units_of(text[line_start:offset], encoding))
        head = ""
        if selected is not None:
            # The editor's completion widget has an item selected: complete as if it were applied.
            sel_start = context.offset_at(text, selected.range.start.line, selected.range.start.character, encoding)
            sel_end = context.offset_at(text, selected.range.end.line, selected.range.end.character, encoding)
            head = selected.text
            text = text[:sel_start] + head + text[sel_end:]
            offset = sel_start + len(head)
            start = selected.range.start
        end = start if selected is None else selected.range.end
        t_in = (time.perf_counter() - t0) * 1e3
        self._job_started()
        try:
            result = await pipeline.complete(engine, self.cache, uri, text, offset, self.settings, n, rid)
        except EngineError as exc:
            log.error("%s: %s", rid, exc)
            self._job_ended(False)
            self.send_status("error", str(exc))
            return None
        except asyncio.CancelledError:  # $/cancelRequest: the engine job was cancelled on the way out
            log.info("%s: cancelled by the client after %.1f ms", rid, (time.perf_counter() - t0) * 1e3)
            self._job_ended(False)
            raise
        r = result.result
        answered = r is not None and r.stop not in ("cancelled", "superseded")
        if answered:  # the model's answer (a cache hit or a superseded job has no latency worth showing)
            self.last_latency_ms = r.total_ms
        self._job_ended(answered)
        t1 = time.perf_counter()
        if doc.version != version or self.workspace.text_documents.get(uri) is not doc:
            log.info("%s: document changed while completing; dropped", rid)
            return None
        newline = context.document_newline(source)
        texts = [context.to_document_newlines(head + t, newline) for t in result.texts]
        log.info(
            "%s %s: %d item(s) from %s; handler %.2f ms + pipeline %.2f ms; engine %s",
            rid, uri.rsplit("/", 1)[-1], len(texts), result.source, t_in, result.pipeline_ms,
            "-" if r is None else (
                f"{r.total_ms:.1f} ms, stop={r.stop}, prompt={r.prompt_tokens} reused={r.reused_tokens} "
                f"evaluated={r.evaluated_tokens} generated={r.generated_tokens}"
            ),
        )
        self.overhead_ms = t_in + result.pipeline_ms + (time.perf_counter() - t1) * 1e3
        word = _WORD_BEFORE.search(text, line_start, offset) if selected is None else None
        return texts, types.Range(start=start, end=end), word.group(0) if word else ""

    def _job_started(self) -> None:
        self._inflight += 1
        if self._inflight == 1 and self._busy_timer is None:
            self._busy_timer = asyncio.get_running_loop().call_later(BUSY_AFTER_S, self._show_busy)

    def _show_busy(self) -> None:
        self._busy_timer = None
        if self._inflight and self.state == "ready":
            self._busy_shown = True
            self.send_status("busy")

    def _job_ended(self, model_ran: bool) -> None:
        """Back to "ready" once nothing runs: sent when "busy" was shown or a new latency is to be shown."""
        self._inflight -= 1
        if self._inflight:
            return
        if self._busy_timer is not None:
            self._busy_timer.cancel()
            self._busy_timer = None
        if self._busy_shown or (model_ran and self.state in ("ready", "busy")):
            self._busy_shown = False
            self.send_status("ready")


def create_server(options: ServerOptions = ServerOptions()) -> CodeLlamaServer:
    server = CodeLlamaServer(options)

    @server.feature(types.INITIALIZE)
    def on_initialize(ls: CodeLlamaServer, params: types.InitializeParams) -> None:
        ls.settings, problems = config.parse(params.initialization_options, ls.settings)
        ls._init_problems = problems

    @server.feature(types.INITIALIZED)
    def on_initialized(ls: CodeLlamaServer, _params: types.InitializedParams) -> None:
        for p in getattr(ls, "_init_problems", []):
            ls.show(types.MessageType.Warning, p)
        ls.start_loading()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def on_configuration(ls: CodeLlamaServer, params: types.DidChangeConfigurationParams) -> None:
        ls.apply_settings(params.settings)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def on_close(ls: CodeLlamaServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.cache.forget(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def on_inline(ls: CodeLlamaServer, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
        invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        n = ls.settings.max_items if invoked else 1
        got = await ls.complete_at(
            params.text_document.uri, params.position, n, params.context.selected_completion_info
        )
        if got is None:
            return types.InlineCompletionList(items=[])
        texts, rng, _word = got
        return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=t, range=rng) for t in texts])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[]))
    async def on_completion(ls: CodeLlamaServer, params: types.CompletionParams) -> types.CompletionList:
        got = await ls.complete_at(params.text_document.uri, params.position, 1)
        if got is None or not got[0]:
            return types.CompletionList(is_incomplete=True, items=[])
        (text, *_), rng, word = got
        # Completion clients filter items by the word before the cursor (Neovim's omnifunc does), so the
        # item replaces that word with itself plus the completion.
        full = word + text
        encoding = ls.workspace.position_encoding or types.PositionEncodingKind.Utf16
        start = types.Position(line=rng.start.line, character=rng.start.character - context.units_of(word, encoding))
        first = full.split("\n", 1)[0].strip() or full.strip()
        item = types.CompletionItem(
            label=first[:80],
            kind=types.CompletionItemKind.Text,
            detail="Code Llama",
            text_edit=types.TextEdit(range=types.Range(start=start, end=rng.end), new_text=full),
            filter_text=full,
            sort_text="0",
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.feature(EVENT)
    def on_event(ls: CodeLlamaServer, params: Any) -> None:
        # Local statistics only: nothing is sent anywhere. The totals ride along in codellama/status.
        kind = str(getattr(params, "kind", None) or "unknown")
        language = str(getattr(params, "languageId", None) or getattr(params, "language_id", None) or "unknown")
        ls.events[(kind, language)] += 1
        log.debug("event %s (%s): %d so far", kind, language, ls.events[(kind, language)])

    @server.feature(types.SHUTDOWN)
    async def on_shutdown(ls: CodeLlamaServer, *_args: Any) -> None:
        if ls.engine is not None:
            engine, ls.engine = ls.engine, None
            await asyncio.to_thread(engine.close)

    return server


__all__ = ["CodeLlamaServer", "ServerOptions", "create_server", "STATUS"]
