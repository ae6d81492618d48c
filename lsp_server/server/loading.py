"""Model loading: settings that need a new engine -> a checked, loaded engine, or an ``error`` status that says why.

In: the settings (``model`` and where and how it runs). Out: ``self.engine``, swapped in only when the load
succeeded and no newer one started. A model is resolved (path | demo | Hugging Face) and checked by
``codellama_core.gguf_check`` before llama.cpp sees it, then loaded on a daemon thread within
``ServerOptions.load_timeout_s``; loads run one at a time and a superseded one is skipped. Whatever goes wrong (a
bad file, an exception of any kind, a timeout) ends in an ``error`` status with its message, and the next
``model`` setting starts afresh. Progress goes to ``$/progress`` (when the client takes it) and the status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcException

from codellama_core import redact

from .. import config, messages, modelinfo, models
from ..backend import open_engine
from ..cache import TypeThroughCache
from ..engines import Engine, EngineError
from ..engines.llama_cpp import MAX_DEFAULT_CTX
from ..engines.remote import RemoteEngine
from ..pacing import BudgetCuts, PromptSizer
from .status import StatusReporting
from .threads import in_daemon_thread

log = logging.getLogger("lsp_server.server")

Report = Callable[[str, "int | None"], None]  # (message, percentage) from the loading thread


def load_key(s: config.Settings) -> tuple[object, ...]:
    """The settings whose change needs a new engine (the model or where and how it runs)."""
    return (s.model, s.engine, s.url, s.api_key_env, s.request_timeout_ms, s.tls_verify, s.remote_model)


class ModelLoading(StatusReporting):
    def apply_settings(self, raw: object) -> None:
        """New settings from the client: problems shown, exclusions applied, a load started when the model changed."""
        before = self.settings
        raw, refused = config.guard(raw, self.trust)
        self.settings, problems = config.parse(raw, before)
        for p in refused + problems:
            log.warning("settings: %s", p)
            self.show(types.MessageType.Warning, p)
        old, new = config.to_wire(before), config.to_wire(self.settings)
        if changed := {k: v for k, v in new.items() if old.get(k) != v}:
            log.info("settings changed: %s", config.for_log(changed))
        if self.settings.exclude != before.exclude:
            self.neighbors.drop(self.settings.excluded)
        key = load_key(self.settings)
        if key == self._loaded_key and self.engine is not None:
            if self._load_task is not None and not self._load_task.done():
                # back to the loaded model while another one loads: that load is superseded (its result is
                # dropped, or it is skipped), or its failure would leave no model at all
                self._load_generation += 1
                self._loading_key = key
                log.info("settings back to the loaded model %s; the newer load is dropped", redact.message(self.settings.model))
                self.send_status("error" if self.error else "ready", self.error)
            return
        loading = self._load_task is not None and not self._load_task.done()
        if loading and self._loading_key == key:
            return  # that very model is loading already; a second load would only compete with it
        self.start_loading()

    def start_loading(self) -> None:
        self._load_generation += 1
        self._loading_key = load_key(self.settings)
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
        self.send_status("loading", f"loading {redact.message(spec, 200)}")
        progress = await self._progress_begin(token, f"Loading {spec}")
        report = self._reporter(generation, token, progress)
        try:
            engine = await self._open(settings, report)
        except Exception as exc:  # of any kind: the status must never stay "loading"
            self._load_failed(generation, spec, exc, token, progress)
            return
        if generation != self._load_generation:  # a newer load started meanwhile
            in_daemon_thread(engine.close)
            return
        self._loaded(engine, settings, token, progress)

    def _reporter(self, generation: int, token: str, progress: bool) -> Report:
        """Forwards the loading thread's progress to ``$/progress`` and the status, each new percentage once."""
        loop = asyncio.get_running_loop()
        last_pct: list[int | None] = [None]

        def report(message: str, pct: int | None) -> None:
            # called from the loading thread, many times per percent
            if pct is not None and pct == last_pct[0]:
                return
            last_pct[0] = pct
            if progress:
                value = types.WorkDoneProgressReport(message=message, percentage=pct)
                loop.call_soon_threadsafe(self.work_done_progress.report, token, value)
            if pct is not None:
                loop.call_soon_threadsafe(self._loading_percentage, generation, message, pct)

        return report

    async def _open(self, settings: config.Settings, report: Report) -> Engine:
        """The model resolved (downloaded if need be) and checked, then the engine opened within the load timeout."""
        spec = settings.model
        resolved = await in_daemon_thread(models.resolve, spec, report)
        log.info("model %s: %s", spec, resolved.source)
        message = f"loading {resolved.name}"
        report(message, 0)
        timeout = self.options.load_timeout_s

        def loaded(v: float) -> None:  # llama.cpp's load progress; 99 at most: "ready" (after the warm-up) is 100
            report(message, min(99, int(v * 100)))

        try:
            return await asyncio.wait_for(
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

    def _load_failed(self, generation: int, spec: str, exc: Exception, token: str, progress: bool) -> None:
        known = isinstance(exc, (models.ModelError, EngineError))
        shown_spec = redact.message(spec, 120)  # a long spec must not push the reason out of a capped message
        reason = redact.message(" ".join(str(exc).split()), 300)
        message = (
            redact.message(str(exc), 1000) if known else f"expected to load {shown_spec}, got {type(exc).__name__}: {reason}"
        )
        if not known:
            log.error("model %s: unexpected failure", shown_spec, exc_info=exc)
        current = generation == self._load_generation
        if current:
            self.error = message
            log.error("model %s: %s", shown_spec, message)
            old, self.engine, self._loaded_model = self.engine, None, None
            if old is not None:
                in_daemon_thread(old.close)
            self.show(types.MessageType.Error, message)
        if progress:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="failed"))
        if current:
            self.send_status("error", message)  # last: clients may treat the status as "done"

    def _loaded(self, engine: Engine, settings: config.Settings, token: str, progress: bool) -> None:
        """The new engine swapped in (the old one closed), its FIM tokens told, "ready" sent."""
        old, self.engine = self.engine, engine
        self._loaded_model, self._loaded_key, self.error = settings.model, load_key(settings), None
        self.cache = TypeThroughCache()
        self.sizer = PromptSizer()
        self.cuts = BudgetCuts()  # another model (the status's hint suggests one): its answers start uncut
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
        asked = self.options.engine.n_ctx
        if asked and info.kind == "llama.cpp" and info.n_ctx < asked:  # engines/llama_cpp.context_size capped it
            capped = f"context {info.n_ctx} tokens, the model's trained length (--n-ctx {asked} asked for more)"
            self.show(types.MessageType.Warning, capped)
            msg = f"{msg}; {capped}" if msg else capped
        if progress:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="ready"))
        down = engine.down if isinstance(engine, RemoteEngine) else None
        if down is None:
            self.send_status("ready", msg)
        else:  # the first probe failed: "error" at once, never "ready" then "error"
            self.error = down
            self.show(types.MessageType.Error, down)
            self.send_status("error", down)
        if isinstance(engine, RemoteEngine):  # told of every later change of the server's health
            loop = asyncio.get_running_loop()

            def on_health(message: str | None) -> None:  # called on the engine's thread
                loop.call_soon_threadsafe(self._on_health, engine, message)

            engine.set_listener(on_health)

    def models_report(self, asked: messages.ModelsParams) -> messages.Models:
        """``codellama/models``: the pickers' list at the context this server runs (or the client asks about);
        blocking (reads GGUF headers), so it runs on a thread."""
        loaded = self.engine.info.n_ctx if self.engine is not None and self.engine.info.kind == "llama.cpp" else None
        n_ctx = asked.n_ctx or loaded or self.options.engine.n_ctx or MAX_DEFAULT_CTX
        kv_type = self.options.engine.kv_type
        folders = list(asked.folders)
        current = Path(self.settings.model).expanduser()
        if self.settings.model.endswith(".gguf") and current.is_file():
            folders.append(str(current.parent))  # the folder of the model in use holds its siblings
        r = modelinfo.report(n_ctx, kv_type, folders, models.demo_path())
        return messages.Models(
            n_ctx=r.n_ctx,
            kv_type=r.kv_type,
            memory_bytes=r.memory_bytes,
            local=[messages.LocalModel(**dataclasses.asdict(m)) for m in r.local],
            known=[messages.KnownModel(**dataclasses.asdict(m)) for m in r.known],
        )

    def _on_health(self, engine: Engine, message: str | None) -> None:
        """A remote engine's server went down (``message``: why) or came back (None): status, and one message."""
        if engine is not self.engine or (message is not None and message == self.error and self.state == "error"):
            return  # another engine's, or the news told already (the first probe's failure, when it loaded)
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
