"""Every engine kind by its name: what the ``engine`` setting, ``--engine`` and ``backend.open_engine`` read.

Adding an engine: a module in ``engines/`` with a class that satisfies ``engines.Engine``, and one ``EngineKind``
line here. Settings (``config.ENGINES``), the command line's ``--engine`` choices and ``backend`` follow from this
table; nothing else lists the names. Classes are imported on first use, so a kind's dependencies (httpx for the
remote ones) load only when it is chosen.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineKind:
    name: str  # the setting's value
    remote: bool  # runs on a server at ``url`` (the local GGUF gives only the vocabulary)
    module: str  # below lsp_server.engines
    cls: str
    summary: str  # for --help and the docs

    def load(self) -> type:
        engine: type = getattr(importlib.import_module(f"lsp_server.engines.{self.module}"), self.cls)
        return engine


KINDS: dict[str, EngineKind] = {
    k.name: k
    for k in (
        EngineKind("llama.cpp", False, "llama_cpp", "LlamaCppEngine", "llama.cpp in this process (the default)"),
        EngineKind("llama-server", True, "llama_server", "LlamaServerEngine", "llama.cpp's llama-server (token ids, slots)"),
        EngineKind("openai", True, "openai", "OpenAIEngine", "an OpenAI-compatible server: vLLM, Ollama, ..."),
    )
}
DEFAULT = "llama.cpp"
