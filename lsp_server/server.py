"""The language server: pygls plumbing around ``pipeline.complete``.

In: JSON-RPC over stdio or TCP from an editor. Out: inline completions (``textDocument/inlineCompletion``),
the same completion as a single ``textDocument/completion`` item, ``codellama/status`` notifications
(loading with a percentage, ready, busy, error, with the model name, the latency of the last model answer
and the number of cached tokens), ``$/progress`` with percentages while a model loads, and
``window/showMessage`` for bad settings and model errors. "busy" is sent only when a request has waited
for the engine longer than ``BUSY_AFTER_S``, so a status bar does not flicker on every key.

Handlers are adapters: they read the document and position, call ``pipeline.complete`` (which awaits
the engine's worker thread, so the event loop stays free), and shape the reply. The JSON-RPC edge
(framing, every request answered once, lifecycle errors, the transports) is ``rpc``.

A model is checked by ``gguf_check`` before llama.cpp sees it and loaded on a daemon thread within
``ServerOptions.load_timeout_s``; whatever goes wrong in a load (a bad file, an exception of any kind,
a timeout) ends in an ``error`` status with its message, and the next ``model`` setting starts afresh. Documents are kept by
pygls with incremental sync; positions arrive in the negotiated encoding (UTF-16 unless the client
offered UTF-8/32) and are converted by ``context.offset_at``. A reply is dropped when the document
changed while the model was running, so stale text never reaches the editor.

Around each request: files matching ``exclude`` are refused (privacy); the other open files and the
ring of edited regions (``neighbors``) give context from beyond the file; every change feeds the typing
rhythm (``pacing``: the time budget, the suggested debounce) and, when it is an accepted suggestion,
starts the next completion at once (``prefetch``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import importlib.metadata
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote

import attrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from . import config, context, models, neighbors, pipeline, rpc, syntax
from .backend import open_engine
from .cache import TypeThroughCache
from .engines import Engine, EngineError
from .engines.llama_cpp import EngineOptions
from .engines.remote import RemoteEngine, RemoteOptions
from .pacing import Pacer
from .prefetch import Prefetcher
from .rpc import LspProtocol

log = logging.getLogger(__name__)

STATUS = "codellama/status"
DOCUMENT_STATE = "codellama/documentState"  # client -> server: {uri} -> {version, length, sha256} | null
# client -> server: {kind: "shown" | "accepted", languageId?, uri?}; counted locally only; "accepted" with the
# document's uri also starts the prefetch of the next completion (prefetch.py)
EVENT = "codellama/event"
_WORD_BEFORE = re.compile(r"\w+\Z")
VERSION = importlib.metadata.version("codellama-lsp")  # pyproject.toml's version, told to the client
T = TypeVar("T")
BUSY_AFTER_S = 0.3  # a request running longer than this shows "busy"; shorter ones leave "ready" alone


@dataclass(frozen=True)
class ServerOptions:
    model: str = "demo"  # the default model; the client's `model` setting overrides it
    engine: EngineOptions = EngineOptions()
    load_timeout_s: float = 300.0  # llama.cpp's load of a checked file; a slow disk may need more
    settings: dict[str, Any] = field(default_factory=dict)  # command-line defaults (wire names); the client's override
    remote: RemoteOptions = RemoteOptions(url="")  # remote engines' command-line tuning (--slot, --prompt-format)


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


def _load_key(s: config.Settings) -> tuple[object, ...]:
    """The settings whose change needs a new engine (the model or where and how it runs)."""
    return (s.model, s.engine, s.url, s.api_key_env, s.request_timeout_ms, s.tls_verify, s.remote_model)


class CodeLlamaServer(LanguageServer):
    protocol: LspProtocol

    def __init__(self, options: ServerOptions) -> None:
        super().__init__(
            "codellama-lsp",
            VERSION,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            protocol_cls=LspProtocol,
            converter_factory=rpc.converter,
        )
        self.options = options
        self.settings, self._cli_problems = config.parse(options.settings, config.Settings(model=options.model))
        self._init_problems: list[str] = []  # settings problems to show once the client is initialized
        self.engine: Engine | None = None
        self.cache = TypeThroughCache()
        self.state = "starting"
        self.error: str | None = None
        self.last_latency_ms: float | None = None
        self.overhead_ms: float | None = None  # last request's time in this process outside the engine
        self._loaded_model: str | None = None
        self._loaded_key: tuple[object, ...] | None = None
        self._load_generation = 0
        self._load_task: asyncio.Task[None] | None = None
        self._loading_key: tuple[object, ...] | None = None  # what the newest load task is loading
        self._load_lock: asyncio.Lock | None = None  # one load at a time (created on the event loop)
        self.events: collections.Counter[tuple[str, str]] = collections.Counter()  # (kind, language) -> count
        self._ids = itertools.count(1)
        self._inflight = 0  # completion requests awaiting the engine
        self._busy_timer: asyncio.TimerHandle | None = None  # shows "busy" once a request runs BUSY_AFTER_S
        self._busy_shown = False
        self.neighbors = neighbors.Neighbors()  # other files' chunks and recently edited regions
        self.pacer = Pacer()  # adaptive time budget and debounce
        self.prefetcher = Prefetcher()  # the next completion after an accepted one

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
            "prefetches": self.prefetcher.started,
            "prefetchHits": self.prefetcher.hits,
            **self.pacer.status(self.settings.time_budget_ms),
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
        old, new = config.to_wire(before), config.to_wire(self.settings)
        if changed := {k: v for k, v in new.items() if old.get(k) != v}:
            log.info("settings changed: %s", changed)
        if self.settings.exclude != before.exclude:
            self.neighbors.drop(self.settings.excluded)
        key = _load_key(self.settings)
        if key == self._loaded_key and self.engine is not None:
            return
        loading = self._load_task is not None and not self._load_task.done()
        if loading and self._loading_key == key:
            return  # that very model is loading already; a second load would only compete with it
        self.start_loading()

    def start_loading(self) -> None:
        self._load_generation += 1
        self._loading_key = _load_key(self.settings)
        self._load_task = asyncio.get_running_loop().create_task(self._load(self._load_generation, self.settings))

    async def _load(self, generation: int, settings: config.Settings) -> None:
        # Loads run one after another: two llama.cpp models initialising at once on two threads only
        # slow each other down (and a superseded load is skipped once the lock is ours).
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:
            if generation != self._load_generation:
                return
            await self._load_locked(generation, settings)

    async def _load_locked(self, generation: int, settings: config.Settings) -> None:
        spec = settings.model
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
            resolved = await in_daemon_thread(models.resolve, spec, report)
            log.info("model %s: %s", spec, resolved.source)
            message = f"loading {resolved.name}"
            report(message, 0)
            timeout = self.options.load_timeout_s

            def loaded(v: float) -> None:  # llama.cpp's load progress; 99 at most: "ready" (after the warm-up) is 100
                report(message, min(99, int(v * 100)))

            try:
                engine = await asyncio.wait_for(
                    in_daemon_thread(
                        open_engine,
                        settings,
                        resolved.path,
                        resolved.name,
                        self.options.engine,
                        self.options.remote,
                        loaded,
                        orphan=lambda e: e.close(),
                    ),
                    timeout,
                )
            except TimeoutError:
                raise EngineError(
                    f"expected to load {resolved.path} within {timeout:g} s, got no result (a slow disk? see --load-timeout)"
                ) from None
        except Exception as exc:  # of any kind: the status must never stay "loading"
            message = (
                str(exc)
                if isinstance(exc, (models.ModelError, EngineError))
                else (f"expected to load {spec}, got {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
            )
            if not isinstance(exc, (models.ModelError, EngineError)):
                log.error("model %s: unexpected failure", spec, exc_info=exc)
            if generation == self._load_generation:
                self.error = message
                log.error("model %s: %s", spec, message)
                old, self.engine, self._loaded_model = self.engine, None, None
                if old is not None:
                    in_daemon_thread(old.close)
                self.show(types.MessageType.Error, message)
            if progress:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="failed"))
            if generation == self._load_generation:
                self.send_status("error", message)  # last: clients may treat the status as "done"
            return
        if generation != self._load_generation:  # a newer load started meanwhile
            in_daemon_thread(engine.close)
            return
        old, self.engine = self.engine, engine
        self._loaded_model, self._loaded_key, self.error = spec, _load_key(settings), None
        self.cache = TypeThroughCache()
        if old is not None:
            in_daemon_thread(old.close)
        info, sentinels = engine.info, engine.vocab.sentinels
        log.info(
            "model %s ready: n_ctx=%d (trained %d); sentinels %s", info.name, info.n_ctx, info.n_ctx_train, sentinels.describe()
        )
        msg = None if sentinels.has_fim else "the model has no FIM tokens: completing from the prefix only"
        if msg:
            self.show(types.MessageType.Warning, msg)
        elif "text" in sentinels.source.values():  # an older Hub file: works, but say where the ids came from
            msg = "FIM/EOT ids found by their text: " + ", ".join(
                f"{k}={getattr(sentinels, k)}" for k, v in sentinels.source.items() if v == "text"
            )
        if progress:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="ready"))
        self.send_status("ready", msg)
        if isinstance(engine, RemoteEngine):  # told at once if the server is down already

            def on_health(message: str | None) -> None:  # called on the engine's thread
                loop.call_soon_threadsafe(self._on_health, engine, message)

            engine.set_listener(on_health)

    def _on_health(self, engine: Engine, message: str | None) -> None:
        """A remote engine's server went down (``message``: why) or came back (None): status, and one message."""
        if engine is not self.engine:
            return
        self.error = message
        if message is not None:
            self.show(types.MessageType.Error, message)
            self.send_status("error", message)
        else:
            self.send_status("ready", f"connected to {engine.info.where}")

    def _loading_percentage(self, generation: int, message: str, pct: int) -> None:
        if generation == self._load_generation and self.state == "loading":
            self.send_status("loading", message, pct)

    async def _progress_begin(self, token: str, title: str) -> bool:
        if not (self.client_capabilities.window and self.client_capabilities.window.work_done_progress):
            return False
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), timeout=5)
        except (TimeoutError, JsonRpcException) as exc:  # a client that refuses progress: go on without
            log.debug("no $/progress: %s", exc)
            return False
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=title, cancellable=False))
        return True

    async def close(self) -> None:
        """Stop loading and free the model (on exit, end of input or a signal); never waits long."""
        if self._load_task is not None and not self._load_task.done():
            self._load_generation += 1
            self._load_task.cancel()
        engine, self.engine = self.engine, None
        if engine is not None:
            try:
                await asyncio.wait_for(in_daemon_thread(engine.close), 5)
            except TimeoutError:
                log.warning("the engine did not close within 5 s; exiting anyway")

    # ---- documents -------------------------------------------------------------------------------------
    def document(self, uri: str) -> Any:
        """The open document ``uri`` or None (pygls keys documents by the unquoted URI)."""
        return self.workspace.text_documents.get(unquote(uri))

    def document_lost(self, uri: str | None, reason: str) -> None:
        """A document change could not be applied: forget the document (so no completion comes from a
        copy that differs from the editor's) and tell the user."""
        if uri is not None:
            self.workspace.remove_text_document(uri)
            self.cache.forget(uri)
        where = uri or "a document"
        log.error("%s is out of sync: %s", where, reason)
        self.show(types.MessageType.Error, f"{where} is out of sync ({reason}); completions for it stop until it is reopened")

    # ---- completion --------------------------------------------------------------------------------
    async def complete_at(
        self, uri: str, position: types.Position, n: int, selected: types.SelectedCompletionInfo | None = None
    ) -> tuple[list[str], types.Range, str] | None:
        """Completions at ``position`` (texts in the document's newline style), the range they replace and
        the identifier characters just before the cursor (for ``textDocument/completion`` items)."""
        rid = f"r{next(self._ids)}"
        doc = self.document(uri)
        if doc is None:
            log.info("%s: %s is not open; nothing to complete", rid, uri)
            return None
        if not self.settings.enabled_for(doc.language_id) or self.settings.excluded(doc.path):
            return None  # privacy: an excluded file never gets a completion (so never reaches a prompt)
        engine = self.engine
        if engine is None:
            log.info("%s: no model (%s)", rid, self.error or self.state)
            return None
        t0 = time.perf_counter()
        source = doc.source
        encoding = self.workspace.position_encoding or types.PositionEncodingKind.Utf16
        at = edit_point(source, position, selected, encoding)
        text, offset = at.text, at.offset
        t_in = (time.perf_counter() - t0) * 1e3
        settings = self._paced_settings()
        try:
            with self._running() as job:
                prefetched = await self.prefetcher.join(uri, text, offset) if selected is None else None
                if prefetched is not None:  # computed after the accepted suggestion, before this request came
                    result = pipeline.Completion(
                        texts=prefetched.texts[: max(1, n)], source="cache" if prefetched.texts else "none"
                    )
                else:
                    result = await pipeline.complete(
                        engine, self.cache, uri, text, offset, settings, n, rid, self.extra_for(doc, text)
                    )
                r = result.result
                # the model's answer (a cache hit or a superseded job has no latency worth showing)
                if r is not None and r.stop not in ("cancelled", "superseded"):
                    job.answered = True
                    self.last_latency_ms = r.total_ms
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
        now = self.document(uri)
        if now is None or (now.source is not source and now.source != source):  # the text, not the version
            log.debug("%s: document changed while completing; dropped", rid)
            return None
        newline = context.document_newline(source)
        texts = [context.to_document_newlines(at.head + t, newline) for t in result.texts]
        if r is not None and result.source != "cache":
            self.pacer.finished(r.total_ms)
        log.info(
            "%s %s: %d item(s) from %s; handler %.2f ms + pipeline %.2f ms; engine %s",
            rid,
            uri.rsplit("/", 1)[-1],
            len(texts),
            result.source,
            t_in,
            result.pipeline_ms,
            "-"
            if r is None
            else (
                f"{r.total_ms:.1f} ms (prompt {r.prompt_ms:.1f}, generation {r.generate_ms:.1f}), stop={r.stop}, "
                f"prompt={r.prompt_tokens} reused={r.reused_tokens} "
                f"evaluated={r.evaluated_tokens} generated={r.generated_tokens}"
            ),
        )
        self.overhead_ms = t_in + result.pipeline_ms + (time.perf_counter() - t1) * 1e3
        return texts, at.range, at.word

    # ---- context from other files, prefetch ----------------------------------------------------------
    def _doc(self, doc: Any, text: str | None = None) -> neighbors.Doc:
        """The neighbors' view of an open pygls document: its path relative to the workspace root, if inside."""
        path = doc.path
        root = self.workspace.root_path
        if root and os.path.commonpath([os.path.abspath(path), os.path.abspath(root)]) == os.path.abspath(root):
            path = os.path.relpath(path, root)
        return neighbors.Doc(
            doc.uri, path.replace(os.sep, "/"), doc.language_id or "", context.lf_text(doc.source) if text is None else text
        )

    def extra_for(self, doc: Any, text: str) -> pipeline.Extra | None:
        """Where the request's context from other files comes from: the other open documents of its
        language that are not excluded, and the ring (None when ``extraContextTokens`` is 0)."""
        if self.settings.extra_context_tokens <= 0:
            return None
        others = tuple(
            self._doc(d) for d in self.workspace.text_documents.values()
            if d.uri != doc.uri and d.language_id == doc.language_id and not self.settings.excluded(d.path)
        )  # fmt: skip
        return pipeline.Extra(self.neighbors, self._doc(doc, text), others)

    def changed(self, params: types.DidChangeTextDocumentParams) -> None:
        """After pygls applied a change: the typing rhythm, the ring of edited regions, and a prefetch
        when the change is an accepted suggestion."""
        uri = params.text_document.uri
        self.pacer.keystroke(uri)
        doc = self.workspace.text_documents.get(uri)
        if doc is None or self.settings.excluded(doc.path):
            return
        line = next(
            (c.range.start.line for c in params.content_changes if isinstance(c, types.TextDocumentContentChangePartial)), 0
        )
        view = self._doc(doc)
        self.neighbors.ring.edited(view, line)
        self.prefetch_if_accepted(doc, view.text)

    def prefetch_if_accepted(self, doc: Any, text: str) -> None:
        """When ``text`` is the last suggestion accepted into ``doc``, start the next completion now."""
        engine, offset = self.engine, self.cache.accepted(doc.uri, text)
        if engine is None or offset is None or not self.settings.enabled_for(doc.language_id):
            return
        rid = f"p{next(self._ids)}"
        settings = self._paced_settings()
        log.info("%s: suggestion accepted in %s; prefetching the next one", rid, doc.uri.rsplit("/", 1)[-1])
        self.prefetcher.start(
            doc.uri, text, offset,
            lambda: pipeline.complete(engine, self.cache, doc.uri, text, offset, settings, 1, rid, self.extra_for(doc, text)),
        )  # fmt: skip

    def _paced_settings(self) -> config.Settings:
        """The settings with the time budget the user's typing allows (pacing); ``timeBudgetMs`` stays the cap."""
        return attrs.evolve(self.settings, time_budget_ms=self.pacer.budget_ms(self.settings.time_budget_ms))

    @contextlib.contextmanager
    def _running(self) -> Iterator[_JobStatus]:
        """The status item around one completion: "busy" once it has run ``BUSY_AFTER_S``; when the last running
        one ends (answered, failed or cancelled), "ready" again if "busy" was shown or ``answered`` was set."""
        self._job_started()
        job = _JobStatus()
        try:
            yield job
        finally:
            self._job_ended(job.answered)

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


@dataclass
class _JobStatus:
    answered: bool = False  # news for the status: a new latency, or a prefetch hit


@dataclass(frozen=True)
class EditPoint:
    """Where a completion goes (see ``edit_point``)."""

    text: str  # the document with LF newlines, with the selected completion item applied if there is one
    offset: int  # the cursor in ``text``
    range: types.Range  # what the completion replaces in the editor's document
    head: str  # the selected item's text, put in front of every completion ("" without one)
    word: str  # identifier characters just before the cursor, for textDocument/completion items ("" with a selection)


def edit_point(source: str, position: types.Position, selected: types.SelectedCompletionInfo | None, encoding: str) -> EditPoint:
    """A request's document ``source`` and ``position`` (in ``encoding`` units) -> the text to complete and the
    range to replace. With an item selected in the editor's completion widget, complete as if it were applied."""
    text = context.lf_text(source)
    offset = context.offset_at(text, position.line, position.character, encoding)
    line_start = text.rfind("\n", 0, offset) + 1
    start = types.Position(line=text.count("\n", 0, offset), character=context.units_of(text[line_start:offset], encoding))
    if selected is None:
        word = _WORD_BEFORE.search(text, line_start, offset)
        return EditPoint(text, offset, types.Range(start=start, end=start), "", word.group(0) if word else "")
    sel = selected.range
    sel_start = context.offset_at(text, sel.start.line, sel.start.character, encoding)
    sel_end = context.offset_at(text, sel.end.line, sel.end.character, encoding)
    head = selected.text
    return EditPoint(
        text[:sel_start] + head + text[sel_end:], sel_start + len(head), types.Range(start=sel.start, end=sel.end), head, ""
    )


def create_server(options: ServerOptions = ServerOptions()) -> CodeLlamaServer:
    server = CodeLlamaServer(options)

    @server.feature(types.INITIALIZE)
    def on_initialize(ls: CodeLlamaServer, params: types.InitializeParams) -> None:
        ls.settings, problems = config.parse(params.initialization_options, ls.settings)
        ls._init_problems = ls._cli_problems + problems
        log.info("settings: %s", config.to_wire(ls.settings))

    @server.feature(types.INITIALIZED)
    def on_initialized(ls: CodeLlamaServer, _params: types.InitializedParams) -> None:
        for p in ls._init_problems:
            ls.show(types.MessageType.Warning, p)
        ls.start_loading()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def on_configuration(ls: CodeLlamaServer, params: types.DidChangeConfigurationParams) -> None:
        ls.apply_settings(params.settings)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def on_close(ls: CodeLlamaServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.cache.forget(params.text_document.uri)
        syntax.TREES.forget(params.text_document.uri)
        ls.neighbors.closed(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def on_change(ls: CodeLlamaServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.changed(params)  # pygls has applied the change to its document already

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def on_inline(ls: CodeLlamaServer, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
        invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        n = ls.settings.max_items if invoked else 1
        got = await ls.complete_at(params.text_document.uri, params.position, n, params.context.selected_completion_info)
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
        fields = params if isinstance(params, dict) else {}
        kind = str(fields.get("kind") or "unknown")[:40]
        language = str(fields.get("languageId") or "unknown")[:40]
        ls.events[(kind, language)] += 1
        log.debug("event %s (%s): %d so far", kind, language, ls.events[(kind, language)])
        uri = getattr(params, "uri", None)
        doc = ls.workspace.text_documents.get(uri) if kind == "accepted" and isinstance(uri, str) else None
        if doc is not None and not ls.settings.excluded(doc.path):
            ls.prefetch_if_accepted(doc, context.lf_text(doc.source))

    @server.feature(DOCUMENT_STATE)
    def on_document_state(ls: CodeLlamaServer, params: Any) -> dict[str, Any] | None:
        # What the server holds for a document, to check that it is in sync with the editor's copy
        # (the text's SHA-256, never the text). None: not open here (or dropped after a bad change).
        uri = params.get("uri") if isinstance(params, dict) else None
        if not isinstance(uri, str):
            raise JsonRpcInvalidParams(f"{DOCUMENT_STATE}: expected params {{uri: string}}")
        doc = ls.document(uri)
        if doc is None:
            return None
        source = doc.source
        return {
            "version": doc.version,
            "length": len(source),
            "sha256": hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest(),
        }

    @server.feature(types.SHUTDOWN)
    async def on_shutdown(ls: CodeLlamaServer, *_args: Any) -> None:
        await ls.close()

    return server


__all__ = ["DOCUMENT_STATE", "STATUS", "CodeLlamaServer", "ServerOptions", "busy_threads", "create_server"]
