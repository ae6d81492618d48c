"""What the server holds, in one place: the settings, the engine, the caches, the load and job bookkeeping.

``ServerState`` is pygls' ``LanguageServer`` plus these fields; each concern of the server (``status``,
``loading``, ``documents``, ``completion``, ``events``) is a class over it, and ``app.CodeLlamaServer`` is all of
them together. Nothing here does work: reading this file tells what the other files share.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.metadata
import itertools
from dataclasses import dataclass, field
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from .. import config, neighbors, rpc
from ..cache import TypeThroughCache
from ..engines import Engine
from ..engines.llama_cpp import EngineOptions
from ..engines.remote import RemoteOptions
from ..lines import LineIndexes
from ..pacing import BudgetCuts, Pacer, PromptSizer
from ..prefetch import Prefetcher
from ..rpc import LspProtocol

VERSION = importlib.metadata.version("codellama-lsp")  # pyproject.toml's version, told to the client


@dataclass(frozen=True)
class ServerOptions:
    model: str = "demo"  # the default model; the client's `model` setting overrides it
    engine: EngineOptions = EngineOptions()
    load_timeout_s: float = 300.0  # llama.cpp's load of a checked file; a slow disk may need more
    settings: dict[str, Any] = field(default_factory=dict)  # command-line defaults (wire names); the client's override
    remote: RemoteOptions = RemoteOptions(url="")  # remote engines' command-line tuning (--slot, --prompt-format)
    allow_hosts: tuple[str, ...] = ()  # --allow-host: servers a client's url setting may name, besides --url's
    allow_remote_settings: bool = False  # --allow-remote-settings: a client's url/apiKeyEnv/tlsVerify are taken as sent


class ServerState(LanguageServer):
    protocol: LspProtocol

    def __init__(self, options: ServerOptions) -> None:
        super().__init__(
            "codellama-lsp",
            VERSION,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            # Notebooks (LSP 3.17): every notebook and all its cells, so that a cell's completion sees the
            # code cells above it as text before the cursor and those below as text after (``Documents.cells_around``).
            notebook_document_sync=types.NotebookDocumentSyncOptions(
                notebook_selector=[types.NotebookDocumentFilterWithNotebook(notebook="*")]
            ),
            protocol_cls=LspProtocol,
            converter_factory=rpc.converter,
        )
        self.options = options
        self.settings, self._cli_problems = config.parse(options.settings, config.Settings(model=options.model))
        # what a client's settings may choose (they may come from a cloned repository's workspace settings)
        self.trust = config.Trust.from_command_line(options.settings, options.allow_hosts, options.allow_remote_settings)
        self._init_problems: list[str] = []  # settings problems to show once the client is initialized
        self._completion_feature: Any = None  # the completion handler while initialize leaves it unadvertised
        # the model (loading.py)
        self.engine: Engine | None = None
        self._loaded_model: str | None = None
        self._loaded_key: tuple[object, ...] | None = None
        self._load_generation = 0
        self._load_task: asyncio.Task[None] | None = None
        self._loading_key: tuple[object, ...] | None = None  # what the newest load task is loading
        self._load_lock: asyncio.Lock | None = None  # one load at a time (created on the event loop)
        # the status item (status.py)
        self.state = "starting"
        self.error: str | None = None
        self.last_latency_ms: float | None = None
        self.overhead_ms: float | None = None  # last request's time in this process outside the engine
        self._inflight = 0  # completion requests awaiting the engine
        self._busy_timer: asyncio.TimerHandle | None = None  # shows "busy" once a request runs BUSY_AFTER_S
        self._busy_shown = False
        self.events: collections.Counter[tuple[str, str]] = collections.Counter()  # (kind, language) -> count
        # completions (completion.py, events.py)
        self.cache = TypeThroughCache()
        self._ids = itertools.count(1)
        self.neighbors = neighbors.Neighbors()  # other files' chunks and recently edited regions
        self._too_big: dict[str, int] = {}  # URIs whose didOpen was skipped for its size -> its size (documents.py)
        # URIs the client closed (unquoted, most recent last, bounded): a change that comes after the close is late,
        # not a lost document (VS Code sends one for an untitled buffer saved under a name)
        self._closed: dict[str, None] = {}
        # notebooks forgotten after a notebookDocument/didChange that could not be applied; told once each, until
        # the client opens the notebook again (its full sync)
        self._notebooks_lost: set[str] = set()
        self.lines = LineIndexes()  # line starts of the open documents: a keystroke at the end of 50 MB finds its line at once
        self.pacer = Pacer()  # adaptive time budget and debounce
        self.sizer = PromptSizer()  # prompt sizes from the engine's measured speed (coldJumpMs)
        self.cuts = BudgetCuts()  # which recent answers the time budget cut (the status says "slow")
        self.prefetcher = Prefetcher()  # the next completion after an accepted one
