"""Engines: what turns a completion request into model text.

In: a ``CompletionRequest`` (the LF document text, the cursor offset, the settings). Out: a
``CompletionResult`` with the raw generated texts and the numbers that show what the request cost.

The ``Engine`` protocol is what the server and the CLI talk to. The one engine here,
``engines.llama_cpp.LlamaCppEngine``, runs llama.cpp in-process on a worker thread. ``submit`` never
blocks; it returns a ``Job`` whose ``future`` resolves on the worker. The newest job supersedes older
ones, which resolve early with ``stop == "superseded"`` and no text.
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..config import Settings
from ..fim import FimContext

Stop = Literal["eot", "length", "time", "cancelled", "superseded", "rule", "context"]


class EngineError(Exception):
    """The model could not be loaded or run; the message is for the user."""


@dataclass(frozen=True)
class CompletionRequest:
    text: str  # LF-normalised document
    offset: int  # cursor, into text
    settings: Settings
    n: int = 1  # distinct completions wanted (the first is greedy)
    request_id: str = "-"
    # early stop on the raw text generated so far (postprocess would cut the rest anyway)
    stop_rule: object = None


@dataclass
class CompletionResult:
    texts: list[str]
    stop: Stop
    context: FimContext | None = None
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV cache entries were kept from earlier requests
    evaluated_tokens: int = 0  # prompt tokens actually run through the model
    generated_tokens: int = 0
    context_ms: float = 0.0
    prompt_ms: float = 0.0
    generate_ms: float = 0.0
    total_ms: float = 0.0  # from submit to done (includes waiting for the worker)


@dataclass
class Job:
    request: CompletionRequest
    future: concurrent.futures.Future[CompletionResult] = field(default_factory=concurrent.futures.Future)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    reason: Stop = "cancelled"

    def cancel(self, reason: Stop = "cancelled") -> None:
        self.reason = reason
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    n_ctx: int
    n_ctx_train: int
    has_fim: bool
    vocab_size: int


class Engine(Protocol):
    info: ModelInfo

    def submit(self, request: CompletionRequest) -> Job: ...

    def close(self) -> None: ...
