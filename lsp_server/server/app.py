"""The language server, assembled: the concerns of ``server/`` in one class, and the LSP handlers that call them.

In: JSON-RPC over stdio or TCP from an editor (the edge - framing, every request answered once, lifecycle errors,
the transports - is ``rpc``). Out: inline completions (``textDocument/inlineCompletion``), the same completion
as a single ``textDocument/completion`` item, ``codellama/status`` notifications, ``$/progress`` while a model
loads, ``window/showMessage`` for bad settings and model errors.

Handlers are adapters: they read the params, call one method of the server, and shape the reply. Where each job
lives: ``state`` (what the server holds), ``status`` (the status item), ``loading`` (models and engines),
``documents`` (open files, where a completion goes), ``prefill`` (a place's prompt evaluated before its first
request), ``events`` (typing rhythm, shown/accepted, prefetch),
``completion`` (one request), ``threads`` (daemon threads for llama.cpp loads).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from .. import config, context, messages, syntax
from . import memory
from .completion import Completing
from .loading import ModelLoading
from .state import ServerOptions

log = logging.getLogger("lsp_server.server")


_ALL_FILES = types.FileOperationRegistrationOptions(
    filters=[types.FileOperationFilter(pattern=types.FileOperationPattern(glob="**/*"))]
)  # renames of any file: one renamed to .env takes its chunks out of the ring


class CodeLlamaServer(ModelLoading, Completing):
    """Every concern of the server over one ``ServerState``."""


CLOSED_KEPT = 256  # closed URIs remembered (a late change of one of them is no lost document)


def remember_closed(ls: CodeLlamaServer, uri: str) -> None:
    """``uri`` (a document or a notebook) was closed by the client: a change that comes after is late, not lost."""
    key = unquote(uri)
    ls._closed.pop(key, None)
    ls._closed[key] = None
    while len(ls._closed) > CLOSED_KEPT:
        del ls._closed[next(iter(ls._closed))]


def cell_closed(ls: CodeLlamaServer, uri: str) -> None:
    """A notebook cell closed (its notebook closed, or the cell deleted): what a closed document leaves behind goes."""
    ls.cache.forget(uri)
    syntax.TREES.forget(uri)
    ls.lines.forget(uri)
    ls.protocol.text_changed(uri, closed=True)
    ls.closed(uri)
    remember_closed(ls, uri)


def create_server(options: ServerOptions = ServerOptions()) -> CodeLlamaServer:
    server = CodeLlamaServer(options)

    @server.feature(types.INITIALIZE)
    def on_initialize(ls: CodeLlamaServer, params: types.InitializeParams) -> None:
        raw, refused = config.guard(params.initialization_options, ls.trust)
        ls.settings, problems = config.parse(raw, ls.settings)
        ls._init_problems = ls._cli_problems + refused + problems
        log.info("settings: %s", config.for_log(config.to_wire(ls.settings)))
        # pygls computes the capabilities from the registered features right after this handler: with
        # completionItems off the completion feature is set aside until ``initialized``, so completion menus
        # (nvim-cmp, blink.cmp) never ask for our items, while a client that asks anyway is still answered.
        if not ls.settings.completion_items:
            ls._completion_feature = ls.protocol.fm.features.pop(types.TEXT_DOCUMENT_COMPLETION, None)

    @server.feature(types.INITIALIZED)
    def on_initialized(ls: CodeLlamaServer, _params: types.InitializedParams) -> None:
        if ls._completion_feature is not None:
            ls.protocol.fm.features[types.TEXT_DOCUMENT_COMPLETION] = ls._completion_feature
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
        ls.lines.forget(params.text_document.uri)
        ls.protocol.text_changed(params.text_document.uri, closed=True)
        ls._too_big.pop(unquote(params.text_document.uri), None)
        ls.closed(params.text_document.uri)
        remember_closed(ls, params.text_document.uri)

    @server.feature(types.WORKSPACE_DID_RENAME_FILES, _ALL_FILES)
    def on_rename(ls: CodeLlamaServer, params: types.RenameFilesParams) -> None:
        for f in params.files:
            ls.renamed(f.old_uri, f.new_uri)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def on_open(ls: CodeLlamaServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.protocol.text_changed(params.text_document.uri)  # requests sent before are about another text (or none)
        ls._too_big.pop(unquote(params.text_document.uri), None)
        ls._closed.pop(unquote(params.text_document.uri), None)
        ls.opened(params.text_document.uri)  # pygls has stored the document already

    @server.feature(types.NOTEBOOK_DOCUMENT_DID_OPEN)
    def on_notebook_open(ls: CodeLlamaServer, params: types.DidOpenNotebookDocumentParams) -> None:
        ls.notebook_opened(params.notebook_document.uri, [c.uri for c in params.cell_text_documents])
        for cell in params.cell_text_documents:  # pygls has stored the notebook and its cells already
            ls.opened(cell.uri)

    @server.feature(types.NOTEBOOK_DOCUMENT_DID_CLOSE)
    def on_notebook_close(ls: CodeLlamaServer, params: types.DidCloseNotebookDocumentParams) -> None:
        for cell in params.cell_text_documents:
            cell_closed(ls, cell.uri)
        remember_closed(ls, params.notebook_document.uri)

    @server.feature(types.NOTEBOOK_DOCUMENT_DID_CHANGE)
    def on_notebook_change(ls: CodeLlamaServer, params: types.DidChangeNotebookDocumentParams) -> None:
        # cells added after the notebook opened get what cells present at open got: the privacy check of an opened
        # document and their first place prefilled (pygls has applied the change; the text edits went through
        # didChange); removed cells are closed like the cells of a closed notebook
        structure = params.change.cells.structure if params.change.cells is not None else None
        if structure is None:
            return
        for cell in structure.did_close or []:
            cell_closed(ls, cell.uri)
        for new in structure.did_open or []:
            ls.protocol.text_changed(new.uri)
            ls._closed.pop(unquote(new.uri), None)
            ls.opened(new.uri)

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

    @server.feature(messages.EVENT)
    def on_event(ls: CodeLlamaServer, params: Any) -> None:
        # Local statistics only: nothing is sent anywhere. The totals ride along in codellama/status.
        ls.event(messages.read_event(params))

    @server.feature(messages.DOCUMENT_STATE)
    def on_document_state(ls: CodeLlamaServer, params: Any) -> dict[str, Any] | None:
        # What the server holds for a document, to check that it is in sync with the editor's copy
        # (the text's SHA-256, never the text). None: not open here (or dropped after a bad change).
        asked = messages.read_document_state_params(params)
        if asked is None:
            raise JsonRpcInvalidParams(f"{messages.DOCUMENT_STATE}: expected params {{uri: string}}")
        doc = ls.document(asked.uri)
        if doc is None:
            return None
        source = doc.source
        sha = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
        return messages.to_wire(messages.DocumentState(version=doc.version, length=len(source), sha256=sha))

    @server.feature(messages.MEMORY)
    def on_memory(ls: CodeLlamaServer, params: Any) -> dict[str, Any]:
        # What the server holds (counts and bytes, never content): the soak tells a leak from a cache filling up, and
        # with {"trim": true} (glibc's malloc_trim first) from memory the allocator keeps free.
        trim = (params.get("trim") if isinstance(params, dict) else getattr(params, "trim", None)) is True
        return messages.to_wire(memory.report(ls, trim))

    @server.feature(messages.MODELS)
    async def on_models(ls: CodeLlamaServer, params: Any) -> dict[str, Any]:
        # The model pickers' list: GGUFs on this machine (headers only) and known Hub files, sized for this context.
        asked = messages.read_models_params(params)
        if asked is None:
            raise JsonRpcInvalidParams(f"{messages.MODELS}: expected params {{folders?: string[], nCtx?: integer}}")
        return messages.to_wire(await asyncio.to_thread(ls.models_report, asked))

    @server.feature(types.SHUTDOWN)
    async def on_shutdown(ls: CodeLlamaServer, *_args: Any) -> None:
        await ls.close()

    return server


__all__ = ["CodeLlamaServer", "create_server"]
