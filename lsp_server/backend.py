"""Which engine the settings ask for, opened: the one place the server and the CLI get an engine from.

(It reads the settings, so it lives above ``engines/``, which never does.)

In: the settings (``engine``, ``url``, ``apiKeyEnv``, ``requestTimeoutMs``, ``tlsVerify``, ``remoteModel``), the
resolved model file (the in-process engine runs it; a remote engine reads only its vocabulary), and the
command-line tuning of each kind. Out: an ``Engine`` (blocking: it loads a model or a vocabulary and probes the
server; call it off the event loop), or ``EngineError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .config import Settings
from .engines import Engine, EngineError
from .engines.llama_cpp import EngineOptions, LlamaCppEngine
from .engines.registry import KINDS
from .engines.remote import RemoteOptions, local_vocab


def open_engine(
    settings: Settings,
    path: Path,
    name: str,
    local: EngineOptions = EngineOptions(),
    remote: RemoteOptions = RemoteOptions(url=""),
    progress: Callable[[float], None] | None = None,
) -> Engine:
    """``progress`` receives the in-process model's load progress (0.0 .. 1.0) on the loading thread."""
    kind = KINDS[settings.engine]
    if not kind.remote:
        return LlamaCppEngine(path, name, local, progress)
    if not settings.url:
        raise EngineError(f"expected a server URL for the engine {settings.engine!r} (--url or the url setting), got none")
    options = replace(
        remote,
        url=settings.url,
        api_key_env=settings.api_key_env,
        timeout_s=settings.request_timeout_ms / 1000.0,
        verify_tls=settings.tls_verify,
        model_name=settings.remote_model or None,
    )
    engine: Engine = kind.load()(local_vocab(path), options, name)
    return engine
